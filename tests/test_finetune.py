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
  config = finetune.get_config(f'{source},shapes,feature=color,steps=4,warmup=1,batch=16,towers=img,lr=1e-3')
  assert config.data.caption_templates == config.evals.zeroshot.templates  # DIR's prompts.
  override(config, **{'data.data_dir': tiny_data_dir, 'evals.batch_size': 32, 'ckpt_every': 4})
  results = trainer.train(config, str(tmp_path))
  assert 0.0 <= results['zeroshot/shapes_color/top1'] <= 1.0
  run = run_lib.build(config, str(tmp_path), train=False)
  before = checkpoint_lib.restore_params(source, run.abstract_state.params)
  after = checkpoint_lib.restore_params(str(tmp_path), run.abstract_state.params)
  for tower in ('txt', 't'):
    jax.tree.map(np.testing.assert_array_equal, before[tower], after[tower])
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), before['img'], after['img']))
  assert max(moved) > 1e-4
