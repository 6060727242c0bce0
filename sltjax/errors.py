"""Errors a user can fix (a config key, a path, a workdir): the command-line entry points print
their message alone and exit with status 2; anything else keeps its traceback."""
import sys
from typing import NoReturn


class UserError(ValueError):
  """Bad input that the message tells the user how to fix."""


class MissingInputError(UserError, FileNotFoundError):
  """A file, folder, dataset or split the run needs is not there (the message says how to make it)."""


def exit_with_user_error(message: str) -> NoReturn:
  """Prints a message the user can act on, without a traceback, and exits with status 2."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)
