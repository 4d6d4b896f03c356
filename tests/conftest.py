"""Shared test setup: 8 simulated CPU devices, set before any test module imports jax.

XLA reads the device count once, when the CPU backend starts, so every test in the session sees the same 8
devices; tests that need fewer build their mesh from a slice of `jax.devices()`.
"""

import os
import sys
import tempfile

_flags = [f for f in os.environ.get('XLA_FLAGS', '').split() if 'xla_force_host_platform_device_count' not in f]
# Tiny programs: XLA's backend optimizations cost more compile time than they save at run time. The loop emitters
# and copy insertion without region analysis compile a micro train step in about 60% of the CPU time of the
# defaults (11.7 and 9.7 against 17.0 CPU seconds, measured side by side). Splitting the LLVM module for parallel
# code generation only adds work when the cores are busy anyway (two workers on two cores): one module compiles
# the 8-device gradient-caching step of tests/test_sharding.py in about 6.0 s instead of 7.6 s.
os.environ['XLA_FLAGS'] = ' '.join(_flags + ['--xla_force_host_platform_device_count=8',
                                             '--xla_backend_optimization_level=0',
                                             '--xla_cpu_use_fusion_emitters=false',
                                             '--xla_cpu_copy_insertion_use_region_analysis=false',
                                             '--xla_cpu_parallel_codegen_split_count=1'])
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Many tests build the same tiny programs (train steps, inits) in fresh closures, which jit's in-memory cache
# cannot share; XLA's persistent cache, keyed by the program itself, can (subprocesses inherit the variable).
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='vitclip_test_xla_cache_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.3')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
# `configs` is a top-level package next to `vitclip`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


import pytest  # noqa: E402  (after the environment above is set)

# The slowest modules, slowest first (from `--durations`). pytest-xdist (`--dist loadfile`) hands whole modules to
# whichever worker is free, in collection order; started last, one of these would keep one worker busy long after
# the other has finished. The first two go to different workers at once, so the second is one that does not wait
# for the session's `tiny_run` (the first trains it). Every other module follows in its usual order.
SLOWEST_MODULES = ('test_multihost.py', 'test_sharding.py', 'test_sweep.py', 'test_masking.py', 'test_transfer.py',
                   'test_finetune.py', 'test_convert.py', 'test_init_from.py', 'test_segmentation.py',
                   'test_reliability.py', 'test_flops.py', 'test_models.py', 'test_evaluators.py',
                   'test_end_to_end.py', 'test_curriculum.py')


def pytest_configure(config):
  # pytest-xdist otherwise reorders modules by their number of tests, which says nothing about their time.
  if hasattr(config.option, 'loadscopereorder'):
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
  def rank(item):
    name = os.path.basename(str(item.path))
    return SLOWEST_MODULES.index(name) if name in SLOWEST_MODULES else len(SLOWEST_MODULES)
  items[:] = [item for _, _, item in sorted((rank(item), i, item) for i, item in enumerate(items))]


def _session_dir(tmp_path_factory, name: str):
  """A directory of this pytest session shared by all its xdist workers (each worker's own base temp directory
  is a child of the session's)."""
  base = tmp_path_factory.getbasetemp()
  path = (base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base) / name
  path.mkdir(exist_ok=True)
  return path


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory):
  """One data directory for every test that trains (tests/tiny.py), shared by the workers: vitclip builds each
  generated data set in it once, under a file lock (vitclip/data/shapes.py)."""
  return str(_session_dir(tmp_path_factory, 'tfds'))


@pytest.fixture(scope='session')
def tiny_run(tiny_data_dir, tmp_path_factory):
  """(workdir, final evaluation) of one uninterrupted tiny run: 8 steps, checkpoints at 4 and 8. Tests that
  interrupt, corrupt or resume a run compare against it; tests must not modify this workdir (copy it).

  Trained once per session: the first worker to ask trains it under a file lock, the others wait and read it.
  At the end of the session a test that wrote into it is an error."""
  import fcntl
  import json
  import shutil
  from tests.tiny import tiny_config
  from vitclip import trainer
  root = _session_dir(tmp_path_factory, 'uninterrupted')
  workdir, results = root / 'workdir', root / 'eval_results.json'
  with open(root / 'lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # Released when the file closes, also if the worker dies.
    if not results.exists():
      shutil.rmtree(workdir, ignore_errors=True)  # What a worker that died while training left.
      evaluation = trainer.train(tiny_config(tiny_data_dir), str(workdir))
      (root / 'eval_results.json.tmp').write_text(json.dumps(evaluation))
      os.replace(root / 'eval_results.json.tmp', results)
  def files():
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in workdir.rglob('*') if p.is_file()}
  before = files()
  yield str(workdir), json.loads(results.read_text())
  after = files()
  written = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
  assert not written, f'tests wrote into the session\'s tiny run (copy it instead): {written}'
