"""Starting from another model directory (config.init_from), per-tower loading, position-embedding resampling,
LiT freezing, clear mismatch errors, and evaluating a params-only (converted-layout) directory."""

import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import pretrained, shapes
from tests.test_sharding import batch_for
from tests import tiny
from vitclip import checkpoint as checkpoint_lib
from vitclip import config as config_lib
from vitclip import init_from, run as run_lib, train_step as train_step_lib, trainer
from vitclip.models import init_params
from vitclip.models.vit import resample_posemb

# A CLIP-style image tower (CLS token, learned position embeddings): the one whose position grid init_from
# resamples. The tiny demo tower pools by GAP with fixed sin-cos embeddings, which have no params.
CLIP_IMAGE = {'model.image.pool': 'tok', 'model.image.posemb': 'learn', 'model.image.cls_token': True}
# One block per tower (tests/test_sharding.py's sizes): loading, resampling and freezing do not depend on the depth,
# and the inits and train step of the runs here compile in far less time.
SMALL = {'model.image.variant': 'mu/8', 'model.text.variant': 'mu'}
FSDP = {'mesh': [('data', 2), ('fsdp', -1)], 'sharding.params': 'fsdp', 'sharding.fsdp_min_size': 256}


@pytest.fixture(scope='module')
def data_dir(tiny_data_dir):
  return tiny_data_dir  # The session's generated shapes data: not generated again for this module.


@pytest.fixture(scope='module')
def source(data_dir, tmp_path_factory):
  """(workdir with a full-TrainState checkpoint, converted-layout dir with the same params only, params,
  the params a tiny run with seed 0 initialises)."""
  workdir = str(tmp_path_factory.mktemp('source_run'))
  run = run_lib.build(tiny_config(data_dir), workdir)
  init = jax.jit(lambda r: init_params(run.model, r))
  params = init(jax.random.key(1))  # Differs from the seed-0 init of the runs started from it.
  fresh = jax.device_get(init(jax.random.split(jax.random.key(0))[0]))  # As run.create_state with seed 0.
  state = train_step_lib.TrainState(step=jnp.int32(3), params=params, opt_state=run.tx.init(params),
                                    rng=jax.random.key(0))
  ckpt = checkpoint_lib.Checkpointer(workdir)
  ckpt.save(3, state, force=True)
  ckpt.wait()
  ckpt.close()
  converted = str(tmp_path_factory.mktemp('converted'))
  checkpoint_lib.save_params(converted, state.params)
  shutil.copy(os.path.join(workdir, 'tokenizer.json'), converted)
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  config['tokenizer']['path'] = 'tokenizer.json'  # The converter's contract: relative to the directory.
  with open(os.path.join(converted, 'config.json'), 'w') as f:
    json.dump(config, f)
  return workdir, converted, jax.device_get(state.params), fresh


def start(data_dir, workdir, **overrides):
  """(run, state) of a tiny run set up in `workdir` and initialised (from config.init_from when given)."""
  run = run_lib.build(tiny_config(data_dir, **overrides), str(workdir))
  return run, run_lib.create_state(run)


def tiny_config(data_dir, **overrides):
  return tiny.tiny_config(data_dir, **{**CLIP_IMAGE, **SMALL, **overrides})


def assert_equal_trees(got, want):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def bilinear_reference(grid: np.ndarray, size: int) -> np.ndarray:
  """[g, g, W] -> [size, size, W]: half-pixel-centred bilinear interpolation with clamped edges (upsampling)."""
  g = grid.shape[0]
  coords = np.clip((np.arange(size) + 0.5) * g / size - 0.5, 0, g - 1)
  lo = np.floor(coords).astype(int)
  hi, frac = np.minimum(lo + 1, g - 1), coords - lo
  rows = grid[lo] * (1 - frac)[:, None, None] + grid[hi] * frac[:, None, None]
  return rows[:, lo] * (1 - frac)[None, :, None] + rows[:, hi] * frac[None, :, None]


def test_image_tower_only_at_a_new_resolution(source, data_dir, tmp_path):
  """init_from_towers='img' at 48 px: the 4x4 position grid of 32 px becomes 6x6; txt and t keep their init."""
  _, converted, params, _ = source
  run, state = start(data_dir, tmp_path, init_from=converted, init_from_towers='img',
                     **{'model.image.image_size': 48})
  pos, src = np.asarray(state.params['img']['pos_embedding']), params['img']['pos_embedding']
  assert pos.shape == (1, 1 + 6 * 6, 32)
  np.testing.assert_array_equal(pos[:, 0], src[:, 0])  # The CLS position is kept.
  want = bilinear_reference(src[0, 1:].reshape(4, 4, 32), 6)
  np.testing.assert_allclose(pos[0, 1:].reshape(6, 6, 32), want, rtol=1e-5, atol=1e-6)
  assert_equal_trees({k: v for k, v in state.params['img'].items() if k != 'pos_embedding'},
                     {k: v for k, v in params['img'].items() if k != 'pos_embedding'})
  fresh = source[3]  # The text tower's init does not depend on the image size.
  assert_equal_trees({k: state.params[k] for k in ('txt', 't')}, {k: fresh[k] for k in ('txt', 't')})
  assert not np.allclose(state.params['txt']['Embed_0']['embedding'], params['txt']['Embed_0']['embedding'])


