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
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from sltjax import storage
from sltjax.errors import UserError

Flat = dict[str, dict[tuple, object]]  # {'params' | 'rest': {path: nnx variable}}
MAX_LISTED_PROBLEMS = 20  # differences an architecture mismatch lists before counting the rest


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
      source, target = storage.join(directory, file_name), storage.join(workdir, file_name)
      if storage.path(source).exists() and not storage.is_complete(target):
        if jax.process_index() == 0:
          if storage.path(source).is_dir():
            storage.copy_folder(source, target)
          else:
            storage.copy_file(source, target)
        multihost_utils.sync_global_devices(f'copied {file_name}')


def tokenizer_config(config_tokenizer, source_directory: str) -> ml_collections.ConfigDict:
  """config.tokenizer, with an mBART tokenizer read from the start's directory when the config
  gives no path (a converted mBART directory holds its tokenizer)."""
  if config_tokenizer.kind != 'mbart' or config_tokenizer.path or not source_directory:
    return config_tokenizer
  return ml_collections.ConfigDict({**config_tokenizer.to_dict(), 'path': source_directory})


class Grafted(NamedTuple):
  copied: set[tuple]  # (kind, path) keys written
  left_out: list[str]  # source tensors under the prefix that this model has no place for


def graft(flat: Flat, source: dict[tuple, np.ndarray], prefix: tuple[str, ...],
          directory: str, derived: tuple[tuple[str, ...], ...] = ()) -> Grafted:
  """Replaces flat[kind][prefix + p] by the source tensor at prefix + p (or at p, when the source
  model is the part itself). Every tensor under the prefix must be in the source with the same
  shape, except under a `derived` path prefix (a part that starts as a copy of another when its
  source lacks it: see `copy_initial`)."""
  has_prefix = any(path[1:1 + len(prefix)] == prefix for path in source)
  copied, read, problems = set(), set(), []
  for kind in ('params', 'rest'):
    for path, variable in flat[kind].items():
      names = tuple(map(str, path))
      if names[:len(prefix)] != prefix:
        continue
      key = (kind, *names) if has_prefix else (kind, *names[len(prefix):])
      if key not in source:
        if not any(names[:len(d)] == d for d in derived):
          problems.append(f'missing {"/".join(key)}')
        continue
      read.add(key)
      value = np.asarray(source[key])
      if value.shape != variable.shape:
        problems.append(f'{"/".join(key)} has shape {value.shape}, expected {variable.shape}')
        continue
      flat[kind][path] = variable.replace(jnp.asarray(value, variable.dtype))
      copied.add((kind, path))
  if problems:
    shown = MAX_LISTED_PROBLEMS
    more = [f'... and {len(problems) - shown} more'] if len(problems) > shown else []
    raise UserError(f'Cannot start {"/".join(prefix) or "the model"} from {directory}: its '
                    'architecture differs from config.model:\n  '
                    + '\n  '.join(problems[:shown] + more))
  if not copied:
    raise UserError(f'Cannot start {"/".join(prefix)} from {directory}: this model has no '
                    'parameters there.')
  left_out = sorted('/'.join(key) for key in source if key not in read
                    and (not has_prefix or key[1:1 + len(prefix)] == prefix))
  return Grafted(copied, left_out)


def initial_copies(model) -> dict[tuple[str, ...], tuple[str, ...]]:
  """{path prefix: path prefix it starts as a copy of}, as the modules of `model` declare them
  with an `initial_copies()` method (IP-SLT's refinement encoder and decoder)."""
  copies = {}
  for path, node in nnx.iter_graph(model):
    if hasattr(node, 'initial_copies'):
      for target, origin in node.initial_copies().items():
        copies[tuple(map(str, (*path, *target)))] = tuple(map(str, (*path, *origin)))
  return copies


def copy_initial(flat: Flat, copies: dict[tuple[str, ...], tuple[str, ...]],
                 keep: set[tuple]) -> dict[tuple[str, ...], int]:
  """Sets every tensor under a `copies` target to the tensor at the same place under its origin,
  except the (kind, path) keys in `keep` (what a start wrote); returns {target: tensors copied}."""
  counts = {}
  for kind in ('params', 'rest'):
    by_name = {tuple(map(str, path)): path for path in flat[kind]}
    for names, path in by_name.items():
      if (kind, path) in keep:
        continue
      targets = [target for target in copies if names[:len(target)] == target]
      if not targets:
        continue
      target = max(targets, key=len)  # the most specific rule
      origin_path = by_name.get((*copies[target], *names[len(target):]))
      variable = flat[kind][path]
      if origin_path is not None and flat[kind][origin_path].shape == variable.shape:
        # A buffer of its own: the train step donates every parameter's.
        flat[kind][path] = variable.replace(jnp.copy(flat[kind][origin_path].value))
        counts[target] = counts.get(target, 0) + 1
  return counts
