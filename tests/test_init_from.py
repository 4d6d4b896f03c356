"""Starting from another model directory (config.init_from), per-tower loading, position-embedding resampling,
LiT freezing, clear mismatch errors, and evaluating a params-only (converted-layout) directory."""

import json
import os
import re
import shutil

import jax
import numpy as np
import pytest

from configs import pretrained
from tests.test_sharding import batch_for
from tests.tiny import tiny_config
from vitclip import checkpoint as checkpoint_lib
from vitclip import config as config_lib
from vitclip import init_from, trainer

FSDP = {'mesh': [('data', 2), ('fsdp', -1)], 'sharding.params': 'fsdp', 'sharding.fsdp_min_size': 256}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def source(data_dir, tmp_path_factory):
  """(workdir with a full-TrainState checkpoint, converted-layout dir with the same params only, params)."""
  workdir = str(tmp_path_factory.mktemp('source_run'))
  run = trainer.setup(tiny_config(data_dir, seed=1), workdir)
  state = trainer.create_state(run)
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
  return workdir, converted, jax.device_get(state.params)


def start(data_dir, workdir, **overrides):
  """(run, state) of a tiny run set up in `workdir` and initialised (from config.init_from when given)."""
  run = trainer.setup(tiny_config(data_dir, **overrides), str(workdir))
  return run, trainer.create_state(run)


def assert_equal_trees(got, want):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize('which', ['converted', 'workdir'])
def test_init_from_reproduces_params_on_their_shardings(which, source, data_dir, tmp_path):
  workdir, converted, params = source
  run, state = start(data_dir, tmp_path, init_from=converted if which == 'converted' else workdir, **FSDP)
  assert_equal_trees(state.params, params)
  shardings = run.state_shardings.params
  assert jax.tree.leaves(jax.tree.map(lambda x, s: x.sharding == s, state.params, shardings)) == \
      [True] * len(jax.tree.leaves(params))
  assert run.config.tokenizer.path == os.path.join(converted if which == 'converted' else workdir,
                                                   'tokenizer.json')  # DIR's tokenizer comes with its text tower


def test_per_tower_selection_keeps_the_rest_fresh(source, data_dir, tmp_path):
  _, converted, params = source
  _, fresh = start(data_dir, tmp_path / 'fresh')
  _, state = start(data_dir, tmp_path / 'img', init_from=converted, init_from_towers='img')
  assert_equal_trees(state.params['img'], params['img'])
  assert_equal_trees({k: state.params[k] for k in ('txt', 't')}, {k: fresh.params[k] for k in ('txt', 't')})
  assert not np.array_equal(fresh.params['img']['pos_embedding'], params['img']['pos_embedding'])


def bilinear_reference(grid: np.ndarray, size: int) -> np.ndarray:
  """[g, g, W] -> [size, size, W]: half-pixel-centred bilinear interpolation with clamped edges (upsampling)."""
  g = grid.shape[0]
  coords = np.clip((np.arange(size) + 0.5) * g / size - 0.5, 0, g - 1)
  lo = np.floor(coords).astype(int)
  hi, frac = np.minimum(lo + 1, g - 1), coords - lo
  rows = grid[lo] * (1 - frac)[:, None, None] + grid[hi] * frac[:, None, None]
  return rows[:, lo] * (1 - frac)[None, :, None] + rows[:, hi] * frac[None, :, None]


@pytest.mark.parametrize('image_size', [48, 16])  # grid 4 -> 6 (upsampled), 4 -> 2 (downsampled)
def test_position_embedding_resampled_to_the_new_grid(image_size, source, data_dir, tmp_path):
  _, converted, params = source
  _, state = start(data_dir, tmp_path, init_from=converted, **{'model.image.image_size': image_size})
  pos, src = np.asarray(state.params['img']['pos_embedding']), params['img']['pos_embedding']
  grid = image_size // 8
  assert pos.shape == (1, 1 + grid * grid, 32)
  np.testing.assert_array_equal(pos[:, 0], src[:, 0])  # The CLS position is kept.
  src_grid = src[0, 1:].reshape(4, 4, 32)
  want = (bilinear_reference(src_grid, grid) if grid > 4 else  # Downsampling is antialiased, as at apply time.
          np.asarray(jax.image.resize(src_grid, (grid, grid, 32), 'bilinear')))
  np.testing.assert_allclose(pos[0, 1:].reshape(grid, grid, 32), want, rtol=1e-5, atol=1e-6)
  assert_equal_trees({k: v for k, v in state.params['img'].items() if k != 'pos_embedding'},
                     {k: v for k, v in params['img'].items() if k != 'pos_embedding'})


