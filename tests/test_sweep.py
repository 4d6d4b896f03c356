"""vitclip.sweep: the grid and what it derives, cells as ordinary resumable runs, a rerun that skips finished
cells, a killed cell recorded and a stopped one resuming to the uninterrupted numbers, the outputs holding the
cells' numbers, mistakes stopping before any cell runs, memory-only mode equal to measuring the step directly;
vitclip.memory.

The grid is 2 methods × 2 batches of tests/tiny.py, 128 examples per cell. One study of two of its cells (clip at
batch 16, siglip at 32: every method and every batch once, in different rows and columns of the report's tables)
runs once for the module, interrupted on the way: clip_b16_s0's train.py is killed, the rerun is stopped while the
cell trains, the third run finishes it. That cell is tests/tiny.py as it is (the grid's derived settings equal its
own), run on the session's 8 devices: the conftest's uninterrupted `tiny_run` of the same config is its reference,
and its programs are already in the session's compilation cache. Each train.py or sweep process costs seconds, so
the module starts few: the cell is killed as it starts, and only the stopped run, which is about the sweep
command's signal handling, is a sweep process; the other two run the same `run_sweep` here.
"""

import contextlib
import csv
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import pytest

from configs import ablation_shapes
from tests import tiny
from vitclip import config as config_lib
from vitclip import memory, run as run_lib, sweep, sweep_report
from vitclip.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = 128  # batch 16: 8 steps, checkpoints at 4 and 8, warmup 2 (tests/tiny.py's own); batch 32: 4 steps.
WARMUP_FRACTION = 0.25

SWEEP_CONFIG = '''
from configs import ablation_shapes


def get_config(arg=None):
  """arg: the methods, comma-separated (default clip,siglip)."""
  c = ablation_shapes.get_config()
  c.base = {base!r}
  c.overrides = ablation_shapes.dotted({{'evals.names': ('zeroshot',)}})
  c.methods = {{m: ablation_shapes.dotted(ablation_shapes.METHODS[m]) for m in ('clip', 'siglip')}}
  c.axes.method = tuple(arg.split(',')) if arg else ('clip', 'siglip')
  c.axes.batch = (16, 32)
  c.extra_seeds = {{}}
  c.extra_seeds_methods = ()
  c.batches_for = {batches_for!r}
  c.examples_seen = {examples}
  c.lr_reference_batch = 16
  c.warmup_fraction = {warmup_fraction}
  c.logs_per_cell = 8
  c.ckpts_per_cell = 2
  return c
'''


def write_sweep_config(directory, data_dir: str, batches_for: dict) -> str:
  path = directory / 'tiny_sweep.py'
  path.write_text(SWEEP_CONFIG.format(base=f'tests/tiny.py:{data_dir}', examples=EXAMPLES, batches_for=batches_for,
                                       warmup_fraction=WARMUP_FRACTION))
  return str(path)


@pytest.fixture(scope='module')
def sweep_config(tiny_data_dir, tmp_path_factory):
  """The whole 2 x 2 grid (nothing trains all of it)."""
  return write_sweep_config(tmp_path_factory.mktemp('sweep_config'), tiny_data_dir, {})


@pytest.fixture(scope='module')
def study_config(tiny_data_dir, tmp_path_factory):
  """The study's two cells of the grid: clip_b16_s0 and siglip_b32_s0."""
  return write_sweep_config(tmp_path_factory.mktemp('study_config'), tiny_data_dir, {'clip': (16,), 'siglip': (32,)})


