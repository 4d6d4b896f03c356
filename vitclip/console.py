"""What a person sees: a setup summary, a progress bar with ETA, warnings, the result table — and nothing else.

Every log message (vitclip's and third-party libraries': orbax, jax, TFDS, grain) goes to `<workdir>/<program>.log`;
the terminal shows only warnings and errors of vitclip itself and errors of the others. Only process 0 prints.
"""

import logging as py_logging
import os
import sys

import jax
from absl import logging

from vitclip.models import count_params


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class _TerminalFilter(py_logging.Filter):
  """vitclip's warnings and everyone's errors reach the terminal; INFO chatter (orbax's per-checkpoint lines,
  jax's backend probes) does not."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    if getattr(record, 'file_only', False):  # Also printed for the person (`say`, `warn`): once is enough.
      return False
    ours = os.path.abspath(record.pathname).startswith(_PACKAGE_DIR)
    return record.levelno >= (py_logging.WARNING if ours else py_logging.ERROR)


def setup_logging(workdir: str, program: str):
  """Routes all logging to `workdir/<program>.log` (appended) and only what matters to the terminal."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, f'{program}.log')
  file_handler = py_logging.FileHandler(path)
  file_handler.setFormatter(py_logging.Formatter('%(asctime)s %(levelname)s %(name)s: %(message)s'))
  terminal = py_logging.StreamHandler(sys.stderr)
  terminal.setFormatter(py_logging.Formatter('%(levelname)s: %(message)s'))
  terminal.addFilter(_TerminalFilter())
  root = py_logging.getLogger()
  for handler in list(root.handlers):  # absl's stderr handler shows every INFO line.
    root.removeHandler(handler)
  root.addHandler(file_handler)
  root.addHandler(terminal)
  root.setLevel(py_logging.INFO)
  logging.set_verbosity(logging.INFO)
  logging.use_python_logging(quiet=True)


def _active() -> bool:
  return jax.process_index() == 0


def say(text: str):
  if _active():
    print(text, flush=True)


FILE_ONLY = {'extra': {'file_only': True}}  # logging kwargs: to the log file, not the terminal.


def warn(text: str):
  """A warning for the person at the terminal, and the same line in the log file."""
  logging.warning('%s', text, **FILE_ONLY)
  if _active():
    print(f'Warning: {text}', file=sys.stderr, flush=True)


def print_summary(run, start_step: int, checkpoint_dir: str):
  """A few lines on what is about to run: data, model, loss, devices, evaluation, outputs."""
  c = run.config
  params = count_params(run.abstract_state.params)
  where = f'resuming from step {start_step}' if start_step else 'from scratch'
  evals = ', '.join(c.evals.names) or 'none'
  lines = [
      f'vitclip: training {c.total_steps} steps of {c.batch_size} ({where}) in {run.workdir}',
      f'  data    {c.data.name} (split {c.data.train_split}) from {run.data_dir}',
      f'  model   image {c.model.image.variant} @{c.model.image.image_size}px, text {c.model.text.variant} '
      f'({c.model.text.max_len} tokens), embed {c.model.embed_dim}: {params / 1e6:.1f}M params, {c.model.dtype}',
      f'  loss    {c.loss.kind} ({c.loss.impl}), lr {c.optim.lr:g} {c.optim.schedule}',
      f'  devices {run.mesh.devices.size} x {run.mesh.devices.flat[0].platform} '
      f'{dict(zip(run.mesh.axis_names, run.mesh.devices.shape))}',
      f'  evals   {evals}' + (f' every {c.eval_every} steps and' if c.eval_every else '') + ' at the end',
      f'  output  {checkpoint_dir} (every {c.ckpt_every} steps), metrics.jsonl, tensorboard/, train.log',
  ]
  say('\n'.join(lines))


class _Progress:
  """tqdm bar with ETA on a terminal; one line per logged step otherwise (batch jobs, CI logs)."""

  def __init__(self, start: int, total: int):
    self._bar = None
    self._total = total
    if _active() and sys.stdout.isatty():
      from tqdm import tqdm
      self._bar = tqdm(initial=start, total=total, unit='step', dynamic_ncols=True)

  def update(self, n: int):
    if self._bar is not None:
      self._bar.update(n)

  def log(self, step: int, row: dict):
    if self._bar is not None:
      self._bar.set_postfix(loss=f'{float(row["loss"]):.4f}')
    else:
      say(f'step {step}/{self._total} loss {float(row["loss"]):.4f} lr {float(row["lr"]):.2e} '
          f't {float(row["t"]):.2f} {row["samples_per_s"]:.0f} samples/s')
    logging.info('step %d loss %.4f lr %.2e t %.2f %.0f samples/s', step, row['loss'], row['lr'], row['t'],
                 row['samples_per_s'])

  def close(self):
    if self._bar is not None:
      self._bar.close()
      self._bar = None


def progress_bar(start: int, total: int) -> _Progress:
  return _Progress(start, total)
