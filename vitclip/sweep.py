r"""Studies: a grid of ordinary training runs (cells), each in its own workdir, and one report over them.

  python -m vitclip.sweep --config configs/ablation_shapes.py --workdir DIR            # train, evaluate, report
  python -m vitclip.sweep --config configs/ablation_shapes.py --workdir DIR --print_commands   # for a scheduler
  python -m vitclip.sweep --config configs/ablation_shapes.py --workdir DIR --report_only
  python -m vitclip.sweep --config configs/ablation_b16_memory.py --workdir DIR        # memory only (its config)

A sweep config (configs/ablation_shapes.py declares every field) names a base config file and the overrides held
fixed, the methods (name -> overrides) and the axes method × batch × seed. A cell is

  python train.py --config BASE --workdir DIR/cells/<method>_b<batch>_s<seed> --config.KEY=VALUE ...

with the fixed overrides, the method's, and what the sweep derives per cell: batch_size, seed, total_steps =
examples_seen // batch (the examples seen are held fixed), optim.lr = the base lr × (batch /
lr_reference_batch) ** {none: 0, linear: 1, sqrt: 1/2}, warmup and the log / checkpoint intervals as fractions
of the cell's steps (a fixed warmup in steps would outlast a whole run at large batches; a few checkpoints per
cell let a killed cell resume). So a cell resumes like any run, and a rerun of the sweep skips finished cells
(eval_results.json written and the last checkpoint at total_steps).

Every cell's config is built and validated before the first cell runs: a mistake in any cell stops the sweep
at once with exit status 2. A cell that fails while running is recorded (exit code, last lines of its output)
and the sweep goes on; the sweep then exits with status 1. SIGTERM / SIGINT are passed on to the running cell
(it writes a checkpoint) and no other cell starts.

Per cell the sweep collects the final evaluation (eval_results.json), training samples/s and step time (the
median over the logged intervals of metrics.jsonl after the first, which includes compilation: robust to the
recompilation after a resume), the per-device peak memory of the compiled train step (XLA's memory analysis,
`vitclip.memory`, in the sweep's own process when it has the devices to measure on: the cells run on CPU on its
devices, or it runs on CPU with at least memory_devices simulated devices; else in a subprocess, as simulated
devices must be set before jax starts) and the config diff from the base. DIR receives results.json,
results.csv, report.md (a table per metric: method × batch, seeds averaged) and PNG plots against batch on a
log-2 axis. In memory-only mode (`memory_only` / --memory_only) each cell's train
step is compiled at its real scale on `memory_devices` simulated devices, without data or tokenizer, and nothing
is trained.
"""

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from vitclip import config as config_lib
from vitclip import entry, sweep_report
from vitclip.errors import ConfigError, Preempted

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_PY = os.path.join(REPO_ROOT, 'train.py')

# lr = base lr × (batch / lr_reference_batch) ** power.
LR_RULES = {'none': 0.0, 'linear': 1.0, 'sqrt': 0.5}
SWEEP_FIELDS = ('base', 'base_for', 'overrides', 'methods', 'axes', 'extra_seeds', 'extra_seeds_methods',
                'batches_for', 'examples_seen',
                'lr_rule', 'lr_reference_batch', 'warmup_fraction', 'logs_per_cell', 'ckpts_per_cell',
                'memory_only', 'memory_devices')
AXES = ('method', 'batch', 'seed')
# Config fields the sweep sets for every cell; the fixed and method overrides may not.
DERIVED = ('batch_size', 'seed', 'total_steps', 'optim.lr', 'optim.warmup_steps', 'log_every', 'ckpt_every')

CELL_FILE, MEMORY_FILE, OUTPUT_FILE = sweep_report.CELL_FILE, sweep_report.MEMORY_FILE, sweep_report.OUTPUT_FILE


@dataclasses.dataclass(frozen=True)
class Cell:
  """One training run of the grid: `base` (a config file[:arg]) with `overrides` (flat 'a.b' -> value: the
  fixed ones, the method's, then DERIVED)."""
  name: str
  method: str
  batch: int
  seed: int
  base: str
  overrides: dict

  @property
  def steps(self) -> int:
    return self.overrides['total_steps']

  @property
  def lr(self) -> float:
    return self.overrides['optim.lr']


