"""The part of an experiment every system shares: mesh, checkpoints, the abstract sharded model."""
from collections.abc import Callable

import jax
import numpy as np
import tqdm
from flax import nnx

from sltjax import sharding
from sltjax.checkpointing import Checkpointer
from sltjax.metrics import LOWER_IS_BETTER


def log(message: str) -> None:
  """Console message from process 0 (absl INFO is left to libraries, shown with --verbosity=0)."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(message)


class Experiment:
  """Subclasses set the model with `set_model` and implement `train_dataset`, `loss` and
  `evaluate`; `init_variables` and `eval_variables` may be overridden (pretrained starts)."""

  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, workdir
    self.mesh = sharding.make_mesh(config.mesh)
    log(f'Mesh {dict(self.mesh.shape)} over {jax.device_count()} devices in '
        f'{jax.process_count()} processes.')
    self.checkpointer = Checkpointer(workdir, config.keep_checkpoints)

  # ------------------------------------------------------------------ model
  def set_model(self, make_model: Callable[[nnx.Rngs], nnx.Module]) -> None:
    """Records the model's structure, abstract variables and their shardings (nothing allocated)."""
    self.make_model = make_model
    abstract = nnx.eval_shape(lambda: make_model(nnx.Rngs(self.config.seed)))
    self.graphdef, self.abstract_params, self.abstract_rest = nnx.split(abstract, nnx.Param, ...)
    self.param_shardings = sharding.named_shardings(self.abstract_params, self.mesh)
    self.rest_shardings = sharding.named_shardings(self.abstract_rest, self.mesh)

  def abstract_variables(self) -> dict:
    """{'params', 'rest'} as ShapeDtypeStructs carrying their shardings (restore targets)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        {'params': self.abstract_params, 'rest': self.abstract_rest},
                        {'params': self.param_shardings, 'rest': self.rest_shardings})

  def fresh_variables(self):
    """(params, rest) initialised from config.seed, each array created on its shards."""
    def init():
      return nnx.split(self.make_model(nnx.Rngs(self.config.seed)), nnx.Param, ...)[1:]
    return jax.jit(init, out_shardings=(self.param_shardings, self.rest_shardings))()

  def init_variables(self):
    """The variables training starts from (fresh unless the config names a pretrained start)."""
    return self.fresh_variables()

  def eval_variables(self):
    """(params, rest, step) that --mode=eval scores: the best checkpoint of the workdir."""
    restored, meta = self.checkpointer.restore_best(self.abstract_variables())
    return restored['params'], restored['rest'], meta['step']

  def merge(self, params, rest):
    return nnx.merge(self.graphdef, params, rest)

  def global_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Assembles the processes' local rows into global arrays sharded over the batch axes."""
    return {k: jax.make_array_from_process_local_data(sharding.batch_sharding(self.mesh), v)
            for k, v in local_batch.items()}

  # ------------------------------------------------------------------ evaluation bookkeeping
  def score(self, metrics: dict[str, float]) -> float:
    """config.eval.best_metric as a higher-is-better number (WER is negated)."""
    name = self.config.eval.best_metric
    return -metrics[name] if name in LOWER_IS_BETTER else metrics[name]

  def data_parallel_rows(self) -> int:
    """The smallest global batch every process and data-parallel device gets rows of."""
    return int(np.lcm(jax.process_count(), sharding.data_parallel_size(self.mesh)))

  def check_batch_size(self, name: str, batch_size: int) -> None:
    for divisor, what in ((jax.process_count(), 'JAX processes'),
                          (sharding.data_parallel_size(self.mesh), 'data-parallel devices')):
      if batch_size % divisor:
        raise ValueError(f'{name}={batch_size} must be divisible by the number of {what} '
                         f'({divisor}).')

  # ------------------------------------------------------------------ per system
  def train_dataset(self):
    """A checkpointable grain iterator-dataset of this process's training batches."""
    raise NotImplementedError

  def loss(self, model, batch, rngs: nnx.Rngs):
    """(scalar loss, {name: scalar}) for one global batch; 'tokens'/'frames' also get a rate."""
    raise NotImplementedError

  def evaluate(self, params, rest, split: str):
    """(metrics, {kind: predictions in split order}) for `split`."""
    raise NotImplementedError
