"""Explains a `--config.KEY=VALUE` override that names a key the chosen config does not have:
which key, which config file and variant, the nearest keys it does have, and for a key that
other variants or datasets of the same file have (data.path: text files; data.data_dir: a built
video dataset), which of them to choose instead."""
import contextlib
import difflib
import io
import importlib.util
import os
import sys

import ml_collections

# What a variant reads its data from, by the key that names it.
DATA_SOURCES = (('data.path', 'text files from data.path'),
                ('data.features_dir', 'pre-extracted features from data.features_dir'),
                ('data.data_dir', 'the built video dataset {data.name} from data.data_dir'))


def load_config_module(path: str):
  """The config file at `path` as a module (as ml_collections loads it: the working directory
  on the import path, so that `from configs import common` works)."""
  if os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())
  spec = importlib.util.spec_from_file_location('_sltjax_config_to_explain', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def lookup(config, dotted: str):
  """(value, True) where `config` has the dotted key, else (None, False)."""
  node = config
  for part in dotted.split('.'):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
      return None, False
    node = node[part]
  return node, True


def _missing_part(config, dotted: str) -> tuple[str, ml_collections.ConfigDict] | None:
  """(the longest prefix of `dotted` that exists, its node) where the key is missing, else
  None. The prefix is '' when the first part is already missing."""
  node, prefix = config, ''
  for part in dotted.split('.'):
    if not isinstance(node, (ml_collections.ConfigDict, dict)):
      return None  # a leaf's attribute: a type problem, not a missing key
    if part not in node:
      return prefix, node
    node, prefix = node[part], f'{prefix}.{part}'.lstrip('.')
  return None


def _nearest_keys(node, prefix: str, name: str, limit: int = 4) -> list[str]:
  """The `limit` keys of `node` most similar to `name`, as dotted keys under `prefix`."""
  similarity = lambda key: difflib.SequenceMatcher(None, name, key).ratio()
  keys = sorted(node.keys(), key=lambda k: (-similarity(k), k))[:limit]
  return [f'{prefix}.{k}'.lstrip('.') for k in keys]


def _data_source(config) -> str | None:
  """What `config` reads its data from, in words: the first key of DATA_SOURCES it sets."""
  for key, words in DATA_SOURCES:
    value, present = lookup(config, key)
    if present and value:
      return words.replace('{data.name}', str(lookup(config, 'data.name')[0] or ''))
  return None


def _choices_with_key(module, config_file: str, dotted: str, variant: str) -> list[str]:
  """`config_file:variant,dataset=NAME` arguments whose configs have `dotted`: the same
  variant's other datasets first, then other variants. Empty when the file has no VARIANTS or
  the dataset table cannot be imported."""
  try:
    from configs import common  # pylint: disable=import-outside-toplevel
  except ImportError:
    return []
  first = common.LOCAL_DATASET if common.LAPTOP in variant else common.DEFAULT_DATASET
  datasets = [first] + [d for d in common.DATASETS if d != first]
  variants = tuple(getattr(module, 'VARIANTS', ()))
  ordered = ([variant] if variant in variants else []) + [v for v in variants if v != variant]
  found = []
  for candidate in ordered:
    for dataset in datasets:
      try:
        with contextlib.redirect_stderr(io.StringIO()):  # notes on older spellings
          config = module.get_config(f'{candidate},dataset={dataset}')
      except Exception:  # pylint: disable=broad-except  (a combination the file refuses)
        continue
      if lookup(config, dotted)[1]:
        found.append(f'{config_file}:{common.spelling(candidate)},dataset={dataset}')
  return found


def _moved_keys(config) -> dict[str, str]:
  """The MOVED_KEYS of the config's system ({} when it cannot be found)."""
  from sltjax import experiments  # pylint: disable=import-outside-toplevel
  try:
    return experiments.experiment_class(experiments.system_name(config)).MOVED_KEYS
  except Exception:  # pylint: disable=broad-except  (the config's own error explains it)
    return {}


def explain_missing_key(config_argument: str, overrides: list[str]) -> str | None:
  """One message for the first override in `overrides` (dotted keys, without `--config.`)
  that the config named by `config_argument` ('FILE[:ARG]') lacks; None when every key exists
  (the error was something else) or the config cannot be built without the overrides."""
  config_file, _, argument = config_argument.partition(':')
  try:
    module = load_config_module(config_file)
    config = module.get_config(argument or None)
  except Exception:  # pylint: disable=broad-except  (explained by the file's own error instead)
    return None
  moved = _moved_keys(config)
  for dotted in overrides:
    missing = _missing_part(config, dotted)
    if missing is None:
      continue
    if dotted in moved:
      return f'--config.{dotted} is now --config.{moved[dotted]}.'
    prefix, node = missing
    name = dotted[len(prefix):].lstrip('.').split('.')[0]
    message = (f'--config.{dotted}: {config_argument} has no key {dotted}; the nearest keys it '
               f'has: {", ".join(_nearest_keys(node, prefix, name))}.')
    source = _data_source(config) if dotted.startswith('data.') else None
    if source:
      message += f' This variant reads {source}.'
    variant = config.get('variant') or argument.split(',')[0].strip()
    choices = _choices_with_key(module, config_file, dotted, variant)
    if choices:
      shown = ' or '.join(f'--config={c}' for c in choices[:2])
      more = f' (and {len(choices) - 2} more)' if len(choices) > 2 else ''
      message += f' {dotted} exists in {shown}{more}.'
    return message
  return None
