r"""Trains a two-tower contrastive model.

  python train.py --config configs/shapes.py --workdir /tmp/shapes [--config.loss.kind=sigmoid ...]

Rerunning the same command resumes from the latest checkpoint in --workdir. Multi-host: pass
--coordinator_address/--num_processes/--process_id, or --distributed to auto-detect (TPU pods, SLURM).

Exit status: 0 done; 2 a config / input error, reported before the first step; 3 diverged (too many non-finite
steps in a row); 4 a checkpoint could not be written (disk full); 128 + N stopped by signal N (SIGTERM 143,
SIGINT 130) after writing a checkpoint — rerun the same command to continue.
"""

from vitclip import host_malloc

if __name__ == '__main__':  # First: the re-exec restarts the interpreter, so nothing heavy is imported before it.
  host_malloc.reexec_if_needed()

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vitclip import distributed, entry  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/x.py or configs/x.py:arg).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
distributed.define_flags()
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  distributed.initialize_from_flags()
  with entry.reported_errors(_WORKDIR.value, 'train'):
    from vitclip import trainer  # After jax.distributed.initialize: nothing may touch devices before it.
    results = trainer.train(_CONFIG.value, _WORKDIR.value)
    entry.print_results(results)


if __name__ == '__main__':
  app.run(main, flags_parser=entry.parse_flags)
