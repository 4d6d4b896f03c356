"""Building a run: the one place where a config becomes a mesh, data, tokenizer, model, optimizer and state.

Training, evaluation, the Python API (`vitclip.load`), benchmarks and tests all go through `build`:

  resolve the config (loss-kind defaults, init_from's tokenizer)  ->  validate everything a run will need
  -> mesh -> generated data sets built (training and evaluation) -> tokenizer (trained and saved, or loaded)
  -> the final config (tokenizer-derived fields filled; not mutated afterwards)
  -> workdir contract checked (train) -> model -> optimizer -> abstract state with its shardings.

The workdir is a contract: rerunning a workdir that has checkpoints with a setting that changes what the
checkpoints mean (model, data, tokenizer, loss, batch, seed, frozen params) is refused before anything is
written, naming the differing fields; other changes (total steps, evaluation, logging) are allowed, logged and
recorded in `config_changes.jsonl`.
"""

import collections
import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from vitclip import checkpoint as checkpoint_lib
from vitclip import config as config_lib
from vitclip import aclip, classifier, evaluators, init_from, optim, sharding
from vitclip.data import generated, sources
from vitclip.errors import ConfigError, MissingFileError
from vitclip.models import abstract_params, build_model, init_params
from vitclip.tokenizer import Tokenizer, train_bpe
from vitclip.train_step import TrainState, make_train_step

# Fields whose change makes the workdir's checkpoints mean something else: prefixes of flat config keys.
RESUME_FIXED = ('model.', 'tokenizer.', 'loss.', 'data.', 'batch_size', 'seed', 'optim.frozen', 'init_from',
                'flip.', 'aclip.', 'classifier.')
# Exceptions under those prefixes: where the data lives and how fast it is read.
RESUME_FREE = ('data.data_dir', 'data.num_workers', 'data.prefetch')
CHANGES_FILE = 'config_changes.jsonl'


@dataclasses.dataclass
class Run:
  """Everything built from a config before any step runs."""
  config: ml_collections.ConfigDict  # Final: loss-kind defaults and tokenizer-derived fields filled in.
  workdir: str
  mesh: Any
  tokenizer: Tokenizer
  model: Any
  tx: Any
  schedule: Any
  abstract_state: TrainState  # ShapeDtypeStructs carrying the target shardings.

  @property
  def state_shardings(self):
    return jax.tree.map(lambda x: x.sharding, self.abstract_state)

  @property
  def data_dir(self) -> str:
    return sources.data_dir(self.config)


def build(config, workdir: str | None, *, devices=None, train: bool = True, check_data: bool = True,
          with_tokenizer: bool = True) -> Run:
  """Validates the config and builds the run (module docstring).

  Args:
    config: a ConfigDict as configs/*.py return it (not modified).
    workdir: run directory; with `train`, `workdir/config.json` is written (after the contract check).
    devices: devices of the mesh (default all).
    train: a training run (checks the workdir contract, saves the config, may train a tokenizer).
    check_data: open and prepare the data sets (False for runs that read no data, e.g. benchmarks).
    with_tokenizer: False for runs that tokenize nothing (benchmarks): the vocabulary size is
      config.model.text.vocab_size and `Run.tokenizer` is None.
  """
  config = _with_init_from_tokenizer(config_lib.resolve(config))
  devices = devices or jax.devices()
  config_lib.validate(config, workdir, num_devices=len(devices), check_data=check_data, train=train)
  mesh = sharding.make_mesh(config.mesh, devices)
  if check_data:
    prepare_data(config, train)
  tokenizer = setup_tokenizer(config, workdir, may_train=train) if with_tokenizer else None
  if tokenizer is not None:
    config = _with_tokenizer_fields(config, tokenizer)
  if config.classifier.enabled and check_data:
    config = _with_classifier_fields(config)
  if train:
    check_workdir_contract(config, workdir)
  run = assemble(config, workdir, mesh, tokenizer)
  if train and jax.process_index() == 0:
    write_config(config, workdir)
  return run


