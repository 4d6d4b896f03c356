"""What train.py and eval.py share around the library call: quiet logging, one-line errors, exit codes."""

import contextlib
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


def _exit(message: str, code: int):
  from absl import logging
  logging.error('%s', message)
  print(message, file=sys.stderr, flush=True)
  sys.exit(code)


def print_results(results: dict[str, float]):
  """The evaluation table (process 0)."""
  import jax
  if jax.process_index() == 0 and results:
    width = max(map(len, results))
    print('\n'.join(f'{k:<{width}}  {v:8.4f}' for k, v in sorted(results.items())), flush=True)
