"""Config resolution and validation: every mistake a user can make is reported before the first step.

`resolve` fills the fields left to their loss-kind defaults; `validate` checks everything a run will need —
every config section (model, loss, optimizer, schedule, logging, evaluation), the training and evaluation data
sets, the tokenizer and init_from files, the workdir — and raises one ConfigError that lists each problem with
the config field and the fix.
"""

import copy
import json
import os
import tempfile

import jax
import ml_collections

from vitclip.errors import ConfigError

PARAM_SHARDINGS = ('replicate', 'fsdp')
SCHEDULES = ('cosine', 'constant')
DTYPES = ('float32', 'bfloat16', 'float16')


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Returns a copy with fields left to their loss-kind defaults (None) filled in from `config.loss.init_by_kind`
  (configs/base.py copies `vitclip.losses.KINDS[kind].init` there, where configs can change them)."""
  from vitclip import losses  # Lazily: keeps `config` importable without the model stack.
  config = ml_collections.ConfigDict(config.to_dict())
  if config.loss.kind not in losses.KINDS:
    raise ConfigError(f'config.loss.kind={config.loss.kind!r} is unknown; use one of {tuple(losses.KINDS)}.')
  defaults = config.loss.get('init_by_kind') or {}  # Configs saved before the field existed: the table's.
  defaults = defaults.get(config.loss.kind) or losses.KINDS[config.loss.kind].init
  with config.unlocked():
    for key, value in defaults.items():
      if config.model[key] is None:
        config.model[key] = value
    if config.get('classifier', {}).get('enabled') and not config.optim.frozen:
      # Classifier fine-tuning trains the image tower and the head; the text tower stays the head's source.
      config.optim.frozen = '^(?!(img|head)(/|$))'
  return config


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'batch=32768,loss=sigmoid' -> ConfigDict of the knobs in `defaults`, each value converted to the type of its
  default (big_vision's `config.py:arg` convention: an ablation grid is a list of arg strings).

  A knob not in `defaults` or a value of the wrong type is a ConfigError naming it.
  """
  knobs = ml_collections.ConfigDict(defaults)
  for item in filter(None, (s.strip() for s in (arg or '').split(','))):
    key, sep, value = item.partition('=')
    if not sep or key not in defaults:
      raise ConfigError(f'config argument {item!r}: use KEY=VALUE with KEY one of {sorted(defaults)}.')
    default = defaults[key]
    try:
      if isinstance(default, bool):
        if value.lower() not in ('true', 'false', '1', '0'):
          raise ValueError(value)
        knobs[key] = value.lower() in ('true', '1')
      else:
        knobs[key] = type(default)(value)
    except ValueError:
      raise ConfigError(f'config argument {item!r}: {key} takes a {type(default).__name__} '
                        f'(default {default!r}).') from None
  return knobs


def _check_writable(workdir: str):
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise ConfigError(f'--workdir={workdir!r} is not writable ({e.strerror}); choose a directory you can '
                      'write to.') from None


def _choice(problems: list, field: str, value, allowed):
  if value not in allowed:
    problems.append(f'config.{field}={value!r} is unknown; use one of {tuple(allowed)}.')


def _positive(problems: list, field: str, value, minimum: int = 1):
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    problems.append(f'config.{field}={value!r} must be an integer >= {minimum}.')


def _check_model(config, problems: list):
  """Model fields: variants, dtype, and everything the modules themselves reject at init (shapes only)."""
  from vitclip import models
  from vitclip.models import layers
  bad = False
  for tower in ('image', 'text'):
    name = config.model[tower].variant
    try:
      decoded = models.decode_variant(name)
    except ValueError as e:
      problems.append(f'config.model.{tower}.variant={name!r} is unknown: {e}')
      bad = True
      continue
    if tower == 'image' and 'patch_size' not in decoded:
      problems.append(f'config.model.image.variant={name!r} has no patch size; add one, e.g. '
                      f'--config.model.image.variant={name}/16.')
      bad = True
  _choice(problems, 'model.dtype', config.model.dtype, DTYPES)
  _choice(problems, 'model.remat_policy', config.model.remat_policy, tuple(layers.REMAT_POLICIES))
  for field in ('attention_chunk', 'mlp_chunk'):
    _positive(problems, f'model.{field}', config.model.get(field, 0), minimum=0)
  if bad or problems:
    return
  try:  # Shapes only: catches any other field a module rejects, in a second and before any data is touched.
    models.abstract_params(models.build_model(config.model))
  except (ValueError, TypeError, KeyError) as e:
    problems.append(f'config.model: {e}')


