"""Two processes x 2 CPU devices on loopback (gloo collectives) train exactly like one process x 4 devices."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One checkpoint per run, at its end: a save on two processes costs each several seconds, and the interval
# leaves the numbers as they are.
STEPS = ('--config.total_steps=6', '--config.ckpt_every=6')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def launch(workdir, data_dir, devices, extra=()):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0'}
  cmd = [sys.executable, 'train.py', '--config', f'tests/tiny.py:{data_dir}', '--workdir', workdir, *STEPS, *extra]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(procs):
  for p in procs:
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-4000:]


def losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {r['step']: r['loss'] for r in map(json.loads, f) if 'loss' in r}


def test_two_processes_equal_one_process(tiny_data_dir, tmp_path):
  single = str(tmp_path / 'single')
  finish([launch(single, tiny_data_dir, devices=4)])

  multi = str(tmp_path / 'multi')

  def two_processes(*extra):
    port = free_port()
    finish([launch(multi, tiny_data_dir, devices=2, extra=(f'--coordinator_address=127.0.0.1:{port}',
                                                           '--num_processes=2', f'--process_id={i}', *extra))
            for i in range(2)])

  two_processes()
  want, got = losses(single), losses(multi)
  assert sorted(got) == sorted(want) == list(range(1, 7))
  np.testing.assert_allclose([got[s] for s in want], [want[s] for s in want], rtol=1e-5, atol=1e-6)
  assert os.listdir(os.path.join(multi, 'checkpoints')) == ['6']
  with open(os.path.join(multi, 'eval_results.json')) as f, open(os.path.join(single, 'eval_results.json')) as g:
    np.testing.assert_allclose(json.load(f)['zeroshot/shapes/top1'], json.load(g)['zeroshot/shapes/top1'],
                               atol=1e-6)

  # Resume works the same on two processes: a longer run continues from step 6 of the same workdir (evaluation
  # settings may change on a resume; this part evaluates nothing).
  two_processes('--config.total_steps=8', '--config.evals.names=()')
  resumed = losses(multi)
  assert sorted(resumed) == list(range(1, 9))
  assert {s: resumed[s] for s in got} == got  # Not trained again from the start (another lr schedule).
  assert sorted(os.listdir(os.path.join(multi, 'checkpoints'))) == ['6', '8']
