"""What every sltjax command (sltjax.main, sltjax.translate, sltjax.retrieve) does before its
work."""
import os

import jax
from absl import flags, logging

from sltjax import jax_fixes

COMPILATION_CACHE = os.path.expanduser('~/.cache/sltjax/xla')  # JAX's persistent cache


def start(compilation_cache: str = COMPILATION_CACHE) -> None:
  """absl's INFO messages off unless --verbosity was given (orbax and grain are chatty at INFO),
  fewer garbage-collector passes (sltjax/jax_fixes.py), and JAX's persistent compilation cache in
  `compilation_cache` ('' for none)."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  jax_fixes.fewer_gc_passes()
  if compilation_cache:
    jax.config.update('jax_compilation_cache_dir', compilation_cache)
