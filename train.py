r"""Trains a two-tower contrastive model.

  python train.py --config configs/shapes.py --workdir /tmp/shapes [--config.loss.kind=sigmoid ...]

Rerunning the same command resumes from the latest checkpoint in --workdir. Multi-host: pass
--coordinator_address/--num_processes/--process_id, or --distributed to auto-detect (TPU pods, SLURM).
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from vitclip import config as config_lib
from vitclip import distributed, host_malloc

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/x.py or configs/x.py:arg).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
distributed.define_flags()
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  distributed.initialize_from_flags()
  from vitclip import trainer  # After jax.distributed.initialize: nothing may touch devices before it.
  try:
    results = trainer.train(_CONFIG.value, _WORKDIR.value)
  # OSError: missing files, including a config file whose get_config failed to find its inputs.
  except (config_lib.ConfigError, OSError) as e:
    logging.error('%s', e)
    print(f'Config error: {e}', file=sys.stderr)
    sys.exit(2)
  print(trainer.format_table(results))


if __name__ == '__main__':
  host_malloc.reexec_if_needed()
  app.run(main)
