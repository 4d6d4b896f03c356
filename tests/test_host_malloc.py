"""The host malloc re-exec: when it applies, that a re-executed script runs once with the settings, and that
train.py re-executes before it imports jax."""

import os
import re
import platform
import subprocess
import sys
import textwrap

import pytest

from vitclip import host_malloc

glibc_linux = pytest.mark.skipif(
    not (sys.platform.startswith('linux') and platform.libc_ver()[0] == 'glibc'), reason='glibc only')


@glibc_linux
@pytest.mark.parametrize('environ, expected', [
    ({'JAX_PLATFORMS': 'cpu'}, True),
    ({'JAX_PLATFORMS': 'cuda'}, False),
    ({'JAX_PLATFORMS': 'cpu,cuda'}, False),
    ({'JAX_PLATFORMS': 'cpu', 'VITCLIP_HOST_MALLOC': '0'}, False),
    ({'JAX_PLATFORMS': 'cpu', 'MALLOC_ARENA_MAX': '4'}, False),  # the user's own settings win
])
def test_should_apply(environ, expected):
  assert host_malloc.should_apply(environ) is expected


@glibc_linux
def test_reexec_runs_the_script_once_with_the_settings(tmp_path):
  script = tmp_path / 'script.py'
  script.write_text(textwrap.dedent("""
      import os, sys
      print('started', flush=True)
      from vitclip import host_malloc
      host_malloc.reexec_if_needed()
      print('args', sys.argv[1:], 'arena', os.environ.get('MALLOC_ARENA_MAX'))
  """))
  env = {k: v for k, v in os.environ.items() if not k.startswith('MALLOC_')}
  env.update(JAX_PLATFORMS='cpu', PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  out = subprocess.run([sys.executable, str(script), '--flag=1'], env=env, capture_output=True, text=True,
                       check=True).stdout.splitlines()
  assert out == ['started', 'started', "args ['--flag=1'] arena 1"]


@glibc_linux
def test_train_py_reexecutes_before_importing_jax():
  """Everything imported before the re-exec is imported again after it: jax must be imported once in all."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {k: v for k, v in os.environ.items() if not k.startswith('MALLOC_')}
  env['JAX_PLATFORMS'] = 'cpu'
  proc = subprocess.run([sys.executable, '-X', 'importtime', 'train.py', '--helpshort'], cwd=root, env=env,
                        capture_output=True, text=True, check=False)
  assert '--workdir: Directory for checkpoints' in proc.stdout, proc.stderr[-2000:]  # absl's help, then exit 1.
  assert len(re.findall(r'^import time:.*\|\s+vitclip\.host_malloc$', proc.stderr, re.M)) == 2  # Re-executed once.
  assert len(re.findall(r'^import time:.*\|\s+jax$', proc.stderr, re.M)) == 1
