r"""Evaluates the latest checkpoint of a workdir (or a named checkpoint directory).

  python eval.py --config configs/shapes.py --workdir /tmp/shapes [--checkpoint_dir DIR]
      [--config.evals.names="('zeroshot',)"]
  python eval.py --config configs/pretrained.py:DIR --workdir OUT --checkpoint_dir DIR  # a converted model

Only the params are restored, so params-only checkpoints (converted models) work as well as training runs.

Prints a table and writes WORKDIR/eval_results.json with flat keys such as "zeroshot/shapes/top1".
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from vitclip import config as config_lib
from vitclip import distributed, host_malloc

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/x.py or configs/x.py:arg).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory: its latest checkpoint is evaluated and '
                               'eval_results.json is written there.')
_CHECKPOINT_DIR = flags.DEFINE_string('checkpoint_dir', '', 'Evaluate the latest checkpoint of this run '
                                      'or converted model directory instead of --workdir.')
distributed.define_flags()
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  distributed.initialize_from_flags()
  from vitclip import trainer
  try:
    results = trainer.evaluate(_CONFIG.value, _WORKDIR.value, _CHECKPOINT_DIR.value)
  # OSError: missing files, including a config file whose get_config failed to find its inputs.
  except (config_lib.ConfigError, OSError) as e:
    logging.error('%s', e)
    print(f'Error: {e}', file=sys.stderr)
    sys.exit(2)
  print(trainer.format_table(results))


if __name__ == '__main__':
  host_malloc.reexec_if_needed()
  app.run(main)
