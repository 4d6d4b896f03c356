"""The one exception type for mistakes a user can fix: entry points print its message and exit with status 2."""


class ConfigError(ValueError):
  """A user-fixable problem with the config, the command line, the workdir or an input file."""


class RunStopped(Exception):
  """A run that stopped on purpose before its end: the entry point prints the message and exits with
  `exit_code` (documented in the README's reliability section)."""
  exit_code = 1


class Diverged(RunStopped):
  """Too many consecutive steps with a non-finite loss, gradient, update or param (config.max_skipped_steps)."""
  exit_code = 3


class Preempted(RunStopped):
  """SIGTERM / SIGINT: the current step finished and a checkpoint was written; exit 128 + the signal number."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum


class CheckpointWriteError(RunStopped):
  """A checkpoint could not be written (disk full, permissions); the previous checkpoints are intact."""
  exit_code = 4


class MissingFileError(ConfigError, FileNotFoundError):
  """A file or directory the config names does not exist (a ConfigError that is also a FileNotFoundError)."""