def assemble(config, workdir: str, mesh, tokenizer: Tokenizer | None) -> Run:
  """Model, optimizer and sharded abstract state for a final config (no data access)."""
  config.lock()
  model = build_model(config.model)
  run_params = jax.eval_shape(lambda p, r: _with_run_heads(config, p, r), abstract_params(model), jax.random.key(0))
  tx, schedule = optim.make_optimizer(config.optim, config.total_steps, run_params)
  # The model's init is traced once per model in a process; the rest of the state is traced from its shapes.
  abstract = jax.eval_shape(lambda p, r: _state_of(config, tx, p, r), run_params, jax.random.key(0))
  rule, min_size = config.sharding.params, config.sharding.fsdp_min_size
  shardings = TrainState(
      step=sharding.replicated(mesh), rng=sharding.replicated(mesh),
      params=sharding.param_shardings(abstract.params, mesh, rule, min_size),
      opt_state=sharding.param_shardings(abstract.opt_state, mesh, rule, min_size),
      ema=sharding.param_shardings(abstract.ema, mesh, rule, min_size))
  abstract_state = checkpoint_lib.abstract_with_shardings(abstract, shardings)
  return Run(config, workdir, mesh, tokenizer, model, tx, schedule, abstract_state)


# ------------------------------------------------------------------------------------------------ config


def _with_init_from_tokenizer(config):
  """A run that loads init_from's text tower and names no tokenizer uses init_from's: token ids must mean what
  the loaded embedding table learned."""
  if not config.init_from:
    return config
  towers = init_from.selected_towers(config)
  if 'txt' in towers and not config.tokenizer.path:
    try:
      source = init_from.source_config(config)
    except FileNotFoundError as e:
      raise MissingFileError(f'config.init_from={config.init_from!r}: {e}') from None
    with config.unlocked():
      config.tokenizer.path = source.tokenizer.path
      config.tokenizer.kind = source.tokenizer.kind
  return config


def _with_tokenizer_fields(config, tokenizer: Tokenizer):
  with config.unlocked():
    config.model.text.vocab_size = tokenizer.vocab_size
    config.model.text.eos_id = tokenizer.eos_id
    config.model.text.pad_id = tokenizer.pad_id
  return config


def _with_classifier_fields(config):
  """classifier.num_classes from the training data set's ClassLabel `data.label_feature`."""
  _, info = generated.load_source(config.data.name, config.data.train_split, config.data, sources.data_dir(config))
  try:
    names = evaluators.classifier.class_names(config, info)
  except ValueError as e:
    raise ConfigError(f'config.data.label_feature={config.data.label_feature!r} (the classifier\'s labels): '
                      f'{e}') from None
  with config.unlocked():
    config.classifier.num_classes = len(names)
  return config


def flat(config) -> dict[str, Any]:
  """ConfigDict or dict -> {'model.image.variant': 'B/16', ...} with lists as tuples (JSON round trips)."""
  out = {}
  def walk(node, prefix):
    for key, value in node.items():
      if isinstance(value, (dict, ml_collections.ConfigDict)):
        walk(value, f'{prefix}{key}.')
      else:
        out[f'{prefix}{key}'] = _tuples(value)
  walk(config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config, '')
  return out


def _tuples(value):
  return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def check_workdir_contract(config, workdir: str):
  """Refuses (ConfigError, before anything is written) a rerun of a workdir with checkpoints whose config
  differs in a field that changes what the checkpoints mean; logs and records the allowed differences."""
  path = os.path.join(workdir, config_lib.CONFIG_FILE)
  if not os.path.isfile(path) or checkpoint_lib.Checkpointer.steps_in(workdir) == []:
    return
  with open(path) as f:
    saved = flat(json.load(f))
  now = flat(config)
  changed = {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)}
  fixed = [k for k in changed if k.startswith(RESUME_FIXED) and not k.startswith(RESUME_FREE)]
  if fixed:
    diffs = '; '.join(f'{k}: {changed[k][0]!r} in {path}, {changed[k][1]!r} now' for k in fixed)
    raise ConfigError(f'--workdir={workdir} holds checkpoints of a run with another setting: {diffs}. These '
                      'fields decide what the checkpoints mean; rerun with the same values (drop the overrides), '
                      'or use a new --workdir (to start from this run, set --config.init_from='
                      f'{os.path.abspath(workdir)}).')
  if changed and jax.process_index() == 0:
    logging.info('Settings changed since the last run of %s: %s', workdir, changed)
    with open(os.path.join(workdir, CHANGES_FILE), 'a') as f:
      f.write(json.dumps({k: list(v) for k, v in changed.items()}, default=str) + '\n')