# ------------------------------------------------------------------------------------------------ configs


_MODULES = {}


def split_spec(spec: str) -> tuple[str, str | None]:
  """'configs/shapes.py:arg' -> ('configs/shapes.py', 'arg'); no ':arg' -> (spec, None)."""
  path, sep, arg = spec.partition('.py:')
  return (path + '.py', arg) if sep else (spec, None)


def config_path(spec: str, field: str) -> str:
  """The spec ('configs/shapes.py:arg') with a path that works from the working directory: as given, else
  from the repository root (so that a sweep config names configs/ files from anywhere)."""
  path, arg = split_spec(spec)
  path = os.path.expanduser(path)
  if not os.path.isabs(path) and not os.path.isfile(path) and os.path.isfile(os.path.join(REPO_ROOT, path)):
    path = os.path.relpath(os.path.join(REPO_ROOT, path))
  if not os.path.isfile(path):
    raise ConfigError(f'{field}={spec!r}: no config file {os.path.abspath(path)}.')
  return path if arg is None else f'{path}:{arg}'


def load_config_file(spec: str, field: str = '--config'):
  """'configs/shapes.py:arg' -> a fresh `get_config(arg)` of that file, as train.py's --config reads it."""
  path, arg = split_spec(config_path(spec, field))
  path = os.path.abspath(path)
  if path not in _MODULES:
    module_spec = importlib.util.spec_from_file_location(f'_sweep_config_{len(_MODULES)}', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    _MODULES[path] = module
  return _MODULES[path].get_config() if arg is None else _MODULES[path].get_config(arg)


def override(config, overrides: dict, where: str):
  """Sets flat 'a.b' keys of ConfigDict `config` as --config.a.b=value does; returns `config`."""
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for part in parents:
      node = node[part] if isinstance(node, ml_collections.ConfigDict) and part in node else None
    if node is None or leaf not in node:
      raise ConfigError(f'{where}: {key!r} is not a config field; see configs/base.py for every field.')
    try:
      node[leaf] = value
    except TypeError as e:
      raise ConfigError(f'{where}: {key}={value!r} does not fit the field ({e}).') from None
  return config


def cell_config(cell: Cell):
  """The cell's config, as `train.py --config BASE --config.KEY=VALUE ...` builds it."""
  return override(load_config_file(cell.base), cell.overrides, f'cell {cell.name}')


def check_sweep(sc, where: str):
  """Raises one ConfigError listing every bad field of the sweep config `sc` (each named, after `where`)."""
  problems = _shape_problems(sc) or _grid_problems(sc)
  if problems:
    raise ConfigError('\n'.join(f'{where}: {p}' for p in problems))


def _shape_problems(sc) -> list[str]:
  """The fields, the axes and the integers the grid is computed from."""
  missing = [f for f in SWEEP_FIELDS if f not in sc]
  unknown = [f for f in sc if f not in SWEEP_FIELDS]
  if missing or unknown:
    return ['; '.join([f'missing field {f!r}' for f in missing] + [f'unknown field {f!r}' for f in unknown]) +
            f'. The fields are {", ".join(SWEEP_FIELDS)} (configs/ablation_shapes.py declares each).']
  problems = [] if sorted(sc.axes) == sorted(AXES) else [f'axes has {sorted(sc.axes)}; give exactly {AXES}.']
  for field in ('examples_seen', 'lr_reference_batch', 'logs_per_cell', 'ckpts_per_cell'):
    if not _is_int(sc[field]) or sc[field] < 1:
      problems.append(f'{field}={sc[field]!r} must be an integer >= 1.')
  return problems


def _grid_problems(sc) -> list[str]:
  methods = tuple(sc.axes.method)
  problems = [f'axes.method: {m!r} is not in methods ({", ".join(sc.methods)}).' for m in methods
              if m not in sc.methods]
  problems += [f'axes.method: {m!r}: use letters, digits, - and _ (it names a directory).' for m in methods
               if not re.fullmatch(r'[A-Za-z0-9_-]+', m)]
  for field in ('batches_for', 'base_for', 'extra_seeds_methods'):  # May name methods the axes leave out.
    problems += [f'{field}: {m!r} is not in methods ({", ".join(sc.methods)}).' for m in sc[field]
                 if m not in sc.methods]
  batches = {b for m in methods for b in sc.batches_for.get(m, sc.axes.batch)}
  problems += [f'axes.batch: {b!r} is not a positive integer.' for b in batches if not _is_int(b) or b < 1]
  batches = sorted(b for b in batches if _is_int(b) and b >= 1)
  undivided = [b for b in batches if sc.examples_seen % b]
  if undivided:
    problems.append(f'axes.batch: {", ".join(map(str, undivided))} do not divide examples_seen='
                    f'{sc.examples_seen}; every cell sees the same examples, so use batches that divide it (or '
                    'change examples_seen).')
  problems += [f'axes.seed: {s!r} is not an integer.' for s in sc.axes.seed if not _is_int(s)]
  problems += [f'extra_seeds: batch {b!r} is not in the grid {batches}.' for b in sc.extra_seeds
               if b not in batches]
  if sc.lr_rule not in LR_RULES:
    problems.append(f'lr_rule={sc.lr_rule!r} is unknown; use one of {tuple(LR_RULES)}.')
  if not 0 <= sc.warmup_fraction < 1:
    problems.append(f'warmup_fraction={sc.warmup_fraction!r} must be in [0, 1).')
  if not _is_int(sc.memory_devices) or sc.memory_devices < 0:
    problems.append(f'memory_devices={sc.memory_devices!r} must be an integer >= 0 (0: the devices of a run).')
  for field, table in [('overrides', sc.overrides)] + [(f'methods.{m}', sc.methods[m]) for m in sc.methods]:
    problems += [f'{field}: {k!r} is set by the sweep for every cell; remove it (see axes, examples_seen, '
                 'lr_rule, warmup_fraction, logs_per_cell, ckpts_per_cell).' for k in table if k in DERIVED]
  return problems


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def make_cells(sc) -> list[Cell]:
  """The grid: axes.method × (batches_for[method] or axes.batch) × (axes.seed + extra_seeds[batch], the extra
  seeds only for the methods in extra_seeds_methods when it names any)."""
  cells = []
  for method in sc.axes.method:
    extra = sc.extra_seeds if method in sc.extra_seeds_methods or not sc.extra_seeds_methods else {}
    for batch in sc.batches_for.get(method, sc.axes.batch):
      for seed in dict.fromkeys(tuple(sc.axes.seed) + tuple(extra.get(batch, ()))):
        cells.append(make_cell(sc, method, batch, seed))
  return cells


def make_cell(sc, method: str, batch: int, seed: int) -> Cell:
  base = config_path(sc.base_for.get(method, sc.base), 'base_for' if method in sc.base_for else 'base')
  fixed = {**dict(sc.overrides.items()), **dict(sc.methods[method].items())}
  name = f'{method}_b{batch}_s{seed}'
  base_lr = override(load_config_file(base, 'base'), fixed, f'cell {name}').optim.lr
  steps = sc.examples_seen // batch
  derived = {
      'batch_size': batch, 'seed': seed, 'total_steps': steps,
      'optim.lr': base_lr * (batch / sc.lr_reference_batch) ** LR_RULES[sc.lr_rule],
      'optim.warmup_steps': round(sc.warmup_fraction * steps),
      'log_every': max(1, steps // sc.logs_per_cell), 'ckpt_every': -(-steps // sc.ckpts_per_cell)}
  return Cell(name, method, batch, seed, base, {**fixed, **derived})


def validate_cells(cells: list[Cell], num_devices: int, check_data: bool):
  """Builds and validates every cell's config (`vitclip.config.validate`, as train.py does before its first
  step); raises the ConfigError of the first cell with a problem, naming the cell.

  Validation costs about half a second per cell (it traces the model's init), so cells that differ only in
  the seed, which nothing validates, are checked once; and one cell per method, then one per batch, go first:
  a mistake in a method's or a batch's settings surfaces within seconds.
  """
  firsts = {}
  for i, cell in enumerate(cells):
    firsts.setdefault(('method', cell.method), i)
    firsts.setdefault(('batch', cell.batch), i)
  order = list(dict.fromkeys([*firsts.values(), *range(len(cells))]))
  checked = set()
  for i in order:
    cell = cells[i]
    key = json.dumps([cell.base, {k: v for k, v in cell.overrides.items() if k != 'seed'}], default=str)
    if key in checked:
      continue
    checked.add(key)
    try:
      config_lib.validate(config_lib.resolve(cell_config(cell)), None, num_devices=num_devices,
                          check_data=check_data, train=True)
    except ConfigError as e:
      lines = [line.removeprefix(f'cell {cell.name}: ') for line in str(e).splitlines()]
      raise ConfigError('\n'.join(f'cell {cell.name}: {line}' for line in lines)) from None


def cell_dir(workdir: str, cell: Cell) -> str:
  return os.path.join(workdir, 'cells', cell.name)


def train_command(cell: Cell, workdir: str, executable: str | None = None) -> list[str]:
  """The cell's train.py command line: as printed (`python train.py ...`, paths from the working directory),
  or as run by `executable`."""
  program = [executable, TRAIN_PY] if executable else ['python', os.path.relpath(TRAIN_PY)]
  return [*program, '--config', cell.base, '--workdir', cell_dir(workdir, cell)] + [
      f'--config.{k}={v if isinstance(v, str) else repr(v)}' for k, v in cell.overrides.items()]


def config_diff(cell: Cell) -> dict:
  """{flat key: [base value, cell value]} for every field the cell changes."""
  from vitclip import run as run_lib  # pylint: disable=g-import-not-at-top  (the model stack, once needed)
  base, now = run_lib.flat(load_config_file(cell.base)), run_lib.flat(cell_config(cell))
  return {k: [base.get(k), now[k]] for k in now if base.get(k) != now[k]}


# ------------------------------------------------------------------------------------------------ running


def is_finished(cell: Cell, workdir: str) -> bool:
  """eval_results.json written and the last checkpoint at the cell's total_steps."""
  from vitclip.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  steps = Checkpointer.steps_in(workdir)
  return os.path.isfile(os.path.join(workdir, 'eval_results.json')) and bool(steps) and steps[-1] == cell.steps


class ForwardSignals:
  """SIGTERM / SIGINT stop the sweep: passed on to the running cell (it finishes its step and writes a
  checkpoint; a second Ctrl-C stops it at once), and no further cell starts. Cells run in their own process
  group, so a terminal's Ctrl-C reaches them through here, once."""

  def __init__(self):
    self.signum, self.child, self._previous = None, None, {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread: no handlers.
        pass
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False

  def _handle(self, signum, frame):
    del frame
    self.signum = self.signum or signum
    if self.child is not None and self.child.poll() is None:
      self.child.send_signal(signum)


def run_command(cmd: list[str], directory: str, signals: ForwardSignals, finished, status_file: str) -> dict:
  """Runs `cmd` in its own process group (output appended to directory/OUTPUT_FILE; signals passed on); returns
  and writes to directory/status_file the record {exit_code, seconds, status: done | stopped | failed[, error]}.
  finished: () -> bool, whether the command's outputs are complete."""
  os.makedirs(directory, exist_ok=True)
  start = time.time()
  with open(os.path.join(directory, OUTPUT_FILE), 'ab') as out:
    signals.child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, process_group=0)
    code = signals.child.wait()
    signals.child = None
  record = {'exit_code': code, 'seconds': round(time.time() - start, 1)}
  if finished():
    record['status'] = 'done'
  else:
    record.update(status='stopped' if signals.signum else 'failed', error=failure_text(directory, code))
  write_json(os.path.join(directory, status_file), record)
  return record


def run_cell(cell: Cell, sweep_dir: str, signals: ForwardSignals) -> dict:
  """Runs the cell's train.py (output appended to OUTPUT_FILE); returns and writes its CELL_FILE record."""
  workdir = cell_dir(sweep_dir, cell)
  return run_command(train_command(cell, sweep_dir, sys.executable), workdir, signals,
                     lambda: is_finished(cell, workdir), CELL_FILE)


def failure_text(workdir: str, code: int) -> str:
  """'exit 3: <its Error: line, or its last lines>'."""
  how = f'killed by {signal.Signals(-code).name}' if code < 0 else f'exit {code}'
  try:
    with open(os.path.join(workdir, OUTPUT_FILE), errors='replace') as f:
      lines = [line.strip() for line in f.read()[-20_000:].splitlines() if line.strip()]
  except OSError:
    lines = []
  errors = [line for line in lines if line.startswith('Error:')]
  return f'{how}: ' + (' | '.join(errors[-3:] or lines[-3:]) or 'no output')


def device_count(env) -> int:
  """The devices a cell's train.py will see. The sweep itself never starts an accelerator backend (a TPU
  admits one process, a GPU process takes most of the memory), so unless cells run on CPU a subprocess counts."""
  if env.get('JAX_PLATFORMS', '') == 'cpu':
    return jax.device_count()
  out = subprocess.run([sys.executable, '-c', 'import jax; print(jax.device_count())'], env=env,
                       capture_output=True, text=True, check=False)
  if out.returncode:
    raise ConfigError(f'could not start jax to count the devices: {out.stderr.strip().splitlines()[-1:]}')
  return int(out.stdout.split()[-1])


# ------------------------------------------------------------------------------------------------ memory


def memory_config(cell: Cell, workdir: str):
  """What a cell's memory is measured on: the config the run wrote (config.json: its exact vocabulary), else the
  cell's config as the run will write it: resolved, with the vocabulary the run will have (a BPE it trains has
  tokenizer.vocab_size tokens). So a measurement made before the run wrote its config (memory-only, or a run
  that failed early) stands once it has, unless the run's config turned out different."""
  path = os.path.join(workdir, config_lib.CONFIG_FILE)
  if os.path.isfile(path):
    return config_lib.from_json(path, load_config_file(cell.base))
  config = config_lib.resolve(cell_config(cell))
  if not config.tokenizer.path:
    config.model.text.vocab_size = config.tokenizer.vocab_size
  return config


def digest(config) -> str:
  return hashlib.sha256(config.to_json_best_effort(sort_keys=True).encode()).hexdigest()[:16]


def needs_memory(cell: Cell, workdir: str, devices: int) -> bool:
  """No usable measurement of this config on this many devices (0: a run's own) yet."""
  saved = sweep_report.read_json(os.path.join(workdir, MEMORY_FILE)) or {'error': 'none'}
  return ('error' in saved or saved.get('requested_devices') != devices
          or saved.get('digest') != digest(memory_config(cell, workdir)))


def measure_cells(cells: list[Cell], workdir: str, devices: int):
  """(In a process with the devices to measure on: see `measure_memory`.) Compiles each cell's train step and
  writes its MEMORY_FILE."""
  for i, cell in enumerate(cells):
    directory = cell_dir(workdir, cell)
    os.makedirs(directory, exist_ok=True)
    line = measure_into(memory_config(cell, directory), devices, directory, cell.name)
    print(f'{_counter(i, len(cells))} {cell.name:<24s} {line}', flush=True)


def measure_into(config, devices: int, directory: str, name: str) -> str:
  """Compiles the train step of `config` on `devices` devices (0: all) and writes directory/MEMORY_FILE (an
  'error' record when that fails: the caller goes on with the next one); returns a one-line summary."""
  from vitclip import memory, run as run_lib  # pylint: disable=g-import-not-at-top
  result = {'requested_devices': devices, 'digest': digest(config)}
  try:
    run = run_lib.build(config, None, devices=jax.devices()[:devices] if devices else None, train=False,
                        check_data=False, with_tokenizer=False)
    result.update(memory.train_step_memory(run))
    line = f'{format_bytes(result["peak"])} per device on {result["devices"]} ({result["compile_s"]:.0f} s to compile)'
  except Exception as e:  # pylint: disable=broad-except  # Recorded; the others are still measured.
    logging.exception('Measuring the memory of %s failed', name)
    result['error'] = f'{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ""}'
    line = f'memory not measured: {result["error"]}'
  write_json(os.path.join(directory, MEMORY_FILE), result)
  return line


def measure_memory(argv: list[str], cells: list[Cell], workdir: str, devices: int):
  """Measures `cells` (their MEMORY_FILEs) on `devices` devices (0: a run's own): in this process when it has
  them (`measures_here`: no second jax and model stack to start), else in a fresh process (`memory_subprocess`)."""
  if measures_here(devices):
    measure_cells(cells, workdir, devices)
  else:
    memory_subprocess(argv, cells, workdir, devices)


def measures_here(devices: int) -> bool:
  """Whether this process has the devices to measure on: the cells run on CPU on the devices it has (0; the
  compiled step is the one they run), or it runs jax on CPU only with at least `devices` devices (simulated ones,
  as XLA_FLAGS set them when it started)."""
  if devices == 0:
    return os.environ.get('JAX_PLATFORMS', '') == 'cpu'
  return jax.config.jax_platforms == 'cpu' and jax.device_count() >= devices


def memory_subprocess(argv: list[str], cells: list[Cell], workdir: str, devices: int):
  """Measures `cells` in one fresh process (`--measure_cells`): the simulated device count must be set before
  jax starts, and the sweep's own process stays off the accelerator."""
  if not cells:
    return
  cmd = [sys.executable, '-m', 'vitclip.sweep', *argv, f'--measure_cells={",".join(c.name for c in cells)}']
  code = subprocess.run(cmd, check=False).returncode
  if code:
    for cell in cells:
      directory = cell_dir(workdir, cell)
      if needs_memory(cell, directory, devices):
        write_json(os.path.join(directory, MEMORY_FILE), {'error': f'the measuring process exited with {code}'})


def write_json(path: str, data):
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(data, f, indent=1, default=str)
  os.replace(tmp, path)


def collect(cell: Cell, workdir: str, sc) -> dict:
  """The results.json record of a cell (sweep_report.read_cell), from its directory under `workdir`."""
  directory = cell_dir(workdir, cell)
  return sweep_report.read_cell(cell, directory, memory_only=sc.memory_only, finished=is_finished(cell, directory),
                                config_diff=config_diff(cell), command=shlex.join(train_command(cell, workdir)))


def format_bytes(n) -> str:
  return f'{n / 2**30:.2f} GiB' if n >= 2**30 else f'{n / 2**20:.1f} MiB'


def _counter(i: int, n: int) -> str:
  return f'[{i + 1:>{len(str(n))}}/{n}]'


# ------------------------------------------------------------------------------------------------ the sweep


def run_sweep(sc, where: str, workdir: str, argv: list[str], *, print_commands=False, report_only=False) -> int:
  """Validates, then trains (or, memory-only, compiles) every unfinished cell, measures memory, writes the
  outputs; returns the exit status (1 when a cell failed)."""
  check_sweep(sc, where)
  cells = make_cells(sc)
  if report_only:
    records = [collect(c, workdir, sc) for c in cells]
    print(sweep_report.write(records, sc, where, workdir))
    return 0
  devices = sc.memory_devices if sc.memory_only and sc.memory_devices else device_count(os.environ)
  validate_cells(cells, devices, check_data=not sc.memory_only)
  if print_commands:
    print('\n'.join(shlex.join(train_command(c, workdir)) for c in cells))
    return 0
  print(f'vitclip sweep: {len(cells)} cells of {where} in {os.path.join(workdir, "cells")} '
        f'({"memory only, " + str(devices) + " devices" if sc.memory_only else "training"}); log '
        f'{os.path.join(workdir, "sweep.log")}', flush=True)
  signals = None
  if not sc.memory_only:
    with ForwardSignals() as signals:
      train_cells(cells, workdir, signals)
  if signals is None or not signals.signum:
    measure_memory(argv, [c for c in cells if needs_memory(c, cell_dir(workdir, c), sc.memory_devices)
                          and (sc.memory_only or os.path.isdir(cell_dir(workdir, c)))],
                   workdir, sc.memory_devices)
  records = [collect(c, workdir, sc) for c in cells]
  print(sweep_report.write(records, sc, where, workdir), flush=True)
  if signals is not None and signals.signum:
    raise Preempted(f'Stopped by {signal.Signals(signals.signum).name}: the running cell wrote a checkpoint. '
                    'Rerun the same command to continue.', signals.signum)
  return int(any(r['status'] not in ('done', 'compiled') for r in records))


def train_cells(cells: list[Cell], workdir: str, signals: ForwardSignals):
  """Runs the unfinished cells one after another, a progress line each, until done or stopped."""
  for i, cell in enumerate(cells):
    directory = cell_dir(workdir, cell)
    head = f'{_counter(i, len(cells))} {cell.name:<24s}'
    if is_finished(cell, directory):
      print(f'{head} finished before: skipped', flush=True)
      continue
    if signals.signum:
      return
    print(f'{head} {cell.steps} steps of {cell.batch}, lr {cell.lr:.3g} ...', end=' ', flush=True)
    record = run_cell(cell, workdir, signals)
    if record['status'] == 'done':
      metrics = sweep_report.read_json(os.path.join(directory, 'eval_results.json')) or {}
      shown = ', '.join(f'{k} {v:.4f}' for k, v in list(metrics.items())[:2])
      print(f'done in {record["seconds"] / 60:.1f} min{": " + shown if shown else ""}', flush=True)
    else:
      print(f'{record["status"].upper()} ({record["error"]}); output: '
            f'{os.path.join(directory, OUTPUT_FILE)}', flush=True)


# ------------------------------------------------------------------------------------------------ command line


def define_flags():
  """The command line's flags, defined only when this module runs as the program: importing it (tests, other
  tools with their own --config) must not claim absl's global flag names."""
  global _CONFIG, _WORKDIR, _PRINT, _REPORT_ONLY, _MEMORY_ONLY, _MEASURE
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Sweep config file (configs/ablation_shapes.py).',
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of the study: cells/<name>/ and the report.')
  _PRINT = flags.DEFINE_bool('print_commands', False, 'Print one train.py command per cell and run nothing.')
  _REPORT_ONLY = flags.DEFINE_bool('report_only', False, 'Rewrite the report from the cell directories.')
  _MEMORY_ONLY = flags.DEFINE_bool('memory_only', False, 'Compile each cell at its real scale and report memory '
                                   'only (as config field memory_only).')
  _MEASURE = flags.DEFINE_list('measure_cells', None, 'Internal: measure these cells in this process.')
  flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  workdir = _WORKDIR.value
  with entry.reported_errors(workdir, 'sweep'):
    sc, where = _CONFIG.value, config_flags.get_config_filename(flags.FLAGS['config'])
    if _MEMORY_ONLY.value:
      with sc.unlocked():
        sc.memory_only = True
    if _MEASURE.value is not None:
      if sc.memory_devices:
        from vitclip import memory  # pylint: disable=g-import-not-at-top
        memory.set_device_count(sc.memory_devices)
      wanted = set(_MEASURE.value)
      measure_cells([c for c in make_cells(sc) if c.name in wanted], workdir, sc.memory_devices)
      return
    # The sweep reads configs and validates on CPU; only the cells (and memory measurements) use accelerators.
    jax.config.update('jax_platforms', 'cpu')
    argv = [a for a in sys.argv[1:] if not a.startswith(('--measure_cells', '--print_commands', '--report_only'))]
    code = run_sweep(sc, where, workdir, argv, print_commands=_PRINT.value, report_only=_REPORT_ONLY.value)
  sys.exit(code)


if __name__ == '__main__':
  define_flags()
  if REPO_ROOT not in sys.path:  # configs/ is a top-level package next to vitclip/ (sweep and base configs).
    sys.path.insert(0, REPO_ROOT)
  app.run(main, flags_parser=entry.parse_flags)
