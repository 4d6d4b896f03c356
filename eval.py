r"""Evaluates a run directory or a converted model directory.

  python eval.py --workdir RUN                         # the run's own model, tokenizer, data and evaluation
  python eval.py --workdir RUN --config.evals.names="('zeroshot','retrieval','dense')"   (with --config FILE)
  python eval.py --workdir OUT --checkpoint_dir DIR    # a converted model or another run; results go to OUT
  python eval.py --config configs/shapes.py --workdir RUN --config.evals.dense.split=test

The model, tokenizer, data and loss settings come from the directory's own `config.json` and tokenizer, so a
run is evaluated exactly as it was trained (image size included) without repeating its overrides. `--config`
is optional and supplies only evaluation settings (and, with --config.x=y, the data location); an override of
a model field that differs from config.json is an error naming both values. Only the params are restored, so
params-only checkpoints (converted models) work as well as training runs.

Prints a table and writes WORKDIR/eval_results.json with flat keys such as "zeroshot/shapes/top1". Exit status
2 for a config / input error.
"""

import os
import sys

from vitclip import host_malloc

if __name__ == '__main__':  # First: the re-exec restarts the interpreter, so nothing heavy is imported before it.
  host_malloc.reexec_if_needed()

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vitclip import distributed, entry  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
_CONFIG = config_flags.DEFINE_config_file('config', os.path.join(ROOT, 'configs', 'base.py'),
                                          'Evaluation settings (configs/x.py or configs/x.py:arg); optional.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory: its latest checkpoint is evaluated (unless '
                               '--checkpoint_dir is given) and eval_results.json is written there.')
_CHECKPOINT_DIR = flags.DEFINE_string('checkpoint_dir', '', 'Evaluate the latest checkpoint of this run or '
                                      'converted model directory instead of --workdir.')
distributed.define_flags()
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv
  distributed.initialize_from_flags()
  with entry.reported_errors(_WORKDIR.value, 'eval'):
    sys.path.insert(0, ROOT)  # configs/ is a top-level package next to vitclip/.
    from configs import base
    from vitclip import config as config_lib
    from vitclip import run as run_lib
    from vitclip import trainer
    model_dir = _CHECKPOINT_DIR.value or _WORKDIR.value
    given = flags.FLAGS['config'].present
    if os.path.isfile(os.path.join(model_dir, config_lib.CONFIG_FILE)):
      config = run_lib.model_dir_config(
          model_dir, _CONFIG.value if given else base.get_config(), evals_from=_CONFIG.value if given else None,
          overrides=config_flags.get_override_values(flags.FLAGS['config']))
    else:  # A directory without config.json (made by hand): the --config file describes the model.
      config = _CONFIG.value
    results = trainer.evaluate(config, _WORKDIR.value, _CHECKPOINT_DIR.value)
    entry.print_results(results)


if __name__ == '__main__':
  app.run(main, flags_parser=entry.parse_flags)
