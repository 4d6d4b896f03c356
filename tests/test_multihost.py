"""Two processes x 4 CPU devices on loopback (gloo collectives) train exactly like one process x 8 devices (the
session's `tiny_run`), and resume exactly on two processes."""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def launch(workdir, data_dir, process_id, port, extra=()):
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split() if 'device_count' not in f]  # tests/conftest.py's
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': ' '.join(flags + ['--xla_force_host_platform_device_count=4'])}
  cmd = [sys.executable, 'train.py', '--config', f'tests/tiny.py:{data_dir}', '--workdir', workdir,
         f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={process_id}', *extra]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def two_processes(workdir, data_dir, *extra):
  port = free_port()
  procs = [launch(workdir, data_dir, i, port, extra) for i in range(2)]
  for p in procs:
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-4000:]


def losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {r['step']: r['loss'] for r in map(json.loads, f) if 'loss' in r}


def test_two_processes_equal_one_process(tiny_run, tiny_data_dir, tmp_path):
  single, single_results = tiny_run  # tests/tiny.py: 8 steps, checkpoints at 4 and 8, zero-shot at the end.
  multi = str(tmp_path / 'multi')
  two_processes(multi, tiny_data_dir)
  want, got = losses(single), losses(multi)
  assert sorted(got) == sorted(want) == list(range(1, 9))
  np.testing.assert_allclose([got[s] for s in want], [want[s] for s in want], rtol=1e-5, atol=1e-6)
  assert sorted(os.listdir(os.path.join(multi, 'checkpoints'))) == ['4', '8']
  with open(os.path.join(multi, 'eval_results.json')) as f:
    np.testing.assert_allclose(json.load(f)['zeroshot/shapes/top1'], single_results['zeroshot/shapes/top1'],
                               atol=1e-6)

  # Resume on two processes: with the last checkpoint gone, the rerun restores step 4 (written by two processes)
  # and replays steps 5-8 to the same losses (evaluation settings may change on a resume; this part evaluates
  # nothing).
  shutil.rmtree(os.path.join(multi, 'checkpoints', '8'))
  two_processes(multi, tiny_data_dir, '--config.evals.names=()')
  assert losses(multi) == got
  assert sorted(os.listdir(os.path.join(multi, 'checkpoints'))) == ['4', '8']
