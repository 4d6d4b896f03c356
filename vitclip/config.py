"""Config resolution and validation: every mistake a user can make is reported before anything compiles."""

import copy
import json
import math
import os
import tempfile

import jax
import ml_collections

LOSS_KINDS = ('softmax', 'sigmoid')
LOSS_IMPLS = ('dense', 'gather', 'ring')
PARAM_SHARDINGS = ('replicate', 'fsdp')
GENERATED_DATASETS = ('shapes',)  # Built locally on first use; everything else must already exist.

# Logit scale / bias defaults per loss kind: CLIP (Radford et al.) and SigLIP (Zhai et al. 2023); copied into
# config.loss.init_by_kind by configs/base.py, where configs can change them.
LOSS_KIND_INIT = {
    'softmax': dict(t_init=1 / 0.07, b_init=None, t_max=100.0),
    'sigmoid': dict(t_init=10.0, b_init=-10.0, t_max=0.0),
}


class ConfigError(ValueError):
  """A user-fixable problem with the config or the command line."""


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Returns a copy with fields left to their loss-kind defaults (None) filled in."""
  config = ml_collections.ConfigDict(config.to_dict())
  if config.loss.kind not in LOSS_KINDS:
    raise ConfigError(f'config.loss.kind={config.loss.kind!r} is unknown; use one of {LOSS_KINDS}.')
  defaults = config.loss.get('init_by_kind', LOSS_KIND_INIT)  # Configs saved before the field existed.
  with config.unlocked():
    for key, value in defaults[config.loss.kind].items():
      if config.model[key] is None:
        config.model[key] = value
  return config


def mesh_shape(mesh_spec, num_devices: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
  """Resolves `[(name, size), ...]` with at most one -1 into concrete axis sizes over `num_devices`."""
  names = tuple(str(n) for n, _ in mesh_spec)
  sizes = [int(s) for _, s in mesh_spec]
  if len(set(names)) != len(names):
    raise ConfigError(f'config.mesh={mesh_spec!r} repeats an axis name.')
  if sizes.count(-1) > 1:
    raise ConfigError(f'config.mesh={mesh_spec!r} has more than one -1 axis; give all but one size.')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ConfigError(
          f'config.mesh={mesh_spec!r}: {num_devices} devices are not divisible by the fixed axes ({known}).')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(f'config.mesh={mesh_spec!r} covers {math.prod(sizes)} devices but {num_devices} are '
                      'visible; make the axis sizes multiply to the device count or use -1 for one axis.')
  return names, tuple(sizes)


def batch_parallelism(config, num_devices: int) -> int:
  """Number of devices the batch dimension is split over (every mesh axis except 'model')."""
  names, sizes = mesh_shape(config.mesh, num_devices)
  return math.prod(s for n, s in zip(names, sizes) if n != 'model')


def _check_writable(workdir: str):
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise ConfigError(f'--workdir={workdir!r} is not writable ({e.strerror}); choose a directory you can '
                      'write to.') from None


def validate(config, workdir: str | None = None, *, num_devices: int | None = None, check_data: bool = True):
  """Raises ConfigError with one actionable message for the first problem found."""
  from vitclip.models import variants  # Imported lazily: keeps `config` importable without flax.
  from vitclip.data import sources
  num_devices = num_devices or jax.device_count()
  if config.loss.kind not in LOSS_KINDS:
    raise ConfigError(f'config.loss.kind={config.loss.kind!r} is unknown; use one of {LOSS_KINDS}.')
  if config.loss.impl not in LOSS_IMPLS:
    raise ConfigError(f'config.loss.impl={config.loss.impl!r} is unknown; use one of {LOSS_IMPLS}.')
  if config.sharding.params not in PARAM_SHARDINGS:
    raise ConfigError(f'config.sharding.params={config.sharding.params!r} is unknown; use one of '
                      f'{PARAM_SHARDINGS}.')
  for tower in ('image', 'text'):
    name = config.model[tower].variant
    try:
      variants.decode_variant(name)
    except ValueError as e:
      raise ConfigError(f'config.model.{tower}.variant={name!r} is unknown: {e}') from None
  parallel = batch_parallelism(config, num_devices)
  if config.batch_size <= 0 or config.batch_size % parallel:
    lower = max(parallel, config.batch_size // parallel * parallel)
    raise ConfigError(
        f'config.batch_size={config.batch_size} is not divisible by the {parallel} data-parallel devices; '
        f'use a multiple of {parallel}, e.g. --config.batch_size={lower}.')
  micro = config.grad_cache.microbatch
  if micro and (config.batch_size % micro or micro % parallel):
    raise ConfigError(f'config.grad_cache.microbatch={micro} must divide config.batch_size='
                      f'{config.batch_size} and be a multiple of the {parallel} data-parallel devices.')
  if check_data and config.data.name not in GENERATED_DATASETS:
    try:
      sources.load_source(config.data.name, config.data.train_split, data_dir(config))
    except (FileNotFoundError, ValueError) as e:
      raise ConfigError(f'config.data.name={config.data.name!r}: {e}') from None
  if workdir is not None:
    _check_writable(workdir)


def data_dir(config) -> str:
  """The TFDS data dir: config.data.data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return os.path.expanduser(config.data.data_dir or os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets'))


CONFIG_FILE = 'config.json'  # A run's (or a converted model's) full config, next to its checkpoints.
TOKENIZER_FILE = 'tokenizer.json'  # The tokenizer a run trained, or a converted model's HF tokenizer.


def from_json(path: str, base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A config saved as JSON (`trainer.setup` writes `workdir/config.json`) laid over a copy of `base`.

  Keys missing from the file keep `base`'s value; JSON lists become tuples wherever `base` holds tuples (and new
  keys get tuples), so the result type-checks command-line overrides exactly as `base` does.
  """
  with open(path) as f:
    data = json.load(f)
  if not isinstance(data, dict):
    raise ConfigError(f'{path} holds a {type(data).__name__}, not a config object; write it with '
                      'ConfigDict.to_json_best_effort().')
  config = copy.deepcopy(base)
  _merge(config, data, path, prefix='')
  return config


def _merge(node: ml_collections.ConfigDict, data: dict, path: str, prefix: str):
  for key, value in data.items():
    current = node.get(key)
    if isinstance(value, dict) and isinstance(current, ml_collections.ConfigDict):
      _merge(current, value, path, f'{prefix}{key}.')
      continue
    value = ml_collections.ConfigDict(value) if isinstance(value, dict) else _like(current, value)
    try:
      with node.unlocked():
        node[key] = value
    except TypeError as e:
      raise ConfigError(f'{path}: {prefix}{key}={value!r} does not fit configs/base.py ({e}); fix the file.') from None


def _like(template, value):
  """JSON value -> the container types of `template` (the base value): tuples stay tuples, lists stay lists."""
  if not isinstance(value, list):
    return value
  inner = template[0] if isinstance(template, (list, tuple)) and template else None
  items = [_like(inner, v) for v in value]
  return items if isinstance(template, list) else tuple(items)


def load_model_dir(directory: str, base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config of a model directory: a converted checkpoint (vitclip.convert) or a training workdir.

  `directory/config.json` over `base` (see `from_json`), with `tokenizer.path` made absolute: a relative path
  names a file in `directory`; '' (a run that trained its tokenizer) means `directory/tokenizer.json`.
  """
  directory = os.path.abspath(os.path.expanduser(directory))
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} does not exist: a model directory holds config.json, a tokenizer and '
                            'checkpoints/ (written by train.py or vitclip.convert); check the path.')
  config = from_json(path, base)
  tok = os.path.join(directory, os.path.expanduser(config.tokenizer.path or TOKENIZER_FILE))
  if not os.path.isfile(tok):
    raise FileNotFoundError(f'{tok} does not exist: {path} names tokenizer.path={config.tokenizer.path!r}; '
                            'put the tokenizer next to config.json or fix tokenizer.path there.')
  config.tokenizer.path = tok
  return config
