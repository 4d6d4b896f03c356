"""The training loop: build the run, restore or initialise, step, log, evaluate, checkpoint, stop cleanly.

`train` reads top to bottom; `vitclip/run.py` builds everything a run needs before the first step (and
validates it), `vitclip/train_step.py` is the pure step. A run stops early, on purpose, in three ways (each an
`errors.RunStopped` with its exit code): SIGTERM / SIGINT (the current step finishes, a checkpoint is written),
divergence (`config.max_skipped_steps` non-finite steps in a row; nothing is saved from the diverged state), and
a checkpoint that cannot be written (disk full; the previous checkpoints are intact).
"""

import functools
import json
import os
import signal
import sys
import time

import jax
import numpy as np
from absl import logging

from vitclip import checkpoint as checkpoint_lib
from vitclip import console, evaluators, run as run_lib
from vitclip.data import pipeline
from vitclip.errors import CheckpointWriteError, Diverged, Preempted
from vitclip.metrics_writer import MetricsWriter

EVAL_RESULTS_FILE = 'eval_results.json'
_UNPREFIXED = ('loss', 'lr', 'samples_per_s')  # Metric keys logged as they are; the rest as train/<key>.


def train(config, workdir: str) -> dict[str, float]:
  """Trains (resuming from the latest usable checkpoint in `workdir`, if any); returns the final evaluation."""
  run = run_lib.build(config, workdir)
  cfg = run.config
  ckpt = checkpoint_lib.Checkpointer(workdir, keep=cfg.keep_ckpts)
  data = pipeline.make_train_iterator(cfg, run.tokenizer.encode, run.mesh)
  state = restore_or_create(run, ckpt, data)
  suite = evaluators.Suite(cfg, run.model, run.tokenizer, run.mesh, workdir, run.data_dir,
                           functools.partial(run_lib.load_init_from, run))
  step_fn = run_lib.compile_train_step(run)
  writer = MetricsWriter(workdir, resume_step=int(state.step))
  console.print_summary(run, int(state.step), ckpt.directory)
  try:
    with StopSignals() as stop:
      state = train_loop(run, state, step_fn, data, ckpt, writer, suite, stop)
    results = suite.run(state.params)
    writer.write(int(state.step), {'eval/' + k: v for k, v in results.items()})
    write_eval_results(workdir, results)
  finally:  # Also when the run stops early: checkpoints in flight are finished, files closed.
    writer.close()
    close_checkpointer(ckpt)
  return results


def restore_or_create(run: run_lib.Run, ckpt: checkpoint_lib.Checkpointer, data):
  """The latest usable checkpoint of the workdir (state and data position), else a fresh state."""
  if ckpt.latest_step() is not None:
    state = ckpt.restore(run.abstract_state, data.grain_iterator)
    logging.info('Resumed from step %d of %s', int(state.step), ckpt.directory)
    return state
  return run_lib.create_state(run)


def train_loop(run, state, step_fn, data, ckpt, writer, suite, stop):
  """Steps from `state.step` to `config.total_steps`; returns the final state (checkpointed)."""
  cfg = run.config
  start = int(state.step)
  progress = console.progress_bar(start, cfg.total_steps)
  streak = SkipStreak(cfg.max_skipped_steps)
  tic, tic_step = time.perf_counter(), start
  for step in range(start + 1, cfg.total_steps + 1):
    state, metrics = step_fn(state, next(data))
    streak.update(step, metrics, ckpt)  # Reads the previous step's flag: the device stays one step ahead.
    progress.update(1)
    if step % cfg.log_every == 0 or step == cfg.total_steps:
      metrics = jax.device_get(metrics)
      now = time.perf_counter()
      row = {**metrics, 'samples_per_s': cfg.batch_size * (step - tic_step) / (now - tic),
             'data/skipped': data.skipped.count, 'skipped_nonfinite_total': streak.total}
      writer.write(step, {(k if k in _UNPREFIXED else 'train/' + k): v for k, v in row.items()})
      progress.log(step, row)
      tic, tic_step = time.perf_counter(), step
    if step % cfg.ckpt_every == 0 or step == cfg.total_steps:
      streak.flush(ckpt)
      save(ckpt, step, state, data)
    if stop.requested(step):
      progress.close()
      streak.flush(ckpt)
      if step % cfg.ckpt_every:
        save(ckpt, step, state, data)
      finish_saves(ckpt, step)
      raise Preempted(f'Stopped by {stop.name} after step {step}: checkpoint written to {ckpt.directory}/{step}. '
                      'Rerun the same command to continue.', stop.signum)
    if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.total_steps:
      writer.write(step, {'eval/' + k: v for k, v in suite.run(state.params).items()})
  progress.close()
  finish_saves(ckpt, cfg.total_steps)
  return state


