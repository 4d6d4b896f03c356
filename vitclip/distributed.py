"""Multi-process (multi-host) initialisation from command-line flags."""

import os

import jax
from absl import flags

_COORDINATOR = 'coordinator_address'
_NUM_PROCESSES = 'num_processes'
_PROCESS_ID = 'process_id'
_AUTO = 'distributed'


def define_flags():
  flags.DEFINE_string(_COORDINATOR, None, 'host:port of process 0 for jax.distributed.initialize.')
  flags.DEFINE_integer(_NUM_PROCESSES, None, 'Total number of processes.')
  flags.DEFINE_integer(_PROCESS_ID, None, 'Index of this process.')
  flags.DEFINE_bool(_AUTO, False, 'Call jax.distributed.initialize() with cluster auto-detection (TPU pods, '
                    'SLURM, Open MPI).')


def initialize_from_flags():
  """Initialises jax.distributed when asked; must run before anything touches devices."""
  f = flags.FLAGS
  if f[_COORDINATOR].value:
    if f[_NUM_PROCESSES].value is None or f[_PROCESS_ID].value is None:
      raise flags.ValidationError(f'--{_COORDINATOR} needs --{_NUM_PROCESSES} and --{_PROCESS_ID} as well.')
    initialize(f[_COORDINATOR].value, f[_NUM_PROCESSES].value, f[_PROCESS_ID].value)
  elif f[_AUTO].value:
    jax.distributed.initialize()


def initialize(coordinator: str, num_processes: int, process_id: int):
  """Explicit initialisation. On CPU, cross-process collectives go through gloo."""
  if jax.config.jax_platforms in (None, '', 'cpu') or os.environ.get('JAX_PLATFORMS', '') == 'cpu':
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