def _check_masking(config, problems: list):
  """flip.* and aclip.*: ranges, and what each needs from the image tower and the step."""
  from vitclip import masking
  from vitclip.models import decode_variant
  flip, a = config.flip, config.aclip
  if not 0.0 <= flip.mask_ratio < 1.0:
    problems.append(f'config.flip.mask_ratio={flip.mask_ratio!r} must be in [0, 1) (FLIP: 0.5 or 0.75; 0: off).')
  _positive(problems, 'flip.unmasked_steps', flip.unmasked_steps, minimum=0)
  if not a.enabled:
    return
  if flip.mask_ratio:
    problems.append('config.flip.mask_ratio and config.aclip.enabled both mask image tokens; A-CLIP chooses its '
                    'own tokens: set --config.flip.mask_ratio=0.')
  if config.grad_cache.microbatch and config.grad_cache.microbatch < config.batch_size:
    problems.append('config.aclip.enabled does not combine with config.grad_cache.microbatch (its SimCLR and '
                    'BYOL terms need the whole batch of views at once); set --config.grad_cache.microbatch=0.')
  if not 0.0 < a.keep_ratio <= 1.0:
    problems.append(f'config.aclip.keep_ratio={a.keep_ratio!r} must be in (0, 1] (paper: 0.5).')
  _choice(problems, 'aclip.selection', a.selection, masking.SELECTIONS)
  _positive(problems, 'aclip.unit', a.unit)
  _positive(problems, 'aclip.mlp_hidden', a.mlp_hidden)
  _positive(problems, 'aclip.mlp_out', a.mlp_out)
  lo, hi = (tuple(a.view_crop_scale) + (None, None))[:2]
  if len(a.view_crop_scale) != 2 or not 0.0 < lo <= hi <= 1.0:
    problems.append(f'config.aclip.view_crop_scale={a.view_crop_scale!r} must be (min, max) area fractions with '
                    '0 < min <= max <= 1, e.g. (0.5, 1.0).')
  if not 0.0 < a.score_scale <= 1.0:
    problems.append(f'config.aclip.score_scale={a.score_scale!r} must be in (0, 1] (A-CLIP-eff: 0.5).')
  if not 0.0 <= a.ema_momentum <= a.ema_momentum_end <= 1.0:
    problems.append(f'config.aclip.ema_momentum={a.ema_momentum!r} and ema_momentum_end={a.ema_momentum_end!r} '
                    'must satisfy 0 <= start <= end <= 1 (paper: 0.996 -> 1).')
  for field in ('clip_weight', 'simclr_weight', 'byol_weight'):
    if not a[field] >= 0:
      problems.append(f'config.aclip.{field}={a[field]!r} must be >= 0.')
  if not a.simclr_temperature > 0:
    problems.append(f'config.aclip.simclr_temperature={a.simclr_temperature!r} must be positive (paper: 0.1).')
  try:
    patch = decode_variant(config.model.image.variant).get('patch_size')
  except ValueError:
    return  # Reported by _check_model.
  grid = config.model.image.image_size // patch if patch else 0
  if isinstance(a.unit, int) and a.unit >= 1 and grid and grid % a.unit:
    problems.append(f'config.aclip.unit={a.unit} does not divide the {grid} x {grid} patch grid of '
                    f'model.image (image_size {config.model.image.image_size}, patch {patch}); use a divisor of '
                    f'{grid}, e.g. --config.aclip.unit=1.')


def _check_classifier(config, problems: list):
  """classifier.*: what classifier fine-tuning needs and what it does not combine with."""
  if not config.optim.layer_decay > 0:
    problems.append(f'config.optim.layer_decay={config.optim.layer_decay!r} must be positive (1 = off; '
                    'BEiT fine-tuning uses 0.65-0.75).')
  c = config.classifier
  if not c.enabled:
    return
  if not config.init_from:
    problems.append('config.classifier.enabled: the head starts as the zero-shot classifier of a trained text '
                    'tower; set --config.init_from=DIR (a training workdir or a converted model), e.g. with '
                    '--config configs/finetune.py:DIR,DATASET,method=classifier.')
  if config.aclip.enabled or config.flip.mask_ratio:
    problems.append('config.classifier.enabled trains on labels, not image-text pairs; set '
                    '--config.aclip.enabled=False and --config.flip.mask_ratio=0.')
  if config.grad_cache.microbatch and config.grad_cache.microbatch < config.batch_size:
    problems.append('config.classifier.enabled has a per-example loss and no gradient caching; set '
                    '--config.grad_cache.microbatch=0 (and a batch that fits).')
  if not 0.0 <= c.label_smoothing < 1.0:
    problems.append(f'config.classifier.label_smoothing={c.label_smoothing!r} must be in [0, 1).')
  if c.templates:
    from vitclip import templates as templates_lib
    try:
      templates_lib.get_templates(c.templates, 'config.classifier.templates')
    except ConfigError as e:
      problems.append(str(e))