class SkipStreak:
  """Counts consecutive skipped (non-finite) steps and stops the run at `limit` in a row.

  `update` reads the flag of the step before the one just dispatched, so the host never waits for the step it
  has just queued; `flush` reads the newest flag (before a checkpoint and at the end).
  """

  def __init__(self, limit: int):
    self.limit, self.run, self.total = limit, 0, 0
    self._pending = None  # (step, metrics) not read yet.

  def update(self, step: int, metrics, ckpt):
    pending, self._pending = self._pending, (step, metrics)
    if pending is not None:
      self._count(*pending, ckpt)

  def flush(self, ckpt):
    if self._pending is not None:
      self._count(*self._pending, ckpt)
      self._pending = None

  def _count(self, step: int, metrics, ckpt):
    if not int(metrics['skipped_nonfinite']):
      self.run = 0
      return
    self.run += 1
    self.total += 1
    loss = float(metrics['loss'])
    console.warn(f'step {step} skipped: non-finite loss, gradient, update or params (loss {loss:.4g}); the '
                 'params were not updated.')
    if self.run >= self.limit:
      last = ckpt.latest_step()
      raise Diverged(
          f'Training diverged: steps {step - self.run + 1}-{step} all had a non-finite loss, gradient, update or '
          f'params (loss {loss:.4g} at step {step}); stopped after {self.run} in a row '
          f'(config.max_skipped_steps). Nothing was saved from the diverged state; the last checkpoint is '
          f'{"step " + str(last) if last is not None else "none"}. Try a lower --config.optim.lr, a longer '
          '--config.optim.warmup_steps, or --config.optim.clip_norm; then rerun (it resumes from the last '
          'checkpoint) or use a new --workdir.')


def save(ckpt: checkpoint_lib.Checkpointer, step: int, state, data):
  """Writes a checkpoint. The state is finite by construction: the initial or restored state is (restore checks
  it), and the step never applies a non-finite update or param."""
  try:
    ckpt.save(step, state, data.grain_iterator, force=True)
  except OSError as e:
    raise CheckpointWriteError(_write_error(ckpt, step, e)) from None


def finish_saves(ckpt: checkpoint_lib.Checkpointer, step: int):
  """Waits for asynchronous checkpoint writes; a failed write (disk full) is one clear error."""
  try:
    ckpt.wait()
  except OSError as e:
    raise CheckpointWriteError(_write_error(ckpt, step, e)) from None


def close_checkpointer(ckpt: checkpoint_lib.Checkpointer):
  """Finishes pending writes and closes; a write error here was reported by `finish_saves` already, or the run
  is stopping for another reason that must not be masked."""
  try:
    ckpt.close()
  except OSError as e:
    logging.error('Closing the checkpointer of %s failed: %s', ckpt.directory, e)


def _write_error(ckpt, step: int, error: OSError) -> str:
  steps = checkpoint_lib.Checkpointer.steps_in(ckpt.workdir)
  previous = f'the previous checkpoint (step {steps[-1]}) is intact' if steps else 'no earlier checkpoint exists'
  return (f'Could not write checkpoint {step} to {ckpt.directory}: {error.strerror or error} '
          f'({type(error).__name__}); {previous}. Free space (or fix permissions) and rerun the same command.')


class StopSignals:
  """SIGTERM and SIGINT request a clean stop after the current step (a second SIGINT stops at once).

  With several processes the request is agreed on every `SYNC_EVERY` steps (a tiny all-gather), so every
  process saves the same step.
  """
  SYNC_EVERY = 10

  def __init__(self):
    self.signum, self._previous = None, {}

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum else ''

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread (e.g. a test runner's worker): no handlers, no stop requests.
        pass
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False

  def _handle(self, signum, frame):
    if self.signum == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt  # Second Ctrl-C: the user does not want to wait for the checkpoint.
    self.signum = signum

  def requested(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.signum is not None
    if step % self.SYNC_EVERY:
      return False
    from jax.experimental import multihost_utils
    signals = multihost_utils.process_allgather(np.int32(self.signum or 0))
    self.signum = self.signum or int(np.max(signals)) or None
    return self.signum is not None


def write_eval_results(workdir: str, results: dict[str, float]):
  if jax.process_index() == 0:
    tmp = os.path.join(workdir, EVAL_RESULTS_FILE + '.tmp')
    with open(tmp, 'w') as f:
      json.dump(results, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(workdir, EVAL_RESULTS_FILE))


def evaluate(config, workdir: str, checkpoint_dir: str = '', names=None) -> dict[str, float]:
  """Restores the params of the latest checkpoint of `workdir` (or `checkpoint_dir`: a run or a converted model
  directory) and runs the configured evaluators; results go to `workdir/eval_results.json`.

  `config` must describe the checkpoint's model (eval.py takes it from the run's own config.json).
  """
  source = checkpoint_dir or workdir
  checkpoint_lib.step_dir(source)  # No checkpoint: say so before building anything.
  run = run_lib.build(config, workdir, train=False)
  params = checkpoint_lib.restore_params(
      source, run.abstract_state.params,
      fix=f'Evaluate with the config the checkpoint was written with (eval.py --workdir {source}).')
  suite = evaluators.Suite(run.config, run.model, run.tokenizer, run.mesh, workdir, run.data_dir,
                           functools.partial(run_lib.load_init_from, run))
  results = suite.run(params, names)
  write_eval_results(workdir, results)
  return results
