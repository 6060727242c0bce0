"""Reading the release-parity golden files (tests/*_release_golden.npz): named tensors are
stored flat as '<prefix>/<name>' entries, with a JSON list of a state dict's names."""
import json
import sys

import numpy as np


def load(path) -> dict[str, np.ndarray]:
  """Every array of the .npz file at `path`."""
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


def named(golden: dict, prefix: str, names_key: str | None = None) -> dict[str, np.ndarray]:
  """{name: array} of the entries '<prefix>/<name>'; only the names listed (JSON) under
  golden[names_key] when given."""
  if names_key is not None:
    return {k: golden[f'{prefix}/{k}'] for k in json.loads(str(golden[names_key]))}
  return {k.removeprefix(f'{prefix}/'): v for k, v in golden.items()
          if k.startswith(f'{prefix}/')}


def run_from_command_line(main, release_folder: str) -> None:
  """Calls main(path) with the one argument a golden script takes: the release's folder."""
  if len(sys.argv) != 2:
    sys.exit(f'usage: python {sys.argv[0]} /path/to/{release_folder}')
  main(sys.argv[1])


def assert_close(actual, expected, rtol: float = 1e-5, least_scale: float = 1e-12) -> None:
  """Equal to float32 precision relative to the golden's scale (at least `least_scale`): the
  release-parity tests' comparison of sltjax's float32 against the release's float64."""
  expected = np.asarray(expected, np.float64)
  scale = max(np.abs(expected).max(), least_scale)
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=0, atol=rtol * scale)