def run_sweep(config: str, workdir: str, *args: str, wait: bool = True):
  """`python -m vitclip.sweep`; its cells see the session's 8 CPU devices (tests/conftest.py)."""
  cmd = [sys.executable, '-m', 'vitclip.sweep', '--config', config, '--workdir', workdir, *args]
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def sweep_here(config: str, workdir: str, **modes) -> tuple[int, str, str]:
  """`vitclip.sweep.run_sweep` in this process, as the command calls it: (exit status, stdout, '')."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    code = sweep.run_sweep(sweep.load_config_file(config), config, workdir, [], **modes)
  return code, out.getvalue(), ''


def children(pid: int) -> list[int]:
  """The processes `pid` (any of its threads) started."""
  found = []
  for task in os.listdir(f'/proc/{pid}/task'):
    try:
      with open(f'/proc/{pid}/task/{task}/children') as f:
        found += map(int, f.read().split())
    except OSError:  # A thread that ended meanwhile.
      pass
  return found


def cell_process(parent: int, cell_workdir: str) -> int | None:
  """The running train.py of `cell_workdir` among the children of `parent`, if any."""
  for child in children(parent):
    try:
      with open(f'/proc/{child}/cmdline', 'rb') as f:
        args = f.read().decode().split('\0')
    except OSError:  # Exited meanwhile.
      continue
    if cell_workdir in args:
      return child
  return None


def catches_sigterm(pid: int) -> bool:
  """Whether `pid` has a SIGTERM handler (its SigCgt mask in /proc/PID/status)."""
  with open(f'/proc/{pid}/status') as f:
    caught = int(next(line for line in f if line.startswith('SigCgt:')).split()[1], 16)
  return bool(caught >> (signal.SIGTERM - 1) & 1)


def wait_for(ready, deadline_s: float = 300):
  deadline = time.time() + deadline_s
  while not ready():
    assert time.time() < deadline, 'timed out'
    time.sleep(0.02)


def mtimes(directory) -> dict[str, int]:
  return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, files in os.walk(directory) for f in files}


@pytest.fixture(scope='module')
def study(study_config, tiny_run, tmp_path_factory):
  """(After `tiny_run`: its compiled programs are clip_b16_s0's.) The study, run three times: in this process,
  clip_b16_s0's train.py is killed (SIGKILL) as it starts (the sweep goes on: siglip_b32_s0 trains, both are
  measured); the command is stopped (SIGTERM to the sweep) while the cell trains again; in this
  process, the third run finishes it. Returns {'workdir', and per run 'killed' / 'stopped' / 'finished': exit
  code, stdout, stderr, each cell's status in results.json, and what the cells' directories held}."""
  workdir = str(tmp_path_factory.mktemp('study'))
  cells = os.path.join(workdir, 'cells')
  clip = os.path.join(cells, 'clip_b16_s0')

  def output():
    with open(os.path.join(clip, sweep.OUTPUT_FILE)) as f:
      return f.read()

  def observe(code, stdout, stderr):
    return {'code': code, 'stdout': stdout, 'stderr': stderr, 'cell_output': output(),
            'status': {r['name']: r['status'] for r in read_json(os.path.join(workdir, 'results.json'))['cells']},
            'clip_finished': os.path.exists(os.path.join(clip, 'eval_results.json')),
            'clip_configured': os.path.exists(os.path.join(clip, config_lib.CONFIG_FILE)),
            'clip_memory': mtimes(clip).get(os.path.join(clip, sweep.MEMORY_FILE)),
            'siglip_files': mtimes(os.path.join(cells, 'siglip_b32_s0'))}

  def kill_once_started():  # The sweep runs in this process, so the cell is this process's child.
    wait_for(lambda: cell_process(os.getpid(), clip) is not None)
    os.kill(cell_process(os.getpid(), clip), signal.SIGKILL)

  runs = {'workdir': workdir}
  killer = threading.Thread(target=kill_once_started, daemon=True)
  killer.start()
  runs['killed'] = observe(*sweep_here(study_config, workdir))
  killer.join(timeout=10)

  proc = run_sweep(study_config, workdir, wait=False)
  before = len(output())

  def training():  # Its summary printed (right before the step compiles) and train.py's SIGTERM handler set.
    assert proc.poll() is None, proc.communicate()
    cell = cell_process(proc.pid, clip)
    return cell is not None and '(from scratch)' in output()[before:] and catches_sigterm(cell)

  wait_for(training)
  proc.send_signal(signal.SIGTERM)
  stdout, stderr = proc.communicate(timeout=300)
  runs['stopped'] = observe(proc.returncode, stdout, stderr)
  runs['finished'] = observe(*sweep_here(study_config, workdir))
  return runs


def cells_of(sweep_config):
  return {c.name: c for c in sweep.make_cells(sweep.load_config_file(sweep_config))}


def read_json(path):
  with open(path) as f:
    return json.load(f)


def losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {r['step']: r['loss'] for r in map(json.loads, f) if 'loss' in r}


# ------------------------------------------------------------------------------------------------ the grid


def test_grid_derives_steps_lr_warmup_and_intervals(sweep_config):
  sc = sweep.load_config_file(sweep_config)
  cells = sweep.make_cells(sc)
  assert [c.name for c in cells] == ['clip_b16_s0', 'clip_b32_s0', 'siglip_b16_s0', 'siglip_b32_s0']
  base_lr = tiny.tiny_config('').optim.lr
  for c in cells:
    steps = EXAMPLES // c.batch
    assert c.overrides['total_steps'] == steps and c.overrides['batch_size'] == c.batch
    assert c.lr == pytest.approx(base_lr * (c.batch / 16) ** 0.5)  # lr_rule 'sqrt' from batch 16
    assert c.overrides['optim.warmup_steps'] == round(WARMUP_FRACTION * steps)
    assert c.overrides['log_every'] == max(1, steps // 8) and c.overrides['ckpt_every'] == -(-steps // 2)
    assert c.overrides['loss.kind'] == {'clip': 'softmax', 'siglip': 'sigmoid'}[c.method]
  with sc.unlocked():
    sc.lr_rule, sc.extra_seeds, sc.batches_for = 'linear', {32: (1, 2)}, {'siglip': (32,)}
  cells = sweep.make_cells(sc)
  assert [c.name for c in cells] == ['clip_b16_s0', 'clip_b32_s0', 'clip_b32_s1', 'clip_b32_s2', 'siglip_b32_s0',
                                     'siglip_b32_s1', 'siglip_b32_s2']
  assert cells[1].lr == pytest.approx(2 * base_lr)
  with sc.unlocked():
    sc.extra_seeds_methods = ('siglip',)  # Only SigLIP gets the extra seeds.
  assert [c.name for c in sweep.make_cells(sc)] == ['clip_b16_s0', 'clip_b32_s0', 'siglip_b32_s0', 'siglip_b32_s1',
                                                    'siglip_b32_s2']


def test_print_commands_runs_nothing(sweep_config, tmp_path, capsys):
  sc = sweep.load_config_file(sweep_config)
  assert sweep.run_sweep(sc, sweep_config, str(tmp_path), [], print_commands=True) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 4 and all(line.startswith('python train.py --config tests/tiny.py:') for line in lines)
  assert f'--workdir {tmp_path}/cells/siglip_b32_s0 ' in lines[3] and '--config.loss.kind=sigmoid' in lines[3]
  assert not os.path.exists(tmp_path / 'cells')


def test_mistakes_stop_before_any_cell_runs(sweep_config, tmp_path):
  proc = run_sweep(sweep_config, str(tmp_path), "--config.axes.method=('clip','clipp')")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      f"Error: {sweep_config}: axes.method: 'clipp' is not in methods (clip, siglip)."]
  assert not os.path.exists(tmp_path / 'cells')

  def error(**fields):
    sc = tiny.override(sweep.load_config_file(sweep_config), **fields)
    with pytest.raises(ConfigError) as e:
      sweep.check_sweep(sc, 'S')
      sweep.validate_cells(sweep.make_cells(sc), jax.device_count(), check_data=True)
    return str(e.value)

  assert "S: lr_rule='cubic' is unknown" in error(lr_rule='cubic')
  assert 'S: axes.batch: 48 do not divide examples_seen=128' in error(**{'axes.batch': (16, 48)})
  assert "S: overrides: 'batch_size' is set by the sweep" in error(overrides={'batch_size': 8})
  assert "cell clip_b16_s0: 'loss.kindd' is not a config field" in error(
      **{'methods.clip': ablation_shapes.dotted({'loss.kindd': 'x'})})
  # The config of a later cell: validated before anything runs, the cell named.
  assert error(**{'methods.siglip': ablation_shapes.dotted({'loss.impl': 'ringg'})}).startswith(
      "cell siglip_b16_s0: config.loss.impl='ringg' is unknown")
  assert error(**{'axes.batch': (16, 4), 'examples_seen': 32}).startswith(
      'cell clip_b4_s0: config.batch_size=4 is not divisible by the 8 data-parallel devices')


# ------------------------------------------------------------------------------------------------ the study


def test_cells_are_the_printed_train_commands(study, study_config):
  workdir = study['workdir']
  for name, cell in cells_of(study_config).items():
    assert f'{name}' in study['killed']['stdout']
    saved = run_lib.flat(read_json(os.path.join(workdir, 'cells', name, 'config.json')))
    wanted = run_lib.flat(config_lib.resolve(sweep.cell_config(cell)))
    tokenizer_fields = ('model.text.vocab_size', 'model.text.eos_id', 'model.text.pad_id')  # Set by its BPE.
    assert {k: v for k, v in saved.items() if k not in tokenizer_fields} == {
        k: v for k, v in wanted.items() if k not in tokenizer_fields}


def test_outputs_hold_each_cells_numbers(study, study_config):
  workdir = study['workdir']
  results = read_json(os.path.join(workdir, 'results.json'))
  assert results['held_fixed']['examples_seen'] == EXAMPLES and results['held_fixed']['lr_rule'] == 'sqrt'
  records = {r['name']: r for r in results['cells']}
  assert sorted(records) == sorted(cells_of(study_config)) == ['clip_b16_s0', 'siglip_b32_s0']
  with open(os.path.join(workdir, 'results.csv')) as f:
    rows = {row['name']: row for row in csv.DictReader(f)}
  with open(os.path.join(workdir, 'report.md')) as f:
    report = f.read()
  for name, r in records.items():
    cell_dir = os.path.join(workdir, 'cells', name)
    assert r['status'] == 'done' and r['steps'] == EXAMPLES // r['batch']
    assert r['metrics'] == read_json(os.path.join(cell_dir, 'eval_results.json'))
    with open(os.path.join(cell_dir, 'metrics.jsonl')) as f:
      rates = [row['samples_per_s'] for row in map(json.loads, f) if 'samples_per_s' in row]
    assert len(rates) == r['steps'] and r['samples_per_s'] == statistics.median(rates[1:])
    assert r['step_time_s'] == pytest.approx(r['batch'] / r['samples_per_s'])
    mem = read_json(os.path.join(cell_dir, 'memory.json'))
    # memory_devices 0: measured on the devices the cells ran on (the session's 8).
    assert r['peak_memory_bytes'] == mem['peak'] > 0 and mem['devices'] == jax.device_count() == 8
    if r['batch'] == 32:  # tests/tiny.py trains 8 steps of 16.
      assert r['config_diff']['batch_size'] == [16, 32] and r['config_diff']['total_steps'] == [8, 4]
    assert float(rows[name]['samples_per_s']) == r['samples_per_s']
    assert float(rows[name]['zeroshot/shapes/top1']) == r['metrics']['zeroshot/shapes/top1']
    row = f'| {name} | done | {r["steps"]} | {r["lr"]:.3g} | {r["samples_per_s"]:,.0f} |'
    assert row in report
  assert records['siglip_b32_s0']['config_diff']['loss.kind'] == ['softmax', 'sigmoid']
  top1 = {n: r['metrics']['zeroshot/shapes/top1'] for n, r in records.items()}
  # A method per row, a batch per column; the grid cells the study did not train are marked.
  assert (f'| method | 16 | 32 |\n|---|---|---|\n| clip | {top1["clip_b16_s0"]:.4f} | – |\n'
          f'| siglip | – | {top1["siglip_b32_s0"]:.4f} |') in report
  for png in ('metrics.png', 'throughput.png', 'memory.png'):
    with open(os.path.join(workdir, png), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n', png
    assert f'({png})' in report


def test_report_only_rewrites_the_same_outputs(study, study_config):
  workdir = study['workdir']
  before = {n: open(os.path.join(workdir, n)).read() for n in ('results.json', 'results.csv', 'report.md')}
  for name in before:
    os.remove(os.path.join(workdir, name))
  assert sweep.run_sweep(sweep.load_config_file(study_config), study_config, workdir, [], report_only=True) == 0
  assert {n: open(os.path.join(workdir, n)).read() for n in before} == before


def test_rerun_skips_finished_cells(study, study_config, capsys):
  # siglip_b32_s0 finished in the first run; the two reruns skipped it and touched none of its files.
  first = study['killed']['siglip_files']
  assert study['killed']['status']['siglip_b32_s0'] == 'done' and first
  for run in ('stopped', 'finished'):
    assert study[run]['stdout'].count('finished before: skipped') == 1, run
    assert [line for line in study[run]['stdout'].splitlines() if 'finished before: skipped' in line][0].split()[
        1] == 'siglip_b32_s0', run
    assert study[run]['siglip_files'] == first, run
  # A rerun of the whole finished study (in this process: the same run_sweep as the command) changes nothing.
  workdir = study['workdir']
  before = mtimes(os.path.join(workdir, 'cells'))
  assert sweep.run_sweep(sweep.load_config_file(study_config), study_config, workdir, []) == 0
  assert capsys.readouterr().out.count('finished before: skipped') == 2
  assert mtimes(os.path.join(workdir, 'cells')) == before


def test_a_killed_or_stopped_cell_resumes_to_the_uninterrupted_numbers(study, study_config, tiny_run,
                                                                        tiny_data_dir):
  """The study's clip_b16_s0 is tests/tiny.py unchanged, so the session's uninterrupted `tiny_run` (the same
  config on the same 8 devices) is its reference."""
  cell = cells_of(study_config)['clip_b16_s0']
  assert run_lib.flat(sweep.cell_config(cell)) == run_lib.flat(tiny.tiny_config(tiny_data_dir))
  killed, stopped, finished = study['killed'], study['stopped'], study['finished']

  assert killed['code'] == 1, killed['stdout']  # The failed cell is recorded; the sweep goes on to its end.
  assert 'FAILED (killed by SIGKILL' in killed['stdout']
  assert killed['status'] == {'clip_b16_s0': 'failed', 'siglip_b32_s0': 'done'}
  assert not killed['clip_finished'], 'killed too late: the cell had finished'
  # Measured with the other cell, on the config the run was to write (it was killed before it wrote one).
  assert killed['clip_memory'] and not killed['clip_configured']

  assert stopped['code'] == 128 + signal.SIGTERM, stopped['stderr']
  assert 'Stopped by SIGTERM' in stopped['stderr'] and stopped['status']['clip_b16_s0'] == 'stopped'
  assert 'Stopped by SIGTERM after step' in stopped['cell_output']  # The cell got the signal, wrote a checkpoint.
  assert not stopped['clip_finished']

  assert finished['code'] == 0, finished['stdout'][-3000:]
  assert finished['status'] == {'clip_b16_s0': 'done', 'siglip_b32_s0': 'done'}
  reference, reference_results = tiny_run
  clip = os.path.join(study['workdir'], 'cells', 'clip_b16_s0')
  assert losses(clip) == losses(reference)
  assert read_json(os.path.join(clip, 'eval_results.json')) == reference_results
  # The later runs wrote the config it was measured on (as predicted): the measurement stood, nothing measured
  # it again.
  assert finished['clip_memory'] == killed['clip_memory'] and 'per device on' not in finished['stdout']


# ------------------------------------------------------------------------------------------------ memory


def test_memory_only_equals_measuring_the_step_directly(study, sweep_config, tiny_data_dir, tmp_path):
  """siglip_b32_s0 compiled on 8 simulated devices by a memory-only sweep (in this process, which has them: no
  measuring process); the study trained the same cell on the session's 8 devices and measured it."""
  workdir = str(tmp_path)
  sc = tiny.override(sweep.load_config_file(f'{sweep_config}:siglip'), memory_only=True, memory_devices=8,
                     **{'axes.batch': (32,)})
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert sweep.run_sweep(sc, sweep_config, workdir, []) == 0, out.getvalue()
  (record,) = read_json(os.path.join(workdir, 'results.json'))['cells']
  assert record['name'] == 'siglip_b32_s0' and record['status'] == 'compiled'
  assert os.listdir(os.path.join(workdir, 'cells', 'siglip_b32_s0')) == ['memory.json']  # Nothing trained.
  # Directly: the cell's config by hand, with the vocabulary its BPE will have, on 8 of this process's devices
  # (equal to the sweep's, so its jitted step is the one the sweep compiled: `vitclip.run._jitted`).
  config = tiny.override(tiny.tiny_config(tiny_data_dir), batch_size=32, total_steps=4, ckpt_every=2,
                         **{'loss.kind': 'sigmoid', 'optim.lr': record['lr'], 'optim.warmup_steps': 1,
                            'evals.names': ('zeroshot',)})
  config.model.text.vocab_size = config.tokenizer.vocab_size
  run = run_lib.build(config, None, devices=jax.devices()[:8], train=False, check_data=False,
                      with_tokenizer=False)
  direct = memory.train_step_memory(run)
  trained = read_json(os.path.join(study['workdir'], 'cells', 'siglip_b32_s0', sweep.MEMORY_FILE))
  assert record['memory']['devices'] == direct['devices'] == trained['devices'] == 8
  for field in memory.FIELDS:
    assert record['memory'][field] == direct[field] == trained[field], field
  with open(os.path.join(workdir, 'report.md')) as f:
    assert '## peak memory per device (MiB; 8 devices)' in f.read()


