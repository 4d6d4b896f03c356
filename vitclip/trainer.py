"""The training loop and the shared setup of training and evaluation.

Order of operations (setup): validate config -> mesh -> data set (built if generated) -> tokenizer (trained and
saved with the run, or loaded) -> model -> optimizer -> abstract state and its shardings. Then: restore the
latest checkpoint of the workdir (state + data iterator) or initialise (optionally from `config.init_from`),
and run jit-compiled steps with logging, periodic evaluation and checkpointing.
"""

import dataclasses
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from vitclip import checkpoint as checkpoint_lib
from vitclip import config as config_lib
from vitclip import evaluators, grad_cache, init_from, optim, sharding, train_step as train_step_lib
from vitclip.data import pipeline, sources
from vitclip.metrics_writer import MetricsWriter
from vitclip.models import build_model
from vitclip.tokenizer import Tokenizer, train_bpe

TOKENIZER_FILE = config_lib.TOKENIZER_FILE
CONFIG_FILE = config_lib.CONFIG_FILE
EVAL_RESULTS_FILE = 'eval_results.json'


@dataclasses.dataclass
class Run:
  """Everything built from a config before any step runs."""
  config: ml_collections.ConfigDict  # Resolved: loss-kind defaults and tokenizer-derived fields filled in.
  workdir: str
  mesh: Any
  tokenizer: Tokenizer
  model: Any
  tx: Any
  schedule: Any
  abstract_state: train_step_lib.TrainState  # ShapeDtypeStructs carrying the target shardings.

  @property
  def state_shardings(self):
    return jax.tree.map(lambda x: x.sharding, self.abstract_state)


def setup(config, workdir: str, *, devices=None, save_config: bool = True) -> Run:
  """Validates the config and builds mesh, data set, tokenizer, model, optimizer and abstract state.

  save_config: write the resolved config to `workdir/config.json` (training; evaluation leaves it alone).
  """
  config = config_lib.resolve(config)
  config_lib.validate(config, workdir, num_devices=len(devices or jax.devices()))
  init_from.prepare_config(config)
  mesh = sharding.make_mesh(config.mesh, devices)
  prepare_data(config)
  tokenizer = setup_tokenizer(config, workdir)
  with config.unlocked():
    config.model.text.vocab_size = tokenizer.vocab_size
    config.model.text.eos_id = tokenizer.eos_id
    config.model.text.pad_id = tokenizer.pad_id
  run = build_run(config, workdir, mesh, tokenizer)
  if save_config and jax.process_index() == 0:
    with open(os.path.join(workdir, CONFIG_FILE), 'w') as f:
      f.write(config.to_json_best_effort(indent=1))
  return run


def build_run(config, workdir: str, mesh, tokenizer: Tokenizer | None) -> Run:
  """Model, optimizer and sharded abstract state for a resolved config (no data access)."""
  model = build_model(config.model)
  abstract_params = jax.eval_shape(lambda r: init_params(model, config, r), jax.random.key(0))
  tx, schedule = optim.make_optimizer(config.optim, config.total_steps, abstract_params)
  run = Run(config, workdir, mesh, tokenizer, model, tx, schedule, abstract_state=None)
  run.abstract_state = abstract_state_for(run)
  return run


def abstract_state_for(run: Run) -> train_step_lib.TrainState:
  """ShapeDtypeStructs of the train state carrying the shardings chosen by `config.sharding`."""
  abstract = jax.eval_shape(lambda r: _init_state(run.model, run.config, run.tx, r), jax.random.key(0))
  rule, min_size = run.config.sharding.params, run.config.sharding.fsdp_min_size
  shardings = train_step_lib.TrainState(
      step=sharding.replicated(run.mesh), rng=sharding.replicated(run.mesh),
      params=sharding.param_shardings(abstract.params, run.mesh, rule, min_size),
      opt_state=sharding.param_shardings(abstract.opt_state, run.mesh, rule, min_size))
  return checkpoint_lib.abstract_with_shardings(abstract, shardings)


def prepare_data(config):
  """Builds the generated data set on first use (process 0 builds, the others wait)."""
  if config.data.name in config_lib.GENERATED_DATASETS:
    if jax.process_index() == 0:
      sources.prepare(config.data.name, config_lib.data_dir(config), **config.data.shapes.to_dict())
    _barrier('prepare_data')


def setup_tokenizer(config, workdir: str) -> Tokenizer:
  """The run's tokenizer: `config.tokenizer.path`, else the one saved in the workdir, else a BPE trained on the
  training captions and saved to `workdir/tokenizer.json`."""
  max_len = config.model.text.max_len
  if config.tokenizer.path:
    return Tokenizer.from_file(os.path.expanduser(config.tokenizer.path), max_len)
  path = os.path.join(workdir, TOKENIZER_FILE)
  if not os.path.exists(path) and jax.process_index() == 0:
    source, _ = sources.load_source(config.data.name, config.data.train_split, config_lib.data_dir(config),
                                   **sources.settings_for(config.data.name, config.data))
    n = min(len(source), config.tokenizer.train_captions)
    captions = (c for i in range(n) for c in _captions_or_empty(source, i))
    tok = train_bpe(captions, config.tokenizer.vocab_size, config.tokenizer.lowercase)
    tmp = path + '.tmp'
    tok.save(tmp)
    os.replace(tmp, path)  # Atomic: a crash never leaves a half-written tokenizer next to a checkpoint.
  _barrier('tokenizer')
  return Tokenizer.from_file(path, max_len)


def _captions_or_empty(source, i):
  try:
    return sources.decode_captions(source[i])
  except sources.BadRecordError:
    return []


