"""Metrics to `workdir/metrics.jsonl` and TensorBoard event files; only process 0 writes."""

import json
import os
import sys

import jax
import numpy as np


class MetricsWriter:
  """Appends to metrics.jsonl; on resume from `resume_step`, rows logged after that step by the interrupted run
  are dropped first, so the file reads as one uninterrupted run."""

  def __init__(self, workdir: str, resume_step: int = 0):
    self.active = jax.process_index() == 0
    self._jsonl = self._tb = None
    if self.active:
      path = os.path.join(workdir, 'metrics.jsonl')
      _truncate_after(path, resume_step)
      self._jsonl = open(path, 'a')
      self._tb = _summary_writer_class()(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, metrics: dict[str, float]):
    """metrics: flat `group/name` -> scalar. One JSON line per call."""
    if not self.active:
      return
    row = {'step': int(step), **{k: _to_float(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(row) + '\n')
    self._jsonl.flush()
    for k, v in row.items():
      if k != 'step':
        self._tb.add_scalar(k, v, step)
    self._tb.flush()

  def close(self):
    if self.active:
      self._jsonl.close()
      self._tb.close()


def _summary_writer_class():
  """tensorboardX's SummaryWriter (a pure-Python event writer; no TensorFlow needed).

  tensorboardX imports torch when it is installed (3 s), only to accept torch tensors as values; vitclip writes
  floats, so a torch that is not already loaded is hidden from that import.
  """
  if 'torch' in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules['torch'] = None  # `import torch` raises ImportError while this entry is None.
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules['torch']
  return SummaryWriter


def _truncate_after(path: str, step: int):
  if not os.path.exists(path):
    return
  with open(path) as f:
    rows = [line for line in f if line.strip() and _row_step(line) <= step]
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.writelines(rows)
  os.replace(tmp, path)


def _row_step(line: str) -> int:
  try:
    return int(json.loads(line)['step'])
  except (ValueError, KeyError):
    return 2**62  # A line cut short by a kill: dropped like a step after the checkpoint.


def _to_float(x) -> float:
  return float(np.asarray(x))
