"""The part of an experiment every system shares: mesh, checkpoints, the abstract sharded model,
and starting from earlier runs (config.init, sltjax/experiments/warm_start.py)."""
import functools
from collections.abc import Callable

import jax
import numpy as np
import tqdm
from flax import nnx
from jax.experimental import multihost_utils

from sltjax import config_overrides, sharding, storage
from sltjax.checkpointing import Checkpointer, read_best_variables
from sltjax.data import batching
from sltjax.errors import UserError
from sltjax.experiments import warm_start
from sltjax.metrics import selection_score
from sltjax.models.systems import ipslt

# What an experiment can do beyond training and evaluating (Experiment.capabilities); the command
# that needs one asks the experiment, never the system's name.
TRANSLATE_VIDEOS = 'translate_videos'  # python -m sltjax.translate: videos -> text (and glosses)
EXTRACT_FEATURES = 'extract_features'  # --mode=extract_features: a backbone's features dataset
DECODE_GLOSSES = 'decode_glosses'  # predictions include recognised glosses
RETRIEVE = 'retrieve'  # text <-> video retrieval


def log(message: str) -> None:
  """Console message from process 0 (absl INFO is left to libraries, shown with --verbosity=0)."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(message)


class Experiment:
  """Subclasses are registered with sltjax.experiments.register, set the model with `set_model`
  and implement `train_dataset`, `loss` and `evaluate`; `check_config`, `capabilities`,
  `warm_starts`, `converted_parts` and `eval_variables` may be overridden.

  A system whose stages differ registers one class and lists a subclass per stage in STAGES;
  config.stage picks the class that runs (`for_config`)."""

  system = ''  # set by sltjax.experiments.register
  # Config keys the system reads beyond the shared ones (config_validation.REQUIRED_KEYS).
  REQUIRED_KEYS: tuple[str, ...] = ()
  # {config.stage: the subclass that runs it}; empty for a system of one stage.
  STAGES: dict[str, type] = {}
  # The metrics `evaluate` reports (eval.best_metric must be one); empty: not checked.
  METRICS: tuple[str, ...] = ()
  # Whether the model translates with an mBART-shaped encoder-decoder (built by
  # `translation_network`), which IP-SLT's model.prototype block refines.
  TRANSLATION_NETWORK = False
  # {old dotted key: new one} of keys this system renamed: refused in configs with a message
  # naming the new key, renamed in the configs saved in older workdirs (`upgrade_config`).
  MOVED_KEYS: dict[str, str] = {}
  # Config blocks whose presence alone changes the model (sltjax/workdirs.py compares them).
  OPTIONAL_MODEL_BLOCKS = (f'model.{ipslt.CONFIG_BLOCK}.',)

  @classmethod
  def for_config(cls, config) -> type:
    """The class that runs `config`: the STAGES entry of config.stage, or this class."""
    if not cls.STAGES:
      return cls
    stage = config.get('stage')
    if stage not in cls.STAGES:
      raise UserError(f'Invalid config: stage={stage!r} must be one of {tuple(cls.STAGES)} '
                      f'(system {cls.system!r}).')
    return cls.STAGES[stage]

  @classmethod
  def upgrade_config(cls, values: dict) -> dict:
    """A config saved by an older version (nested dicts), in today's keys: MOVED_KEYS renamed."""
    for old, new in cls.MOVED_KEYS.items():
      *old_parents, old_leaf = old.split('.')
      node = values
      for part in old_parents:
        node = node.get(part, {})
      if old_leaf in node:
        *new_parents, new_leaf = new.split('.')
        target = values
        for part in new_parents:
          target = target.setdefault(part, {})
        target[new_leaf] = node.pop(old_leaf)
    return values

  @classmethod
  def check_config(cls, config) -> list[str]:
    """Problems with this system's part of `config` (empty when valid), each saying what to
    set; run before any work starts. Overrides extend super()'s list."""
    problems = [f'{old} is now {new}: pass --config.{new}=...'
                for old, new in cls.MOVED_KEYS.items() if config_overrides.lookup(config, old)[1]]
    problems += warm_start.check_names(cls.warm_starts(config), config.get('init'))
    stage = f' stage {config.stage}' if cls.STAGES or 'stage' in config else ''
    problems += ipslt.config_problems(config.get('model', {}), cls.TRANSLATION_NETWORK,
                                      f'system {cls.system}{stage}')
    per = config.get('translation_loss_per', 'token')
    if per not in ('token', 'sentence'):
      problems.append(f'translation_loss_per={per!r}: set "sentence" (each sentence\'s token '
                      'losses summed, averaged over the batch, as the SLT releases) or "token" '
                      '(averaged over the target tokens)')
    best = config.get('eval', {}).get('best_metric')
    if cls.METRICS and best not in cls.METRICS:
      problems.append(f'the {cls.system}{stage} evaluation reports {", ".join(cls.METRICS)}: '
                      f'eval.best_metric must be one of them, not {best!r}')
    return problems

  @classmethod
  def warm_starts(cls, config) -> dict[str, warm_start.WarmStart]:
    """What each config.init.<name> fills and brings along (sltjax/experiments/warm_start.py)."""
    return {}

  def capabilities(self) -> frozenset[str]:
    """What this experiment, as configured, can do (TRANSLATE_VIDEOS, EXTRACT_FEATURES, ...)."""
    return frozenset()

  def require(self, capability: str, action: str) -> None:
    """Raises UserError saying that this workdir's model cannot `action`."""
    if capability not in self.capabilities():
      raise UserError(f'{self.workdir}: {action} is not possible with this {self.system!r} '
                      f'model ({self.describe()}); it can: '
                      f'{", ".join(sorted(self.capabilities())) or "only train and evaluate"}.')

  def describe(self) -> str:
    """A few words on what this experiment trains, for messages (with IP-SLT's when it is on)."""
    return self.model_summary() + ipslt.describe(self.prototype)

  def model_summary(self) -> str:
    """What `describe` says of the system's own model."""
    return self.system

  def __init__(self, config, workdir: str):
    problems = self.check_config(config)
    if problems:
      raise UserError('Invalid config: ' + '; '.join(problems) + '.')
    self.config, self.workdir = config, workdir
    # IP-SLT's refinement (config.model.prototype; only where TRANSLATION_NETWORK, checked above).
    self.prototype = ipslt.PrototypeConfig.from_model_config(config.get('model', {}))
    self._jitted = {}
    self.mesh = sharding.make_mesh(config.mesh, self.mesh_devices())
    log(f'Mesh {dict(self.mesh.shape)} over {self.mesh.size} devices in '
        f'{jax.process_count()} processes.')
    storage.make_folder(workdir)
    warm_start.bring_files(self.warm_starts(config), config.get('init'), workdir)

  def translation_network(self, cfg, rngs: nnx.Rngs):
    """The mBART-shaped translation network of `cfg` (an MBartConfig), refined by IP-SLT when
    config.model.prototype asks for it."""
    return ipslt.translation_network(cfg, self.prototype, rngs=rngs)

  def mesh_devices(self) -> list:
    """The devices the mesh spans: all of this job's."""
    return jax.devices()

  @functools.cached_property
  def checkpointer(self) -> Checkpointer:
    """The workdir's checkpoints, opened on first use: a run refused while its system is built
    (bad input) creates no checkpoint folders and starts none of orbax's threads."""
    return Checkpointer(self.workdir, self.config.keep_checkpoints)

  def start_directory(self, file_name: str) -> str:
    """The config.init directory that brings `file_name` along ('' when none is set)."""
    table = self.warm_starts(self.config)
    return next((directory for name, directory in
                 warm_start.sources(table, self.config.get('init')).items()
                 if file_name in table[name].files), '')

  # ------------------------------------------------------------------ model
  def set_model(self, make_model: Callable[[nnx.Rngs], nnx.Module]) -> None:
    """Records the model's structure, abstract variables and their shardings (nothing allocated)."""
    self.make_model = make_model
    abstract = nnx.eval_shape(lambda: make_model(nnx.Rngs(self.config.seed)))
    self.initial_copies = warm_start.initial_copies(abstract)
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

  def converted_parts(self) -> dict[tuple[str, ...], nnx.State]:
    """{parameter path prefix: state} read from converted weights other than sltjax
    directories (a torchvision backbone, say); applied before config.init's starts."""
    return {}

  def init_variables(self):
    """The variables training starts from: fresh, with `converted_parts` and config.init's
    starts (a workdir's best checkpoint or a converted directory) written over them, then the
    parts that start as copies of others (`warm_start.initial_copies`) copied where no start
    filled them."""
    params, rest = self.fresh_variables()
    table = self.warm_starts(self.config)
    starts = warm_start.sources(table, self.config.get('init'))
    parts = self.converted_parts()
    if not (starts or parts or self.initial_copies):
      return params, rest
    flat = {'params': dict(nnx.to_flat_state(params)), 'rest': dict(nnx.to_flat_state(rest))}
    written = set()
    for prefix, state in parts.items():
      for sub_path, variable in nnx.to_flat_state(state):
        kind = 'params' if isinstance(variable, nnx.Param) else 'rest'
        flat[kind][(*prefix, *sub_path)] = variable
        written.add((kind, (*prefix, *sub_path)))
    sources = {directory: read_best_variables(directory)  # each directory read once
               for directory in set(starts.values())}
    for name, directory in starts.items():
      source = sources[directory]
      for prefix in table[name].prefixes:
        grafted = warm_start.graft(flat, source, prefix, directory,
                                   derived=tuple(self.initial_copies))
        written |= grafted.copied
        log(f'init.{name}: {"/".join(prefix) or "the model"} <- {directory} '
            f'({len(grafted.copied)} tensors)')
        if grafted.left_out:
          log(f'init.{name}: {len(grafted.left_out)} tensors of {directory} have no place in '
              f'this model and were left out ({", ".join(grafted.left_out[:3])}, ...): it was '
              'trained with a part this config does not build (a model.prototype block?).')
    for target, count in warm_start.copy_initial(flat, self.initial_copies, written).items():
      log(f'init: {"/".join(target)} <- {"/".join(self.initial_copies[target])} '
          f'({count} tensors)')
    return (jax.device_put(nnx.from_flat_state(list(flat['params'].items())),
                           self.param_shardings),
            jax.device_put(nnx.from_flat_state(list(flat['rest'].items())), self.rest_shardings))

  def constrain(self, params):
    """The parameters after an optimizer update, brought back where the system keeps them (C2RL
    clamps its logit scale at ln 100); runs inside the jitted train step. Default: unchanged."""
    return params

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

  # ------------------------------------------------------------------ evaluation plumbing
  def jitted(self, name: str, fn, out_shardings=None):
    """fn(params, rest, batch) jitted once per name, the batch's rows (and, by default, the
    outputs' rows) sharded over the data-parallel axes, traced over the mesh as the train step is
    (so that per-frame backbones split their frames over every chip, sharding.constrain_frames)."""
    if name not in self._jitted:
      rows = sharding.batch_sharding(self.mesh)

      @functools.wraps(fn)
      def traced(*args):
        with sharding.tracing_mesh(self.mesh):
          return fn(*args)
      traced.__name__ = traced.__qualname__ = name  # the program's name (jit_<name> in HLO)

      self._jitted[name] = jax.jit(
          traced, in_shardings=(self.param_shardings, self.rest_shardings, rows),
          out_shardings=rows if out_shardings is None else out_shardings)
    return self._jitted[name]

  def search_options(self) -> dict:
    """The beam search's keyword arguments from config.eval (sltjax/decoding.py)."""
    ev = self.config.eval
    return dict(num_beams=ev.num_beams, max_new_tokens=ev.max_new_tokens,
                length_penalty=ev.length_penalty, length_penalty_style=ev.length_penalty_style,
                early_stopping=ev.early_stopping)

  @staticmethod
  def rows_in_order(batches, outputs):
    """(item index, {kind: value}) for every real row of `batches` (their 'index' column names
    the item; batching.PAD_INDEX marks filler rows), from outputs(local_batch) -> {kind: one value
    per row of the global batch}. All processes call this (outputs gathers across them)."""
    for local_batch in batches:
      indices = multihost_utils.process_allgather(local_batch['index'], tiled=True)
      values = outputs(local_batch)
      for row, index in enumerate(indices):
        if index != batching.PAD_INDEX:
          yield int(index), {kind: column[row] for kind, column in values.items()}

  @classmethod
  def outputs_in_order(cls, batches, outputs, size: int) -> dict[str, list]:
    """{kind: one value per item 0..size-1} from `rows_in_order`."""
    columns = {}
    for index, values in cls.rows_in_order(batches, outputs):
      for kind, value in values.items():
        columns.setdefault(kind, [None] * size)[index] = value
    return columns

  # ------------------------------------------------------------------ evaluation bookkeeping
  def score(self, metrics: dict[str, float]) -> float:
    """config.eval.best_metric as a higher-is-better number (WER is negated)."""
    return selection_score(metrics, self.config.eval.best_metric)

  def data_parallel_rows(self) -> int:
    """The smallest global batch every process and data-parallel device gets rows of."""
    return int(np.lcm(jax.process_count(), sharding.data_parallel_size(self.mesh)))

  def check_batch_size(self, name: str, batch_size: int) -> None:
    for divisor, what in ((jax.process_count(), 'JAX processes'),
                          (sharding.data_parallel_size(self.mesh), 'data-parallel devices')):
      if batch_size % divisor:
        raise UserError(f'{name}={batch_size} must be divisible by the number of {what} '
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

  def write_figures(self, directory: str, prefix: str) -> list[str]:
    """Writes what the last `evaluate` prepared beyond its text predictions (pictures) into
    `directory`, names starting with `prefix`; returns the paths. Called on process 0 only."""
    return []

  def evaluation_fn(self):
    """The jitted (params, rest, batch of eval-prepared clips) -> outputs program that
    evaluation runs on every batch (the beam search, where the stage translates), which
    --mode=compile compiles beside the training step; None where the stage has none."""
    return None

  def predict(self, params, rest, local_batch) -> dict[str, list[str]]:
    """{kind ('text', 'gloss', ...): one string per row} for a batch of eval-prepared clips
    ('frames', 'frame_mask'); experiments with TRANSLATE_VIDEOS give 'text' (python -m
    sltjax.translate), with DECODE_GLOSSES also 'gloss'."""
    raise NotImplementedError
