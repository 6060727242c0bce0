"""Checks a training config before any work starts, with messages that say what to fix."""
from sltjax.metrics import GLOSS_METRIC_NAMES, METRIC_NAMES

REQUIRED_KEYS = ('seed', 'total_steps', 'batch_size', 'log_every_steps', 'eval_every_steps',
                 'checkpoint_every_steps', 'mesh')
# Where each system's data lives: text folders (Gloss2Text) or a built video dataset (MMTLB).
DATA_KEYS = {'gloss2text': ('data.path',), 'mmtlb': ('data.name', 'data.data_dir')}
POSITIVE_INTS = ('total_steps', 'batch_size', 'log_every_steps', 'checkpoint_every_steps')


def _get(config, dotted: str):
  node = config
  for part in dotted.split('.'):
    node = node[part]
  return node


def validate(config) -> None:
  """Raises ValueError naming every missing key or invalid value of `config`."""
  problems = []
  for key in REQUIRED_KEYS + DATA_KEYS.get(config.get('system', 'gloss2text'), ()):
    try:
      _get(config, key)
    except (KeyError, AttributeError):
      problems.append(f'missing required key "{key}"')
  for key in POSITIVE_INTS:
    try:
      value = _get(config, key)
    except (KeyError, AttributeError):
      continue
    if not isinstance(value, int) or value <= 0:
      problems.append(f'{key}={value!r} must be a positive integer')
  if 'eval_every_steps' in config and (config.eval_every_steps or 0) < 0:
    problems.append(f'eval_every_steps={config.eval_every_steps} must be >= 0 (0: never)')
  if 'data' in config and 'path' in config.data and not config.data.path:
    problems.append('data.path is empty: point it at the dataset directory')
  metric_names = METRIC_NAMES + GLOSS_METRIC_NAMES
  if 'eval' in config and config.eval.get('best_metric') not in metric_names:
    problems.append(f'eval.best_metric={config.eval.get("best_metric")!r} is not one of '
                    f'{list(metric_names)}')
  if config.get('system', 'gloss2text') == 'mmtlb':
    if config.model.backbone == 'features' and not config.data.get('features_dir'):
      problems.append('model.backbone="features" trains on a features dataset: set '
                      'data.features_dir (written by --mode=extract_features into '
                      '<workdir>/features)')
    if config.get('stage') == 'sign2gloss' and config.eval.best_metric not in GLOSS_METRIC_NAMES:
      problems.append(f'stage sign2gloss has no translation: eval.best_metric must be one of '
                      f'{list(GLOSS_METRIC_NAMES)}')
  elif 'model' in config and not config.model.get('init_from'):
    if 'd_model' not in config.model:
      problems.append('model.init_from is empty: this variant fine-tunes a pretrained model; '
                      'pass --config.model.init_from=DIR (written by python -m sltjax.convert)')
    elif 'tokenizer' in config and config.tokenizer.kind == 'mbart' and not config.tokenizer.path:
      problems.append('tokenizer.kind="mbart" needs tokenizer.path (an mBART tokenizer directory) '
                      'or model.init_from')
  if problems:
    raise ValueError('Invalid config: ' + '; '.join(problems) + '.')
