"""Contrastive fine-tuning on a labelled data set: captions made from class names, configs/finetune.py end to
end from a training workdir (frozen towers stay as they were, the trained one moves)."""

import types

import jax
import numpy as np
import pytest

from configs import finetune
from tests.tiny import override
from vitclip import checkpoint as checkpoint_lib
from vitclip import run as run_lib, trainer
from vitclip.data import sources
from vitclip.errors import ConfigError


def _info(features: dict):
  """A DatasetInfo stand-in: what caption_reader reads (features supports `in` and [], as tfds' FeaturesDict)."""
  return types.SimpleNamespace(features=features)


def test_captions_from_class_names():
  data = types.SimpleNamespace(caption_templates='a {}.|a photo of a {}.', label_feature='color')
  read = sources.caption_reader(data, _info({'color': types.SimpleNamespace(names=['red', 'dark_blue']),
                                             'label': None}))
  assert read({'color': np.int64(1), 'captions': ['ignored']}) == ['a dark blue.', 'a photo of a dark blue.']
  assert read({'color': 0}) == ['a red.', 'a photo of a red.']
  with pytest.raises(sources.BadRecordError):
    read({'color': 7})
  with pytest.raises(ValueError, match="label_feature='color' is not a ClassLabel"):
    sources.caption_reader(data, _info({'label': types.SimpleNamespace(names=['a'])}))
  own = types.SimpleNamespace(caption_templates='', label_feature='label')
  assert sources.caption_reader(own, _info({})) is sources.decode_captions


def test_finetune_config_names_its_mistakes(tiny_run):
  workdir, _ = tiny_run
  with pytest.raises(ConfigError, match='needs a model directory and a data set'):
    finetune.get_config(workdir)
  with pytest.raises(ConfigError, match="towers='img\\+head'"):
    finetune.get_config(f'{workdir},shapes,towers=img+head')
  with pytest.raises(ConfigError, match='stepz=3'):
    finetune.get_config(f'{workdir},shapes,stepz=3')


def test_finetune_from_a_workdir_trains_only_the_chosen_tower(tiny_run, tiny_data_dir, tmp_path):
  source, _ = tiny_run
  # The fine-tuning of tests/test_transfer.py's and tests/test_curriculum.py's runs: one train-step program.
  config = finetune.get_config(f'{source},shapes,feature=color,steps=2,warmup=0,batch=16,towers=img,lr=1e-3')
  # DIR's prompts for colour (shapes' templates_for), for training captions and the zero-shot metric.
  from configs import shapes as shapes_config
  colour_prompts = shapes_config.get_config().evals.zeroshot.templates_for.shapes_color
  assert config.data.caption_templates == config.evals.zeroshot.templates == colour_prompts
  override(config, **{'data.data_dir': tiny_data_dir, 'evals.batch_size': 32, 'ckpt_every': 2})
  results = trainer.train(config, str(tmp_path))
  assert 0.0 <= results['zeroshot/shapes_color/top1'] <= 1.0
  run = run_lib.build(config, str(tmp_path), train=False)
  before = checkpoint_lib.restore_params(source, run.abstract_state.params)
  after = checkpoint_lib.restore_params(str(tmp_path), run.abstract_state.params)
  for tower in ('txt', 't'):
    jax.tree.map(np.testing.assert_array_equal, before[tower], after[tower])
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), before['img'], after['img']))
  assert max(moved) > 1e-4


# ------------------------------------------------------------------------------- classifier fine-tuning


def test_layer_decay_scales_by_depth_scanned_or_not():
  from tests.tiny import tiny_config
  from vitclip import optim
  from vitclip.models import build_model, init_params
  decay = 0.5
  scales = {}
  for scan in (False, True):
    c = tiny_config('', **{'model.scan': scan})
    model = build_model(c.model)
    params = jax.eval_shape(lambda r: init_params(model, r), jax.random.key(0))
    params = {**params, 'head': {'kernel': np.zeros((32, 3))}}
    scales[scan] = {optim.path_str(p): np.asarray(s) for p, s in jax.tree_util.tree_leaves_with_path(
        optim.layer_decay_scales(params, decay))}
  flat = scales[False]
  # micro towers: 2 blocks each (L = 2). Embeddings: decay^3; block i: decay^(2 - i); after the blocks: 1.
  assert flat['img/embedding/kernel'] == decay**3 and flat['img/stem_conv0/kernel'] == decay**3
  assert flat['txt/Embed_0/embedding'] == decay**3
  assert flat['img/Transformer/encoderblock_0/LayerNorm_0/scale'] == decay**2
  assert flat['img/Transformer/encoderblock_1/LayerNorm_0/scale'] == decay
  assert flat['img/Transformer/encoder_norm/scale'] == 1 and flat['img/head/kernel'] == 1
  assert flat['head/kernel'] == 1 and flat['t'] == 1
  stacked = scales[True]['img/Transformer/encoderblock/LayerNorm_0/scale']
  np.testing.assert_array_equal(stacked.reshape(-1), [decay**2, decay])
  assert stacked.shape == (2, 1)  # Broadcasts over the stacked [L, width] param.


