"""What train.py and eval.py share around the library call: quiet logging, one-line errors, exit codes."""

import contextlib
import re
import sys

from vitclip.errors import ConfigError, RunStopped


@contextlib.contextmanager
def reported_errors(workdir: str, program: str):
  """Logs to `workdir/<program>.log`; turns a user-fixable error into one `Error:` line and exit status 2, a
  deliberate stop (`RunStopped`) into its message and exit code, and Ctrl-C into exit 130 — no tracebacks."""
  from vitclip import console
  try:
    console.setup_logging(workdir, program)
  except OSError as e:
    _exit(f'Error: --workdir={workdir!r} is not writable ({e.strerror}); choose a directory you can write to.', 2)
  try:
    yield
  # OSError: missing files, including a config file whose get_config failed to find its inputs.
  except (ConfigError, OSError) as e:
    _exit(f'Error: {e}', 2)
  except RunStopped as e:
    _exit(str(e), e.exit_code)
  except KeyboardInterrupt:
    _exit('Interrupted.', 130)


def parse_flags(argv):
  """absl's flag parsing, with a bad flag, config file argument or `--config.x` override reported as one
  `Error:` line and exit status 2 (absl and ml_collections would print a traceback)."""
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except  # flags.Error, KeyError/TypeError from overrides, ...
    _exit(f'Error: {_flag_error(e)}', 2, log=False)


def _flag_error(error: BaseException) -> str:
  if isinstance(error, KeyError):  # ml_collections: '\'lossx\'\nDid you mean "loss" instead of "lossx"?'
    key, _, hint = str(error.args[0]).partition('\n')
    return f'no config field {key} ({hint.strip() or "see configs/base.py for every field"}).'
  text = str(error)
  # config_flags folds the config file's traceback into its message: its last "...Error: text" line is the cause.
  causes = re.findall(r'^(?:[\w.]+\.)?\w*(?:Error|Exception): (.+)$', text, re.M) if 'Traceback' in text else []
  if causes:
    return causes[-1].strip()
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[-1] if lines else type(error).__name__


def _exit(message: str, code: int, log: bool = True):
  if log:  # Into the run's log file; the terminal gets the print below.
    from absl import logging
    from vitclip import console
    logging.error('%s', message, **console.FILE_ONLY)
  print(message, file=sys.stderr, flush=True)
  sys.exit(code)


def print_results(results: dict[str, float]):
  """The evaluation table (process 0)."""
  import jax
  if jax.process_index() == 0 and results:
    width = max(map(len, results))
    print('\n'.join(f'{k:<{width}}  {_number(v)}' for k, v in sorted(results.items())), flush=True)


def _number(value: float) -> str:
  """Accuracies as 0.9970; tiny values (a probe's l2 of 1e-6) in exponent form instead of 0.0000."""
  return f'{value:8.4f}' if value == 0 or abs(value) >= 1e-3 else f'{value:8.2e}'
