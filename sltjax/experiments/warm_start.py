"""Starting a run from earlier ones: one table per system, `config.init.<name>` -> what it fills.

Each system declares, by name, a WarmStart: the parameter path prefixes that a training workdir
(its best checkpoint) or a converted pretrained directory (`python -m sltjax.convert`) fills, and
the workdir files it brings along (the gloss list, the tokenizer), so that the new workdir holds
everything `python -m sltjax.translate` needs. MMTLB, for example:

  init.visual       backbone/, head/        <- a Sign2Gloss workdir   (+ glosses.json)
  init.translation  translation/            <- a Gloss2Text workdir or a converted mBART
                                                                      (+ tokenizer/)
A source whose model is exactly the part (a Gloss2Text workdir, a converted mBART, for
`translation/`) is read without the prefix.
"""
import dataclasses
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from sltjax.errors import UserError

Flat = dict[str, dict[tuple, object]]  # {'params' | 'rest': {path: nnx variable}}


@dataclasses.dataclass(frozen=True)
class WarmStart:
  prefixes: tuple[tuple[str, ...], ...]  # parameter paths filled; () is the whole model
  files: tuple[str, ...] = ()  # workdir files and folders copied from the source workdir


def check_names(table: dict[str, WarmStart], init_config) -> list[str]:
  """Problems with config.init: set names the system does not start from."""
  unknown = sorted(name for name, directory in (init_config or {}).items()
                   if directory and name not in table)
  if not unknown:
    return []
  return [f'init.{name} is not a start of this system (it starts from: '
          f'{", ".join(f"init.{n}" for n in table) or "nothing"})' for name in unknown]


def sources(table: dict[str, WarmStart], init_config) -> dict[str, str]:
  """{name: directory} of the starts config.init sets (empty ones left out)."""
  return {name: init_config[name] for name in table
          if init_config and init_config.get(name)}


def bring_files(table: dict[str, WarmStart], init_config, workdir: str) -> None:
  """Copies each start's files from its source workdir into `workdir` where they are not there
  yet (a resumed run keeps the ones it started with)."""
  for name, directory in sources(table, init_config).items():
    for file_name in table[name].files:
      source, target = os.path.join(directory, file_name), os.path.join(workdir, file_name)
      if os.path.exists(source) and not os.path.exists(target):
        if jax.process_index() == 0:
          (shutil.copytree if os.path.isdir(source) else shutil.copy)(source, target)
        multihost_utils.sync_global_devices(f'copied {file_name}')


def tokenizer_config(config_tokenizer, source_directory: str) -> ml_collections.ConfigDict:
  """config.tokenizer, with an mBART tokenizer read from the start's directory when the config
  gives no path (a converted mBART directory holds its tokenizer)."""
  if config_tokenizer.kind != 'mbart' or config_tokenizer.path or not source_directory:
    return config_tokenizer
  return ml_collections.ConfigDict({**config_tokenizer.to_dict(), 'path': source_directory})


def graft(flat: Flat, source: dict[tuple, np.ndarray], prefix: tuple[str, ...],
          directory: str) -> int:
  """Replaces flat[kind][prefix + p] by the source tensor at prefix + p (or at p, when the source
  model is the part itself); returns how many tensors it copied. Every tensor under the prefix
  must be in the source with the same shape."""
  has_prefix = any(path[1:1 + len(prefix)] == prefix for path in source)
  copied, problems = 0, []
  for kind in ('params', 'rest'):
    for path, variable in flat[kind].items():
      names = tuple(map(str, path))
      if names[:len(prefix)] != prefix:
        continue
      key = (kind, *names) if has_prefix else (kind, *names[len(prefix):])
      if key not in source:
        problems.append(f'missing {"/".join(key)}')
        continue
      value = np.asarray(source[key])
      if value.shape != variable.shape:
        problems.append(f'{"/".join(key)} has shape {value.shape}, expected {variable.shape}')
        continue
      flat[kind][path] = variable.replace(jnp.asarray(value, variable.dtype))
      copied += 1
  if problems:
    raise UserError(f'Cannot start {"/".join(prefix) or "the model"} from {directory}: its '
                    'architecture differs from config.model:\n  ' + '\n  '.join(problems[:20]))
  if not copied:
    raise UserError(f'Cannot start {"/".join(prefix)} from {directory}: this model has no '
                    'parameters there.')
  return copied
