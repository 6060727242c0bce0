"""Checks a training config before any work starts, with messages that say what to fix: the keys
every system shares here, the system's own through its experiment's `check_config`."""
from sltjax import experiments
from sltjax.data.tokenizers import PRETRAINED_TOKENIZERS
from sltjax.errors import UserError
from sltjax.metrics import HIGHER_IS_BETTER

REQUIRED_KEYS = ('seed', 'total_steps', 'batch_size', 'log_every_steps', 'eval_every_steps',
                 'checkpoint_every_steps', 'mesh')
POSITIVE_INTS = ('total_steps', 'batch_size', 'log_every_steps', 'checkpoint_every_steps')


def _get(config, dotted: str):
  node = config
  for part in dotted.split('.'):
    node = node[part]
  return node


def validate(config) -> None:
  """Raises UserError naming every missing key or invalid value of `config`."""
  experiment = experiments.stage_class(config)
  problems = []
  for key in REQUIRED_KEYS + experiment.REQUIRED_KEYS:
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
  if 'eval' in config and config.eval.get('best_metric') not in HIGHER_IS_BETTER:
    problems.append(f'eval.best_metric={config.eval.get("best_metric")!r} is not one of '
                    f'{sorted(HIGHER_IS_BETTER)}')
  tokenizer = config.get('tokenizer') or {}
  if tokenizer.get('path') and tokenizer.get('kind') not in PRETRAINED_TOKENIZERS:
    problems.append(f'tokenizer.path={tokenizer.path!r} is read only when tokenizer.kind is one '
                    f'of {sorted(PRETRAINED_TOKENIZERS)}; kind={tokenizer.get("kind")!r} builds '
                    'its vocabulary from the training texts: set tokenizer.kind, or drop '
                    'tokenizer.path')
  if not problems:
    problems = experiment.check_config(config)
  if problems:
    raise UserError('Invalid config: ' + '; '.join(problems) + '.')