def _barrier(name: str):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def init_params(model, config, rng):
  """Model params from dummy inputs of the configured shapes."""
  size, length = config.model.image.image_size, config.model.text.max_len
  return model.init(rng, jnp.zeros((1, size, size, 3), jnp.float32), jnp.zeros((1, length), jnp.int32))['params']


def _init_state(model, config, tx, rng) -> train_step_lib.TrainState:
  init_rng, state_rng = jax.random.split(rng)
  params = init_params(model, config, init_rng)
  return train_step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                                   rng=state_rng)


def create_state(run: Run) -> train_step_lib.TrainState:
  """Fresh state, initialised directly into its shardings (never materialised whole on one device), then
  loaded from `config.init_from` when set."""
  # Shapes are checked first: a mismatched checkpoint stops before anything is initialised or compiled.
  loading = init_from.plan(run) if run.config.init_from else None
  init = jax.jit(lambda r: _init_state(run.model, run.config, run.tx, r), out_shardings=run.state_shardings)
  state = init(jax.random.key(run.config.seed))
  if loading is not None:
    state = init_from.load_into_state(run, state, loading)
  return state


def compile_train_step(run: Run):
  """jit of the train step with explicit in/out shardings; the state is donated (updated in place)."""
  loss_and_grad = grad_cache.make_loss_and_grad(run.model, run.config, run.mesh)
  step = train_step_lib.make_train_step(run.model, run.tx, run.schedule, run.config, run.mesh, loss_and_grad)
  batch_sh = sharding.batch_sharding(run.mesh)
  return jax.jit(step, in_shardings=(run.state_shardings, {'image': batch_sh, 'tokens': batch_sh}),
                 out_shardings=(run.state_shardings, sharding.replicated(run.mesh)), donate_argnums=0)


def run_evals(run: Run, params, names=None) -> dict[str, float]:
  ctx = evaluators.EvalContext(run.config, run.model, params, run.tokenizer, run.mesh, run.workdir,
                               config_lib.data_dir(run.config))
  return evaluators.run_all(ctx, names if names is not None else run.config.evals.names)


def write_eval_results(workdir: str, results: dict[str, float]):
  if jax.process_index() == 0:
    tmp = os.path.join(workdir, EVAL_RESULTS_FILE + '.tmp')
    with open(tmp, 'w') as f:
      json.dump(results, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(workdir, EVAL_RESULTS_FILE))


def format_table(results: dict[str, float]) -> str:
  width = max(map(len, results), default=10)
  return '\n'.join(f'{k:<{width}}  {v:8.4f}' for k, v in sorted(results.items()))


def train(config, workdir: str) -> dict[str, float]:
  """Trains (resuming from the latest checkpoint in `workdir` if any); returns the final evaluation."""
  run = setup(config, workdir)
  cfg = run.config
  ckpt = checkpoint_lib.Checkpointer(workdir, keep=cfg.keep_ckpts)
  data = pipeline.make_train_iterator(cfg, run.tokenizer.encode, run.mesh)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(run.abstract_state, data.grain_iterator)
    logging.info('Resumed from step %d of %s', int(state.step), ckpt.directory)
  else:
    state = create_state(run)
  start = int(state.step)
  writer = MetricsWriter(workdir, resume_step=start)
  step_fn = compile_train_step(run)
  progress = _progress_bar(start, cfg.total_steps)
  tic, tic_step = time.perf_counter(), start
  for step in range(start + 1, cfg.total_steps + 1):
    state, metrics = step_fn(state, next(data))
    if progress is not None:
      progress.update(1)
    if step % cfg.log_every == 0 or step == cfg.total_steps:
      metrics = jax.device_get(metrics)
      now = time.perf_counter()
      row = {**metrics, 'samples_per_s': cfg.batch_size * (step - tic_step) / (now - tic),
             'data/skipped': data.skipped.count}
      writer.write(step, {('train/' + k if k not in ('loss', 'lr', 'samples_per_s') else k): v
                          for k, v in row.items()})
      if progress is not None:
        progress.set_postfix(loss=f'{float(metrics["loss"]):.4f}')
      else:
        logging.info('step %d loss %.4f lr %.2e t %.2f %.0f samples/s', step, metrics['loss'], metrics['lr'],
                     metrics['t'], row['samples_per_s'])
      tic, tic_step = time.perf_counter(), step
    if step % cfg.ckpt_every == 0 or step == cfg.total_steps:
      ckpt.save(step, state, data.grain_iterator, force=True)
    if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.total_steps:
      writer.write(step, {'eval/' + k: v for k, v in run_evals(run, state.params).items()})
  if progress is not None:
    progress.close()
  ckpt.wait()
  results = run_evals(run, state.params)
  writer.write(int(state.step), {'eval/' + k: v for k, v in results.items()})
  write_eval_results(workdir, results)
  writer.close()
  ckpt.close()
  return results


def _progress_bar(start: int, total: int):
  if not sys.stdout.isatty() or jax.process_index() != 0:
    return None
  from tqdm import tqdm
  return tqdm(initial=start, total=total, unit='step', dynamic_ncols=True)


def evaluate(config, workdir: str, checkpoint_dir: str = '', names=None) -> dict[str, float]:
  """Restores the params of the latest checkpoint of `workdir` (or `checkpoint_dir`: a run or a converted model
  directory) and runs the configured evaluators; results go to `workdir/eval_results.json`."""
  run = setup(config, workdir, save_config=False)
  source = checkpoint_dir or workdir
  params = checkpoint_lib.restore_params(
      source, run.abstract_state.params,
      fix=f'Evaluate with the config the checkpoint was written with (--config configs/pretrained.py:{source}).')
  results = run_evals(run, params, names)
  write_eval_results(workdir, results)
  return results
