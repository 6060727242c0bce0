"""Reading the annotation files of dataset releases, reporting every bad row instead of stopping.

Each function returns what it could read plus a list of `Problem`s (file:line and what is wrong),
so that a build can list every problem of a release at once.
"""
import io
import os
import pickle

from sltjax.data.clips import Problem


def read_table(path: str, delimiter: str, split: str,
               required: tuple[str, ...]) -> tuple[list[tuple[int, dict[str, str]]], list[Problem]]:
  """Rows of a delimited text file with a header line, as (line number, {column: value}).

  Rows that are not UTF-8 or have a different number of fields than the header become problems.
  """
  if not os.path.isfile(path):
    return [], [Problem(split, '', path, 'annotation file not found.')]
  with open(path, 'rb') as f:
    lines = f.read().splitlines()
  problems, rows = [], []
  try:
    header = lines[0].decode('utf-8-sig').split(delimiter) if lines else []
  except UnicodeDecodeError:
    header = []
  missing = [c for c in required if c not in header]
  if missing:
    return [], [Problem(split, '', f'{path}:1', f'header {header} lacks the columns {missing} '
                        f'(fields separated by {delimiter!r}).')]
  for number, raw in enumerate(lines[1:], start=2):
    if not raw.strip():
      continue
    try:
      line = raw.decode('utf-8')
    except UnicodeDecodeError as e:
      problems.append(Problem(split, '', f'{path}:{number}',
                              f'not UTF-8 (byte {raw[e.start]:#x} at column {e.start + 1}); '
                              're-save the file as UTF-8.'))
      continue
    fields = line.split(delimiter)
    if len(fields) != len(header):
      problems.append(Problem(split, fields[0], f'{path}:{number}',
                              f'{len(fields)} fields where the header has {len(header)} '
                              f'(separator {delimiter!r}).'))
      continue
    rows.append((number, dict(zip(header, fields))))
  return rows, problems


class _PlainDataUnpickler(pickle.Unpickler):
  """Unpickles only plain containers, strings and numbers: no class or function is ever loaded."""

  def find_class(self, module, name):
    raise pickle.UnpicklingError(
        f'it refers to {module}.{name}; only plain lists, dicts, strings and numbers are '
        'accepted from an annotation pickle (nothing that could run code).')


def load_plain_pickle(path: str):
  """The content of a pickle of plain data; raises ValueError naming the file otherwise."""
  with open(path, 'rb') as f:
    data = f.read()
  try:
    return _PlainDataUnpickler(io.BytesIO(data)).load()
  except (pickle.UnpicklingError, EOFError, ValueError) as e:
    raise ValueError(f'{path}: refusing to unpickle: {e}') from e
