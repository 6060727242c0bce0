"""The system registry: what each system gives the training loop (sltjax/train.py), found by
config.system.

A system registers its experiment class with `@register('<name>')` in its own module. Built-in
systems live in `sltjax/experiments/<name>.py` and are imported on first use; a system defined
elsewhere is named by its module's import path (config.system = 'my_package.my_system'), which
registers it under that path when imported. Nothing else in sltjax names a system.
"""
import importlib
import json

from sltjax.errors import UserError

# Workdirs written before config.system existed trained Gloss2Text.
LEGACY_SYSTEM = 'gloss2text'
# Modules of this package that hold what systems share, not a system.
SHARED_MODULES = ('base', 'video', 'retrieval', 'warm_start', 'shapes_only')
_REGISTRY: dict[str, type] = {}


def register(name: str):
  """Class decorator: makes the experiment class available as config.system = name."""
  def add(cls):
    if _REGISTRY.get(name, cls) is not cls:
      raise ValueError(f'Two experiments registered as system {name!r}: {_REGISTRY[name]} and '
                       f'{cls}.')
    _REGISTRY[name] = cls
    cls.system = name
    return cls
  return add


def system_name(config) -> str:
  return config.get('system', LEGACY_SYSTEM)


def experiment_class(name: str) -> type:
  """The experiment registered as `name`, importing its module on first use."""
  if name not in _REGISTRY:
    module = f'sltjax.experiments.{name}' if '.' not in name else name
    try:
      importlib.import_module(module)
    except ModuleNotFoundError as e:
      if e.name not in (module, module.rpartition('.')[0]):
        raise  # the system's module exists but one of its imports does not
  if name not in _REGISTRY:
    raise UserError(f'config.system={name!r} is not a registered system; built in: '
                     f'{", ".join(sorted(builtin_systems()))} (or the import path of a module '
                     'that registers one with sltjax.experiments.register).')
  return _REGISTRY[name]


def builtin_systems() -> list[str]:
  """Names of the systems shipped in sltjax/experiments/."""
  import pkgutil  # pylint: disable=import-outside-toplevel
  return [m.name for m in pkgutil.iter_modules(__path__) if m.name not in SHARED_MODULES]


def stage_class(config) -> type:
  """The experiment class that runs `config`: its system's, or that system's class for
  config.stage (UserError for a stage the system does not have)."""
  return experiment_class(system_name(config)).for_config(config)


def upgrade_saved_config(values: dict) -> dict:
  """A config saved in a workdir (nested dicts), in today's keys: one without `system` was written
  by LEGACY_SYSTEM before the key existed; the system renames its moved keys."""
  values = json.loads(json.dumps(values))
  values.setdefault('system', LEGACY_SYSTEM)
  return experiment_class(values['system']).upgrade_config(values)


def create(config, workdir: str):
  """The experiment of config.system (and config.stage) for `workdir`."""
  return stage_class(config)(config, workdir)
