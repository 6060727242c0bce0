"""A run's workdir: its default name, and the config.json that ties it to one model and dataset.

Rerunning into a workdir resumes it, so the config must still describe the same run: keys that
change the model, the data or the optimisation must equal the saved ones; those that only change
how the run is watched, evaluated or laid out on devices (RESUMABLE_CHANGES) may differ.
"""
import json
import os

import jax
import ml_collections

from sltjax import experiments, storage
from sltjax.errors import UserError

CONFIG_FILE = 'config.json'
# Dotted prefixes of keys that may change between runs into one workdir.
RESUMABLE_CHANGES = ('eval.', 'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
                     'keep_checkpoints', 'total_steps', 'mesh.', 'data.num_workers',
                     'data.build_if_missing', 'data.data_dir', 'data.features_dir')


def default_workdir(config_argument: str, config) -> str:
  """workdirs/<config file>_<variant>[_<dataset>] for --config=configs/<file>.py[:variant,...]:
  the variant the config names (config.variant: one name for every spelling of the argument),
  else the argument's first part."""
  path, _, arg = config_argument.partition(':')
  first = arg.split(',')[0] if arg and '=' not in arg.split(',')[0] else 'default'
  variant = config.get('variant') or first
  parts = [os.path.splitext(os.path.basename(path))[0], variant]
  # A video dataset's name, or the corpus that text files (data.path) come from.
  dataset = (config.data.get('name') or config.data.get('corpus')) if 'data' in config else None
  if dataset:
    parts.append(dataset)
  return os.path.join('workdirs', '_'.join(parts))


def _flatten(tree, prefix=''):
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = list(value) if isinstance(value, tuple) else value
  return flat


def config_differences(saved: dict, config: dict) -> list[str]:
  """'key: saved -> new' for every key in both whose value differs and matters for resuming, and
  for every key of a block whose presence alone changes the model (the experiment's
  OPTIONAL_MODEL_BLOCKS) present on one side only."""
  saved, config = (experiments.upgrade_saved_config(saved),
                   experiments.upgrade_saved_config(config))
  optional_blocks = experiments.stage_class(ml_collections.ConfigDict(config)).OPTIONAL_MODEL_BLOCKS
  saved, config = _flatten(saved), _flatten(config)
  differences = [f'{key}: {saved[key]!r} -> {config[key]!r}'
                 for key in sorted(saved.keys() & config.keys()) if saved[key] != config[key]
                 and not any(key == p or key.startswith(p) for p in RESUMABLE_CHANGES)]
  one_side = sorted(key for key in saved.keys() ^ config.keys()
                    if any(key.startswith(p) for p in optional_blocks))
  shown = lambda values, key: repr(values[key]) if key in values else '(absent)'
  return differences + [f'{key}: {shown(saved, key)} -> {shown(config, key)}' for key in one_side]


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with, in today's keys (experiments.upgrade_saved_config)."""
  path = storage.join(workdir, CONFIG_FILE)
  storage.check_access(workdir, write=False)
  if not storage.path(path).is_file():
    raise UserError(f'{path} not found: this is not a training workdir (python -m sltjax.main '
                    '... --workdir=DIR writes it).')
  return ml_collections.ConfigDict(
      experiments.upgrade_saved_config(json.loads(storage.read_text(path))))


def prepare(workdir: str, config, mode: str) -> None:
  """Creates the workdir and writes config.json, refusing a config that differs from the saved
  one in what changes the run (the saved file is then left as it is)."""
  path = storage.join(workdir, CONFIG_FILE)
  if storage.path(path).is_file():
    saved = json.loads(storage.read_text(path))
    new = json.loads(config.to_json_best_effort())
    differences = config_differences(saved, new)
    if differences:
      raise UserError(
          f'{workdir} holds a run with another config ({path}); these keys differ:\n  '
          + '\n  '.join(differences[:30]) + '\nUse a new --workdir, or the same config to resume.')
    if mode != 'train':
      return  # eval and extraction leave the training config as it was
  storage.make_folder(workdir)
  if jax.process_index() == 0:
    storage.write_text(path, config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
