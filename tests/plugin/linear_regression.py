"""A system defined outside sltjax, for tests: least-squares regression of y = x . w_true.

It exists to show that a new system is its own module plus a config and needs no edit to any
shared file: it registers itself under its import path, declares its metric's direction, and
sltjax.main trains, evaluates, checkpoints and resumes it like any built-in system.
"""
import grain
import jax
import jax.numpy as jnp
import numpy as np

from sltjax import experiments, metrics
from sltjax.data import batching
from sltjax.experiments.base import Experiment
from sltjax.models.layers.dense import dense

NAME = 'tests.plugin.linear_regression'
metrics.register_metric('mse', higher_is_better=False)
TRUE_WEIGHTS = np.array([1.5, -2.0, 0.5, 3.0], np.float32)


def split_data(split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
  """(x [size, 4], y [size]) of a split, the same on every call."""
  x = np.random.default_rng(len(split)).normal(size=(size, 4)).astype(np.float32)
  return x, x @ TRUE_WEIGHTS


class Loader(grain.transforms.Map):

  def __init__(self, x, y):
    self.x, self.y = x, y

  def map(self, indices):  # global batch of record indices -> this process's rows
    rows = batching.local_rows(indices, jax.process_index(), jax.process_count())
    safe = np.maximum(rows, 0)
    return {'x': self.x[safe], 'y': self.y[safe], 'index': rows}


@experiments.register(NAME)
class LinearRegression(Experiment):
  REQUIRED_KEYS = ('data.train_size',)

  @classmethod
  def check_config(cls, config):
    return [] if config.data.train_size >= config.batch_size else [
        f'data.train_size={config.data.train_size} is smaller than batch_size']

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    self.set_model(lambda rngs: dense(4, 1, ('embed', 'mlp'), dtype='float32',
                                      param_dtype='float32', rngs=rngs))

  def train_dataset(self):
    x, y = split_data('train', self.config.data.train_size)
    plan = batching.train_plan(len(x), self.config.batch_size, self.config.seed)
    return batching.make_dataset(plan, Loader(x, y), num_workers=0)

  def loss(self, model, batch, rngs):
    error = model(batch['x'])[:, 0] - batch['y']
    return jnp.mean(error ** 2), {}

  def evaluate(self, params, rest, split):
    x, y = split_data(split, 32)
    predictions = np.asarray(self.merge(params, rest)(jnp.asarray(x)))[:, 0]
    return {'mse': float(np.mean((predictions - y) ** 2))}, {
        'text': [f'{p:.4f}' for p in predictions]}
