"""glibc malloc settings for host (CPU-only) runs, applied by re-executing the command once at start-up.

XLA:CPU allocates and frees hundreds of MB of temporaries in every step, from its worker threads. By default
glibc gives each thread its own arena and hands freed arena memory back to the kernel, so every step
page-faults the same memory in again: on the shapes demo that was ~190k minor page faults per step and a
quarter of all CPU time spent in the kernel. One arena that keeps what it frees removes most of it
(benchmarks/step.py on 2 cores: ~290 -> ~440 samples/s). The price is that the process keeps its peak heap
(shapes demo: 4.5 GB resident instead of 1.9 GB). glibc reads these settings only when a process starts,
hence the re-exec.

Skipped when an accelerator is visible (the step's temporaries then live on the device, and one host arena
for a threaded input pipeline is unmeasured), when the user already set any MALLOC_* variable, on non-glibc
systems, or with VITCLIP_HOST_MALLOC=0.
"""

import glob
import os
import platform
import sys

SETTINGS = {
    'MALLOC_ARENA_MAX': '1',
    'MALLOC_TRIM_THRESHOLD_': str(4 << 30),
    'MALLOC_MMAP_THRESHOLD_': str(4 << 30),
}
_ACCELERATOR_DEVICE_FILES = ('/dev/nvidia[0-9]*', '/dev/accel[0-9]*', '/dev/vfio/[0-9]*')


def _host_only(environ) -> bool:
  platforms = environ.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return platforms == 'cpu'
  return not any(glob.glob(pattern) for pattern in _ACCELERATOR_DEVICE_FILES)


def should_apply(environ=None) -> bool:
  environ = os.environ if environ is None else environ
  return (sys.platform.startswith('linux') and platform.libc_ver()[0] == 'glibc'
          and environ.get('VITCLIP_HOST_MALLOC', '1') != '0'
          and not any(k.startswith('MALLOC_') for k in environ)
          and _host_only(environ))


def reexec_if_needed() -> None:
  """Call first thing in a script run as `__main__`, before its other imports (a re-exec after them would pay
  for jax, flax and the rest twice); returns only when no re-exec is needed."""
  if not should_apply():
    return
  os.environ.update(SETTINGS)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