def model_dir_config(model_dir: str, base, *, evals_from=None, overrides: dict | None = None):
  """The config to evaluate or load a model directory (a run or a converted model) with.

  `model_dir/config.json` laid over `base` gives the model, tokenizer, data and loss settings the weights were
  made with; `evals_from` (a config, e.g. eval.py's --config) replaces the evaluation settings (default: the
  run's own); `overrides` (flat 'a.b' -> value, as given on the command line) are applied last. An override of
  a field that decides what the weights mean (RESUME_FIXED) that differs from config.json is refused, naming
  both values; the data location and everything else may change.
  """
  config = config_lib.load_model_dir(model_dir, base)
  saved = flat(config)
  if evals_from is not None:
    with config.unlocked():
      config.evals = ml_collections.ConfigDict(evals_from.evals.to_dict())
  for key, value in (overrides or {}).items():
    fixed = key.startswith(RESUME_FIXED) and not key.startswith(RESUME_FREE)
    if fixed and key in saved and saved[key] != _tuples(value):
      raise ConfigError(f'--config.{key}={value!r} conflicts with {key}={saved[key]!r} in '
                        f'{os.path.join(model_dir, config_lib.CONFIG_FILE)}, which the weights were made with; '
                        'drop the override (the model directory sets it).')
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    with node.unlocked():
      node[leaf] = value
  return config


def write_config(config, workdir: str):
  path = os.path.join(workdir, config_lib.CONFIG_FILE)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(config.to_json_best_effort(indent=1))
  os.replace(tmp, path)  # Atomic: the workdir's config.json is never half-written.


# -------------------------------------------------------------------------------------- data & tokenizer


def prepare_data(config, train: bool = True):
  """Builds every generated data set the run reads (training and evaluation) on first use; process 0 builds,
  the others wait."""
  names = [config.data.name] * train + list(evaluators.datasets(config))
  if jax.process_index() == 0:
    for name in dict.fromkeys(names):
      if generated.is_generated(name):
        generated.prepare(name, config.data, sources.data_dir(config))
  _barrier('prepare_data')


def setup_tokenizer(config, workdir: str, may_train: bool = True) -> Tokenizer:
  """The run's tokenizer: `config.tokenizer.path`, else the one saved in the workdir, else (training only) a BPE
  trained on the training captions and saved to `workdir/tokenizer.json`."""
  max_len = config.model.text.max_len
  if config.tokenizer.path:
    return Tokenizer.from_file(os.path.expanduser(config.tokenizer.path), max_len)
  path = os.path.join(workdir, config_lib.TOKENIZER_FILE)
  if not os.path.exists(path) and not may_train:
    raise ConfigError(f'{path} does not exist and config.tokenizer.path is empty: evaluate a run directory that '
                      'holds its tokenizer (eval.py --workdir RUN), or set --config.tokenizer.path.')
  if not os.path.exists(path) and jax.process_index() == 0:
    source, info = generated.load_source(config.data.name, config.data.train_split, config.data,
                                         sources.data_dir(config))
    n = min(len(source), config.tokenizer.train_captions)
    read = sources.caption_reader(config.data, info)
    captions = (c for i in range(n) for c in _captions_or_empty(read, source, i))
    tok = train_bpe(captions, config.tokenizer.vocab_size, config.tokenizer.lowercase)
    tmp = path + '.tmp'
    tok.save(tmp)
    os.replace(tmp, path)  # Atomic: a crash never leaves a half-written tokenizer next to a checkpoint.
  _barrier('tokenizer')
  return Tokenizer.from_file(path, max_len)


def _captions_or_empty(read, source, i):
  try:
    return read(source[i])
  except sources.BadRecordError:
    return []


def _barrier(name: str):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


# ------------------------------------------------------------------------------------------------- state


def init_run_params(model, config, rng):
  """The trained params of a fresh run: the model's, plus A-CLIP's heads under 'aclip' when enabled."""
  return _with_run_heads(config, init_params(model, rng), rng)  # The same model init whatever else trains.


