"""Temporal sampling: which frame indices of a T-frame clip a model sees.

A strategy is a function (num_frames, rng, train) -> sorted int indices [n] into the clip's
frames (repeats allowed) that uses `rng` only when `train` is true, so that evaluation is
deterministic. `config.data.sampling` names one: 'all' is built in; a system registers its
published recipe with `@register('<name>')` in its own module (sltjax/experiments/<system>.py),
as it registers its experiment.
"""
from collections.abc import Callable

import numpy as np

Strategy = Callable[[int, np.random.Generator, bool], np.ndarray]
_STRATEGIES: dict[str, Strategy] = {}


def register(name: str):
  """Function decorator: makes the strategy available as config.data.sampling = name."""
  def add(fn: Strategy) -> Strategy:
    if _STRATEGIES.get(name, fn) is not fn:
      raise ValueError(f'Two sampling strategies registered as {name!r}: {_STRATEGIES[name]} '
                       f'and {fn}.')
    _STRATEGIES[name] = fn
    return fn
  return add


@register('all')
def all_frames(num_frames: int, rng: np.random.Generator, train: bool) -> np.ndarray:
  del rng, train
  return np.arange(num_frames)


def strategy(name: str) -> Strategy:
  """The strategy registered as `name`; a ValueError listing the registered ones otherwise."""
  if name not in _STRATEGIES:
    raise ValueError(f'data.sampling={name!r} is not a registered sampling strategy; registered: '
                     f'{sorted(_STRATEGIES)} (a system registers its own with '
                     'sltjax.data.sampling.register when its experiment module is imported).')
  return _STRATEGIES[name]


def sample_frames(name_or_strategy: str | Strategy, num_frames: int, rng: np.random.Generator,
                  train: bool, max_frames: int = 0) -> np.ndarray:
  """Indices [n] of the frames the strategy (or the one registered under that name) picks, then
  at most `max_frames` of them (evenly spaced)."""
  pick = (strategy(name_or_strategy) if isinstance(name_or_strategy, str)
          else name_or_strategy)
  indices = pick(num_frames, rng, train)
  if max_frames and len(indices) > max_frames:
    indices = indices[np.linspace(0, len(indices) - 1, max_frames).round().astype(int)]
  return indices