def test_memory_stats_counts_arguments_outputs_and_temporaries():
  x = jax.ShapeDtypeStruct((256, 1024), jnp.float32)  # 1 MiB
  compiled = jax.jit(lambda a: (a @ a.T).sum() + a * 2).lower(x).compile()
  stats = memory.memory_stats(compiled)
  assert stats['argument'] == 2**20 and stats['output'] == 2**20
  assert stats['peak'] == stats['argument'] + stats['output'] + stats['temp'] - stats['alias'] + \
      stats['generated_code']


def test_benchmark_measures_through_the_library():
  sys.path.insert(0, ROOT)
  from benchmarks import memory as bench  # pylint: disable=g-import-not-at-top
  loss = bench.measure_loss(64, 16, 8, 'sigmoid', 'ring')
  assert loss['program'] == 'loss' and loss['per_device_batch'] == 8 and loss['temp'] > 0
  # The smallest towers (one layer each, one patch): the test is about the path, not the model.
  args = bench.parse_args(['--model', 'mu/16', '--text_variant', 'mu', '--image_size', '16', '--text_len', '4',
                           '--vocab_size', '64', '--embed_dim', '16', '--batch', '16', '--devices', '1',
                           '--remat', 'none'])
  step = bench.measure_step(args)
  assert step['program'] == 'train_step' and step['devices'] == 1 and step['batch'] == 16
  assert step['peak'] == step['argument'] + step['output'] + step['temp'] - step['alias'] + step['generated_code']
  assert step['argument'] > 4 * (step['image_params'] + step['text_params'])  # Params, Adam's moments, batch.