def _check_data(config, problems: list):
  from vitclip.data import generated, sources
  name = config.data.name
  if not name:
    problems.append("config.data.name is empty; name the training data set: a folder imported with python -m "
                    "vitclip.data.folder, a TFDS data set prepared under config.data.data_dir, or 'shapes' "
                    '(generated), e.g. --config.data.name=my_photos.')
    return
  if config.data.caption_templates:
    from vitclip import templates as templates_lib
    try:
      templates_lib.get_templates(config.data.caption_templates, 'config.data.caption_templates')
    except ConfigError as e:
      problems.append(str(e))
      return
  if generated.is_generated(name):
    try:
      generated.resolve(name, config.data)
    except ValueError as e:
      problems.append(f'config.data.{generated.GENERATED[name].settings_field}: {e}')
    return
  try:
    source, info = sources.load_source(name, config.data.train_split, sources.data_dir(config))
    if config.classifier.enabled:
      try:
        sources.class_names(info, config.data.label_feature)
      except ValueError as e:
        raise ConfigError(f'config.data.label_feature={config.data.label_feature!r} (the classifier\'s labels): '
                          f'{e}') from None
    else:
      sources.caption_reader(config.data, info)(source[0])
  except ConfigError as e:
    problems.append(str(e))
  except (FileNotFoundError, ValueError) as e:
    problems.append(f'config.data.name={name!r}: {e}')
  except (IndexError, sources.BadRecordError) as e:
    problems.append(f'config.data.name={name!r}: the first record of split {config.data.train_split!r} has no '
                    f'usable caption ({e}); train on an image-text data set (python -m vitclip.data.folder '
                    '--captions FILE).')


def _check_files(config, problems: list):
  path = config.tokenizer.path
  if path and not os.path.isfile(os.path.expanduser(path)):
    problems.append(f'config.tokenizer.path={path!r} does not exist; give an existing tokenizer file or leave it '
                    "'' to train a BPE on the training captions.")
  if config.init_from and not os.path.isfile(os.path.join(os.path.expanduser(config.init_from), CONFIG_FILE)):
    problems.append(f'config.init_from={config.init_from!r} is not a model directory (no {CONFIG_FILE}); give a '
                    'training workdir or the --out of python -m vitclip.convert.')


def validate(config, workdir: str | None = None, *, num_devices: int | None = None, check_data: bool = True,
             train: bool = True):
  """Raises one ConfigError listing every problem found (each with the field and the fix), or returns None.

  check_data: also open the data sets the run reads (dataset_info and one record; fast).
  train: a training run (its training data set is needed; evaluation alone reads only the evaluation sets).
  """
  from vitclip import evaluators, losses, sharding
  from vitclip.data import sources
  num_devices = num_devices or jax.device_count()
  problems = []
  _choice(problems, 'loss.kind', config.loss.kind, tuple(losses.KINDS))
  _choice(problems, 'loss.impl', config.loss.impl, losses.IMPLS)
  _choice(problems, 'sharding.params', config.sharding.params, PARAM_SHARDINGS)
  _choice(problems, 'optim.schedule', config.optim.schedule, SCHEDULES)
  for field in ('total_steps', 'log_every', 'ckpt_every', 'keep_ckpts', 'max_skipped_steps'):
    _positive(problems, field, config[field])
  _positive(problems, 'eval_every', config.eval_every, minimum=0)
  _positive(problems, 'optim.warmup_steps', config.optim.warmup_steps, minimum=0)
  if not config.optim.lr > 0:
    problems.append(f'config.optim.lr={config.optim.lr!r} must be positive.')
  _check_model(config, problems)
  _check_masking(config, problems)
  _check_classifier(config, problems)
  try:
    parallel = sharding.batch_parallelism(config.mesh, num_devices)
  except ConfigError as e:
    problems.append(str(e))
    parallel = None
  if parallel and (config.batch_size <= 0 or config.batch_size % parallel):
    lower = max(parallel, config.batch_size // parallel * parallel)
    problems.append(
        f'config.batch_size={config.batch_size} is not divisible by the {parallel} data-parallel devices; '
        f'use a multiple of {parallel}, e.g. --config.batch_size={lower}.')
  micro = config.grad_cache.microbatch
  if parallel and micro and (config.batch_size % micro or micro % parallel):
    problems.append(f'config.grad_cache.microbatch={micro} must divide config.batch_size='
                    f'{config.batch_size} and be a multiple of the {parallel} data-parallel devices.')
  _check_files(config, problems)
  if check_data and train:
    _check_data(config, problems)
  try:
    evaluators.check_config(config, sources.data_dir(config) if check_data else None)
  except ConfigError as e:
    problems.append(str(e))
  if workdir is not None:
    try:
      _check_writable(workdir)
    except ConfigError as e:
      problems.append(str(e))
  if problems:
    raise ConfigError('\n'.join(problems))


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
