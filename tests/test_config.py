"""Config resolution and validation: each user mistake gives one clear error before anything compiles."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import pytest  # pylint: disable=wrong-import-position

from configs import base, shapes
from vitclip import config as config_lib
from vitclip import sharding
from tests.tiny import override
from vitclip.config import ConfigError


def test_resolve_fills_logit_defaults_by_loss_kind():
  softmax = config_lib.resolve(shapes.get_config())
  assert softmax.model.t_init == pytest.approx(1 / 0.07)
  assert softmax.model.b_init is None and softmax.model.t_max == 100.0
  sigmoid = config_lib.resolve(_sigmoid(base.get_config()))
  assert (sigmoid.model.t_init, sigmoid.model.b_init, sigmoid.model.t_max) == (10.0, -10.0, 0.0)
  # configs/shapes.py sets its own sigmoid init (b about -log(64), its batch; see the sweep there).
  shapes_sigmoid = config_lib.resolve(shapes.get_config('sigmoid')).model
  assert (shapes_sigmoid.t_init, shapes_sigmoid.b_init) == (pytest.approx(1 / 0.07), -4.0)
  # Explicit values win over the kind's defaults.
  c = shapes.get_config('sigmoid')
  c.model.b_init = -5.0
  assert config_lib.resolve(c).model.b_init == -5.0


def _sigmoid(c):
  c.loss.kind = 'sigmoid'  # what --config.loss.kind=sigmoid does
  return c


def test_override_from_the_command_line_changes_the_default():
  assert config_lib.resolve(_sigmoid(shapes.get_config())).model.b_init == -4.0
  assert config_lib.resolve(_sigmoid(base.get_config())).model.b_init == -10.0
  # A config saved before loss.init_by_kind existed resolves with the built-in table.
  old = _sigmoid(base.get_config())
  del old.loss['init_by_kind']
  assert config_lib.resolve(old).model.b_init == -10.0


@pytest.mark.parametrize('spec, devices, expected', [
    ([('data', -1)], 8, (('data',), (8,))),
    ([('data', 2), ('fsdp', -1)], 8, (('data', 'fsdp'), (2, 4))),
    ([('data', -1), ('model', 2)], 8, (('data', 'model'), (4, 2))),
])
def test_mesh_shape(spec, devices, expected):
  assert sharding.mesh_shape(spec, devices) == expected


@pytest.mark.parametrize('spec, fragment', [
    ([('data', 3)], 'covers 3 devices but 8'),
    ([('data', -1), ('fsdp', -1)], 'more than one -1'),
    ([('data', 3), ('fsdp', -1)], 'not divisible'),
    ([('data', 2), ('data', 4)], 'repeats'),
])
def test_bad_mesh(spec, fragment):
  with pytest.raises(ConfigError, match=fragment):
    sharding.mesh_shape(spec, 8)


def _validate(tmp_path, num_devices=8, **overrides):
  c = override(shapes.get_config(), **overrides)
  config_lib.validate(config_lib.resolve(c), str(tmp_path / 'work'), num_devices=num_devices, check_data=True)


@pytest.mark.parametrize('overrides, fragments', [
    ({'batch_size': 100}, ['config.batch_size=100', '8 data-parallel devices', '--config.batch_size=96']),
    ({'model.image.variant': 'Q/16'}, ["config.model.image.variant='Q/16'", 'valid sizes']),
    ({'model.image.variant': 'B/x'}, ["'B/x'", 'positive integer']),
    ({'model.text.variant': 'XXL'}, ["config.model.text.variant='XXL'"]),
    ({'loss.impl': 'chunked'}, ["config.loss.impl='chunked'", "'ring'"]),
    ({'model.attention_chunk': -1}, ['config.model.attention_chunk=-1', 'integer >= 0']),
    ({'model.mlp_chunk': -3}, ['config.model.mlp_chunk=-3', 'integer >= 0']),
    ({'sharding.params': 'zero3'}, ["config.sharding.params='zero3'", "'fsdp'"]),
    ({'grad_cache.microbatch': 100}, ['config.grad_cache.microbatch=100', 'must divide']),
    ({'data.name': 'no_such_dataset'}, ["config.data.name='no_such_dataset'", 'vitclip.data.folder']),
])
def test_validation_errors_name_value_and_fix(tmp_path, overrides, fragments):
  with pytest.raises(ConfigError) as err:
    _validate(tmp_path, **overrides, **{'data.data_dir': str(tmp_path / 'tfds')})
  for fragment in fragments:
    assert fragment in str(err.value)


def test_unknown_loss_kind(tmp_path):
  c = shapes.get_config()
  c.loss.kind = 'triplet'
  with pytest.raises(ConfigError, match="config.loss.kind='triplet' is unknown"):
    config_lib.resolve(c)


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  c = config_lib.resolve(shapes.get_config())
  with pytest.raises(ConfigError, match='--workdir=.*not writable'):
    config_lib.validate(c, str(blocker / 'work'), num_devices=8, check_data=False)


def test_valid_configs_pass(tmp_path):
  for c in (shapes.get_config(), shapes.get_config('sigmoid'), base.get_config()):
    config_lib.validate(config_lib.resolve(c), str(tmp_path), num_devices=8, check_data=False)


def test_entry_point_reports_config_error_without_traceback(tmp_path):
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
      [sys.executable, 'train.py', '--config', 'configs/shapes.py', '--workdir', str(tmp_path),
       '--config.batch_size=100'], cwd=root, capture_output=True, text=True, timeout=120,
      env={**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8', 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode != 0
  assert 'config.batch_size=100' in proc.stderr
  assert 'Traceback' not in proc.stderr