def test_resampling_to_the_same_grid_is_the_identity(source):
  pos = source[2]['img']['pos_embedding']
  np.testing.assert_array_equal(init_from.resample_posemb(pos, 1, 4), pos)


def test_lit_keeps_the_loaded_image_tower_bit_identical(source, data_dir, tmp_path):
  _, converted, params = source
  run, state = start(data_dir, tmp_path, init_from=converted, **{'optim.frozen': '^img/', 'batch_size': 32})
  step = trainer.compile_train_step(run)
  for seed in range(3):
    state, metrics = step(state, batch_for(run, seed))
  assert int(state.step) == 3 and np.isfinite(float(metrics['loss']))
  assert_equal_trees(state.params['img'], params['img'])
  assert not np.allclose(state.params['txt']['Embed_0']['embedding'], params['txt']['Embed_0']['embedding'])


def test_mismatched_variant_names_the_first_bad_key_and_shapes(source, data_dir, tmp_path):
  _, converted, _ = source
  with pytest.raises(config_lib.ConfigError) as e:
    start(data_dir, tmp_path, init_from=converted, **{'model.image.variant': 'micro/4'})
  msg = str(e.value)
  assert "'img/embedding/kernel' has shape (8, 8, 3, 32) in the checkpoint but the model expects (4, 4, 3, 32)" in msg
  assert "model.image.variant ('micro/8' there, 'micro/4' here)" in msg


def test_checkpoint_not_matching_its_config_is_reported_as_such(source, data_dir, tmp_path):
  _, converted, _ = source
  broken = str(tmp_path / 'broken')
  shutil.copytree(converted, broken)
  with open(os.path.join(broken, 'config.json')) as f:
    config = json.load(f)
  config['model']['text']['variant'] = 'mu'  # Same width, but MLP size 128 instead of the saved 64.
  with open(os.path.join(broken, 'config.json'), 'w') as f:
    json.dump(config, f)
  with pytest.raises(config_lib.ConfigError, match=r"'txt/Encoder_0/encoderblock_0/MlpBlock_0/Dense_0/bias' has "
                     r"shape \(64,\) in the checkpoint but the model expects \(128,\)\. The checkpoint does not "
                     r"match .*broken/config.json"):
    start(data_dir, tmp_path / 'run', init_from=broken)


def test_bad_settings_stop_before_anything_runs(source, data_dir, tmp_path):
  _, converted, _ = source
  with pytest.raises(FileNotFoundError, match='missing/config.json does not exist'):
    trainer.setup(tiny_config(data_dir, init_from=str(tmp_path / 'missing')), str(tmp_path))
  with pytest.raises(config_lib.ConfigError, match="init_from_towers='img,text'"):
    trainer.setup(tiny_config(data_dir, init_from=converted, init_from_towers='img,text'), str(tmp_path))
  with pytest.raises(config_lib.ConfigError, match=re.escape("optim.frozen='^image/' matches no parameter")):
    trainer.setup(tiny_config(data_dir, **{'optim.frozen': '^image/'}), str(tmp_path))


def test_pretrained_config_types_and_base_settings(source, data_dir):
  _, converted, _ = source
  c = pretrained.get_config(converted)
  assert c.model.image.variant == 'micro/8' and c.init_from == converted
  assert c.tokenizer.path == os.path.join(converted, 'tokenizer.json')
  assert isinstance(c.evals.names, tuple) and isinstance(c.data.crop_scale, tuple)
  assert isinstance(c.mesh, list) and isinstance(c.mesh[0], tuple)
  c.evals.names = ('zeroshot', 'retrieval')  # Overrides type-check as against configs/base.py.
  with pytest.raises(TypeError):
    c.total_steps = 'many'
  on_shapes = pretrained.get_config(f'{converted},shapes')
  assert on_shapes.total_steps == 1200 and on_shapes.model.to_dict() == c.model.to_dict()
  assert on_shapes.data.data_dir == '' and on_shapes.init_from == converted


def test_evaluating_a_params_only_dir_equals_the_original(source, data_dir, tmp_path):
  workdir, converted, _ = source
  want = trainer.evaluate(tiny_config(data_dir), workdir)
  got = trainer.evaluate(pretrained.get_config(converted), str(tmp_path), checkpoint_dir=converted)
  assert got == want and 'zeroshot/shapes/top1' in got
  with open(os.path.join(tmp_path, 'eval_results.json')) as f:
    assert json.load(f) == got
