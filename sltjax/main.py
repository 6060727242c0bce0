r"""sltjax entry point.

  python -m sltjax.main --config=configs/gloss2text.py[:VARIANT] --workdir=DIR \
      [--config.a.b=value ...] [--mode=train|eval|extract_features]
  python -m sltjax.main --config=configs/c2rl.py:pretrain --mode=compile --topology=v5e-64

Multi-host (one process per host, or N processes on one machine):
  ... --coordinator_address=HOST:PORT --num_processes=N --process_id=I
On Cloud TPU VMs, --multihost alone lets JAX discover the pod slice.
"""
import json
import os

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from sltjax import command_line, config_overrides, config_validation, storage, workdirs
from sltjax.errors import UserError, exit_with_user_error

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file[:variant].',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, metrics, predictions (default: '
    'workdirs/<config>_<variant>).')
_MODE = flags.DEFINE_enum(
    'mode', 'train', ['train', 'eval', 'extract_features', 'compile'],
    'train (resumes if workdir has checkpoints), eval (best checkpoint), extract_features '
    '(video systems: the backbone\'s features of every split as a dataset in workdir/features) '
    'or compile (the training step and evaluation program compiled for --topology, a TPU slice, '
    'with their memory, FLOPs, collectives and roofline per chip; needs no dataset, weights or '
    'TPU: sltjax[tpu]).')
_TOPOLOGY = flags.DEFINE_string(
    'topology', None, '--mode=compile: the TPU slice, as Cloud TPU names it (v5e-64, v5p-128, '
    'v6e-256, v4-32) or as JAX does (v5e:8x8, v5p:4x4x4).')
_MULTIHOST = flags.DEFINE_bool('multihost', False, 'Call jax.distributed.initialize() (TPU pods, '
                               'SLURM, or the coordinator flags below).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of cooperating processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1.')
_COMPILATION_CACHE = flags.DEFINE_string(
    'compilation_cache', command_line.COMPILATION_CACHE,
    'Persistent XLA compilation cache directory ("" disables).')
flags.mark_flags_as_required(['config'])


def initialize_distributed() -> None:
  if not (_MULTIHOST.value or _COORDINATOR.value):
    return
  # Cross-process collectives between CPU devices (no effect on GPU/TPU). Must be set before
  # anything touches the backend, as must initialize().
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                             num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)


def shipped_configs() -> list[str]:
  """The system config files beside the sltjax package (configs/*.py, not the shared blocks)."""
  folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
  if not os.path.isdir(folder):
    return []
  return sorted(f'configs/{n}' for n in os.listdir(folder)
                if n.endswith('.py') and n not in ('common.py', '__init__.py'))


def parse_flags(argv):
  """absl's flag parsing, where a bad --config file, variant or override (a mistyped key, a
  value of the wrong type) ends with its message alone."""
  config_argument = None
  for previous, argument in zip(argv, argv[1:]):
    if argument.startswith('--config=') or previous == '--config':
      config_argument = argument.removeprefix('--config=')
      path = config_argument.split(':')[0]
      if not os.path.isfile(path):  # ml_collections would print a traceback and go on
        exit_with_user_error(f'--config={path}: no such config file (the shipped ones: '
                             f'{", ".join(shipped_configs()) or "none found"}).')
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e)
    if 'Traceback (most recent call last)' in message:  # raised by the config file's get_config
      last = [line for line in message.splitlines() if line.strip()][-1]
      exit_with_user_error(last.split(': ', 1)[-1])
    exit_with_user_error(f'{message}\nPass --helpfull for every flag.')
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    message = str(e).strip('\'"').replace("\\'", "'").replace('\\n', ' ')
    overrides = [a.split('=')[0] for a in argv[1:] if a.startswith('--config.')]
    missing_key = config_argument and config_overrides.explain_missing_key(
        config_argument, [o.removeprefix('--config.') for o in overrides])
    if missing_key:
      exit_with_user_error(missing_key)
    exit_with_user_error(f'{message} (config {" ".join(overrides) or "file"})')


def config_paths(config) -> list[str]:
  """Every gs:// path a config names (data, starts, pretrained weights, ...)."""
  found = []
  for value in config.values():
    if isinstance(value, ml_collections.ConfigDict):
      found += config_paths(value)
    elif isinstance(value, str) and storage.is_remote(value):
      found.append(value)
  return found


def check_storage(config, workdir: str) -> None:
  """Fails before anything starts, with one message naming the path, when the workdir or a
  gs:// path of the config is in a missing bucket or out of this account's reach."""
  storage.check_access(workdir, write=True)
  for location in config_paths(config):
    storage.check_access(location, write=False)


def compile_for_slice(config) -> None:
  """--mode=compile: the report table, then its JSON as the last line of stdout; exit 2 (one
  line) when the step does not fit the slice's chips."""
  if not _TOPOLOGY.value:
    raise UserError('--mode=compile needs --topology, the TPU slice to compile for (v5e-64, '
                    'v5p-128, v6e-256, v4-32, or JAX\'s v5e:8x8).')
  jax.config.update('jax_platforms', 'cpu')  # compiled for the slice, run nowhere
  from sltjax import compile_check  # pylint: disable=import-outside-toplevel
  report = compile_check.compile_report(config, _TOPOLOGY.value)
  print(compile_check.format_report(report, flags.FLAGS['config'].config_filename))
  print(json.dumps(report, sort_keys=True))
  compile_check.check_fits(report, config)


def main(argv):
  try:
    run(argv)
  except UserError as e:
    exit_with_user_error(str(e))


def run(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # --mode=compile compiles for another platform: nothing to keep.
  command_line.start('' if _MODE.value == 'compile' else _COMPILATION_CACHE.value)
  config = _CONFIG.value
  if _MODE.value == 'compile':  # validated as built from its shapes (no files)
    compile_for_slice(config)
    return
  config_validation.validate(config)
  initialize_distributed()
  workdir = _WORKDIR.value or workdirs.default_workdir(flags.FLAGS['config'].config_filename,
                                                       config)
  check_storage(config, workdir)
  workdirs.prepare(workdir, config, _MODE.value)
  from sltjax import train  # pylint: disable=import-outside-toplevel  (after distributed init)
  if _MODE.value == 'train':
    results = train.train_and_evaluate(config, workdir)
  elif _MODE.value == 'eval':
    results = train.evaluate_checkpoint(config, workdir)
  else:
    results = train.extract_features(config, workdir)
  if jax.process_index() == 0:
    print(json.dumps({'mode': _MODE.value, **results}, sort_keys=True))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