# ------------------------------------------------------------------------------------------------ report


def test_tables_average_seeds_and_show_their_spread(tmp_path):
  def record(method, batch, seed, top1, sps):
    return {'name': f'{method}_b{batch}_s{seed}', 'method': method, 'batch': batch, 'seed': seed, 'steps': 4,
            'lr': 1e-3, 'status': 'done', 'metrics': {'top1': top1}, 'samples_per_s': sps,
            'step_time_ms': batch / sps * 1e3, 'peak_memory_bytes': batch * 2**20,
            'memory': {'devices': 1, 'peak': batch * 2**20}}
  records = [record('clip', 16, 0, 0.4, 100.0), record('clip', 16, 1, 0.6, 300.0), record('clip', 64, 0, 0.7, 400.0),
             record('siglip', 16, 0, 0.5, 150.0)]
  table = sweep_report.grid_table(records, sweep_report._metric('top1'), '{:.4f}')
  assert table.splitlines() == ['| method | 16 | 64 |', '|---|---|---|',
                                '| clip | 0.5000 [0.4000, 0.6000] | 0.7000 |', '| siglip | 0.5000 | – |']
  assert sweep_report.write_plots(records, ['top1'], str(tmp_path)) == ['metrics.png', 'throughput.png',
                                                                        'memory.png']