def test_downsampled_position_grid_is_antialiased_as_at_apply_time(source):
  pos = source[2]['img']['pos_embedding']  # [1, 1 + 4 * 4, 32]
  got = np.asarray(resample_posemb(pos, 1, 2))
  np.testing.assert_array_equal(got[:, 0], pos[:, 0])
  want = jax.image.resize(pos[0, 1:].reshape(4, 4, 32), (2, 2, 32), 'bilinear')
  np.testing.assert_allclose(got[0, 1:].reshape(2, 2, 32), want, rtol=1e-6)


def test_lit_run_from_a_converted_dir(source, data_dir, tmp_path):
  """Loads every param exactly, onto the run's (FSDP) shardings, with DIR's tokenizer; the frozen image tower
  stays bit-identical over steps while the text tower trains."""
  _, converted, params, _ = source
  run, state = start(data_dir, tmp_path, init_from=converted, **FSDP,
                     **{'optim.frozen': '^img/', 'batch_size': 32})
  assert_equal_trees(state.params, params)
  placed = jax.tree.map(lambda x, s: x.sharding == s, state.params, run.state_shardings.params)
  assert all(jax.tree.leaves(placed))
  assert any(s.spec != jax.sharding.PartitionSpec() for s in jax.tree.leaves(run.state_shardings.params))
  assert run.config.tokenizer.path == os.path.join(converted, 'tokenizer.json')  # It comes with the text tower.
  step = run_lib.compile_train_step(run)
  for seed in range(3):
    state, metrics = step(state, batch_for(run, seed))
  assert int(state.step) == 3 and np.isfinite(float(metrics['loss']))
  assert_equal_trees(state.params['img'], params['img'])
  assert not np.allclose(state.params['txt']['Embed_0']['embedding'], params['txt']['Embed_0']['embedding'])


def test_mismatched_variant_names_the_first_bad_key_and_shapes(source, data_dir, tmp_path):
  _, converted, _, _ = source
  with pytest.raises(config_lib.ConfigError) as e:
    start(data_dir, tmp_path, init_from=converted, **{'model.image.variant': 'mu/4'})
  msg = str(e.value)
  # configs/shapes.py uses the conv stem: mu/8 has three stride-2 convs (8, 16, 32 channels), mu/4 two.
  assert "'img/stem_conv0/bias' has shape (8,) in the checkpoint but the model expects (16,)" in msg
  assert "model.image.variant ('mu/8' there, 'mu/4' here)" in msg


def test_checkpoint_not_matching_its_config_is_reported_as_such(source, data_dir, tmp_path):
  _, converted, _, _ = source
  broken = str(tmp_path / 'broken')
  shutil.copytree(converted, broken)
  with open(os.path.join(broken, 'config.json')) as f:
    config = json.load(f)
  config['model']['text']['variant'] = 'micro'  # Same width, but MLP size 64 instead of the saved 128.
  with open(os.path.join(broken, 'config.json'), 'w') as f:
    json.dump(config, f)
  with pytest.raises(config_lib.ConfigError, match=r"'txt/Encoder_0/encoderblock_0/MlpBlock_0/Dense_0/bias' has "
                     r"shape \(128,\) in the checkpoint but the model expects \(64,\)\. The checkpoint does not "
                     r"match .*broken/config.json"):
    start(data_dir, tmp_path / 'run', init_from=broken)


def test_bad_settings_stop_before_anything_runs(source, data_dir, tmp_path):
  _, converted, _, _ = source
  with pytest.raises(FileNotFoundError, match='missing/config.json does not exist'):
    run_lib.build(tiny_config(data_dir, init_from=str(tmp_path / 'missing')), str(tmp_path))
  with pytest.raises(config_lib.ConfigError, match="init_from_towers='img,text'"):
    run_lib.build(tiny_config(data_dir, init_from=converted, init_from_towers='img,text'), str(tmp_path))
  with pytest.raises(config_lib.ConfigError, match=re.escape("optim.frozen='^image/' matches no parameter")):
    run_lib.build(tiny_config(data_dir, **{'optim.frozen': '^image/'}), str(tmp_path))


def test_pretrained_config_types_and_base_settings(source, data_dir):
  workdir, converted, _, _ = source
  assert pretrained.get_config(workdir).tokenizer.path == os.path.join(workdir, 'tokenizer.json')  # trained
  c = pretrained.get_config(converted)
  assert c.model.image.variant == 'mu/8' and c.init_from == converted
  assert c.tokenizer.path == os.path.join(converted, 'tokenizer.json')
  assert isinstance(c.evals.names, tuple) and isinstance(c.data.crop_scale, tuple)
  assert isinstance(c.mesh, list) and isinstance(c.mesh[0], tuple)
  c.evals.names = ('zeroshot', 'retrieval')  # Overrides type-check as against configs/base.py.
  with pytest.raises(TypeError):
    c.total_steps = 'many'
  on_shapes = pretrained.get_config(f'{converted},shapes')
  assert on_shapes.total_steps == shapes.get_config().total_steps
  assert on_shapes.model.to_dict() == c.model.to_dict()
  assert on_shapes.data.data_dir == '' and on_shapes.init_from == converted


def test_evaluating_a_params_only_dir_equals_the_original(source, data_dir, tmp_path):
  workdir, converted, _, _ = source
  want = trainer.evaluate(tiny_config(data_dir), workdir)
  got = trainer.evaluate(pretrained.get_config(converted), str(tmp_path), checkpoint_dir=converted)
  assert got == want and 'zeroshot/shapes/top1' in got
  with open(os.path.join(tmp_path, 'eval_results.json')) as f:
    assert json.load(f) == got