def test_classifier_loss_is_cross_entropy_of_the_head_on_normalised_embeddings(tiny_run):
  from configs import base
  from vitclip import classifier
  from vitclip.models import build_model, init_params
  # The tiny run's trained params (restoring them costs no compile; initialising does), on one device.
  workdir, _ = tiny_run
  model = build_model(run_lib.model_dir_config(workdir, base.get_config()).model)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          jax.eval_shape(lambda r: init_params(model, r), jax.random.key(0)))
  params = checkpoint_lib.restore_params(workdir, abstract)
  rng = np.random.default_rng(0)
  head = {'kernel': 10 * rng.normal(size=(32, 5)).astype(np.float32), 'bias': rng.normal(size=5).astype(np.float32)}
  params = {**params, 'head': head}
  images = rng.normal(size=(6, 32, 32, 3)).astype(np.float32)
  labels = np.array([0, 1, 2, 3, 4, 0], np.int32)
  eps = 0.1
  # One compiled program (op-by-op dispatch of the towers would compile every op on its own: half a minute).
  embed_and_loss = jax.jit(lambda p, b: (model.apply({'params': p}, b['image'], method='embed_image'),
                                         classifier.loss_fn(model, eps)(p, b)))
  z, (loss, terms) = embed_and_loss(params, {'image': images, 'label': labels})
  z = np.asarray(z, np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  logits = z @ head['kernel'] + head['bias']
  logp = logits - logits.max(1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(1, keepdims=True))
  targets = np.eye(5)[labels] * (1 - eps) + eps / 5
  np.testing.assert_allclose(float(loss), -(targets * logp).sum(1).mean(), rtol=1e-5)
  assert float(terms['train_top1']) == pytest.approx(np.mean(logits.argmax(1) == labels))


def test_classifier_finetuning_starts_at_zero_shot_and_trains_only_image_tower_and_head(
    tiny_run, tiny_data_dir, tmp_path):
  source, _ = tiny_run
  arg = f'{source},shapes,method=classifier,feature=color,steps=2,warmup=0,batch=16,lr=1e-3,layer_decay=0.7'
  config = finetune.get_config(arg)
  override(config, **{'data.data_dir': tiny_data_dir, 'evals.batch_size': 32, 'ckpt_every': 2})
  workdir = str(tmp_path / 'classifier')
  results = trainer.train(config, workdir)
  # WiSE-FT alpha = 0 is the zero-shot model: the same accuracy as zero-shot classification of the source model
  # by colour with the same prompts, on the same split.
  zero_shot_config = run_lib.model_dir_config(source, config, evals_from=config, overrides={
      'evals.names': ('zeroshot',), 'data.data_dir': tiny_data_dir})
  zero_shot = trainer.evaluate(zero_shot_config, str(tmp_path / 'zeroshot'), checkpoint_dir=source)
  assert results['classifier/shapes_color/wise_0/top1'] == zero_shot['zeroshot/shapes_color/top1']
  assert 0.0 <= results['classifier/shapes_color/wise_0.5/top1'] <= 1.0
  assert 0.0 <= results['classifier/shapes_color/top1'] <= 1.0
  run = run_lib.build(config, workdir, train=False)
  before = checkpoint_lib.restore_params(source, {k: v for k, v in run.abstract_state.params.items() if k != 'head'})
  after = checkpoint_lib.restore_params(workdir, run.abstract_state.params)
  for tower in ('txt', 't'):
    jax.tree.map(np.testing.assert_array_equal, before[tower], after[tower])
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), before['img'], after['img']))
  assert max(moved) > 1e-4
  assert after['head']['kernel'].shape == (32, run.config.classifier.num_classes)


def test_classifier_settings_are_checked_before_the_run(tiny_run, tiny_data_dir, tmp_path):
  from tests.tiny import tiny_config
  config = tiny_config(tiny_data_dir, **{'classifier.enabled': True, 'classifier.label_smoothing': 1.5})
  with pytest.raises(ConfigError) as e:
    run_lib.build(config, str(tmp_path / 'a'))
  assert 'set --config.init_from=DIR' in str(e.value) and 'label_smoothing=1.5' in str(e.value)
  source, _ = tiny_run
  config = finetune.get_config(f'{source},shapes,method=classifier,feature=size')
  override(config, **{'data.data_dir': tiny_data_dir})
  with pytest.raises(ConfigError, match="label_feature='size'"):
    run_lib.build(config, str(tmp_path / 'b'))
  config = tiny_config(tiny_data_dir, **{'evals.names': ('classifier',)})
  with pytest.raises(ConfigError, match='config.classifier.enabled is False'):
    run_lib.build(config, str(tmp_path / 'c'))