def _with_run_heads(config, params, rng):
  """The model's `params` plus the heads this run trains besides the model (A-CLIP's, the classifier's)."""
  if config.aclip.enabled:
    params = {**params, 'aclip': aclip.init_heads(config, jax.random.fold_in(rng, 1))}
  if config.classifier.enabled:  # Zero until create_state sets the zero-shot head.
    params = {**params, classifier.HEAD: classifier.init_head(config.classifier.num_classes, config.model.embed_dim)}
  return params


def _init_state(model, config, tx, rng) -> TrainState:
  init_rng, state_rng = jax.random.split(rng)
  return _state_of(config, tx, init_run_params(model, config, init_rng), state_rng)


def _state_of(config, tx, params, rng) -> TrainState:
  """The fresh state around freshly initialised `params`."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng,
                    ema=params['img'] if config.aclip.enabled else None)


def create_state(run: Run) -> TrainState:
  """Fresh state, initialised directly into its shardings (never materialised whole on one device), then
  loaded from `config.init_from` when set."""
  # Shapes are checked first: a mismatched checkpoint stops before anything is initialised or compiled.
  loading = init_from.plan(run) if run.config.init_from else None
  init = _jitted('init', run, lambda: jax.jit(lambda r: _init_state(run.model, run.config, run.tx, r),
                                             out_shardings=run.state_shardings))
  state = init(jax.random.key(run.config.seed))
  if loading is not None:
    state = init_from.load_into_state(run, state, loading)
    if state.ema is not None:  # The EMA tower starts as the loaded image tower.
      state = state.replace(ema=state.params['img'])
  if run.config.classifier.enabled:
    state = state.replace(params={**state.params, classifier.HEAD: _zero_shot_head(run, state.params)})
  return state


def load_init_from(run: Run) -> dict:
  """The params of `config.init_from` as this run loads them (every tower; `{}` without init_from), placed with
  the state's shardings."""
  if not run.config.init_from:
    return {}
  return init_from.load_params(init_from.plan(run), run.abstract_state.params)


def _zero_shot_head(run: Run, params) -> dict:
  """The classifier head that reproduces zero-shot classification with the (loaded) text tower, placed like
  the state's head."""
  cfg = run.config
  ctx = evaluators.common.Context(cfg, run.model, run.tokenizer, run.mesh, run.workdir, run.data_dir)
  _, info = generated.load_source(cfg.data.name, cfg.data.train_split, cfg.data, run.data_dir)
  head = evaluators.classifier.zero_shot_head(ctx, params, info)
  return jax.device_put(head, jax.tree.map(lambda x: x.sharding, run.abstract_state.params[classifier.HEAD]))


def batch_keys(config) -> tuple[str, str]:
  """The train batch's arrays: images and captions' tokens; images and labels for classifier fine-tuning."""
  return ('image', 'label') if config.classifier.enabled else ('image', 'tokens')


def compile_train_step(run: Run):
  """jit of the train step with explicit in/out shardings; the state is donated (updated in place)."""
  def make():
    step = make_train_step(run.model, run.tx, run.schedule, run.config, run.mesh)
    batch_sh = sharding.batch_sharding(run.mesh)
    batch_shardings = {key: batch_sh for key in batch_keys(run.config)}
    return jax.jit(step, in_shardings=(run.state_shardings, batch_shardings),
                   out_shardings=(run.state_shardings, sharding.replicated(run.mesh)), donate_argnums=0)
  return _jitted('train_step', run, make)


# Runs built from equal configs on the same mesh trace and compile the same programs. The last few jitted
# functions are kept, so that a process which runs such runs one after another (a run resumed in process, an
# evaluation after training, a test session) reuses their traces and executables instead of building them again.
_JITTED = collections.OrderedDict()
_JITTED_KEEP = 8


def _jitted(kind: str, run: Run, make):
  """`make()`'s jitted function for (kind, run.config, run.mesh), made once and kept among the last few."""
  key = (kind, json.dumps(run.config.to_dict(), sort_keys=True, default=repr), run.mesh)
  if key not in _JITTED:
    _JITTED[key] = make()
    while len(_JITTED) > _JITTED_KEEP:
      _JITTED.popitem(last=False)
  _JITTED.move_to_end(key)
  return _JITTED[key]
