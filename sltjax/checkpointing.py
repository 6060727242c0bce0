"""orbax checkpoints: the latest N training states (for resume) and the best model (for eval).

workdir/checkpoints/<step>/{state, data, meta}: parameters, non-trainable variables and optimizer
  state; the grain iterator position; JSON bookkeeping (best dev score so far, ...).
workdir/best/<step>/{params, meta}: the model that scored best on the dev metric, and its scores.
Saves are atomic (orbax writes a temporary directory, then renames), so a process killed during a
save leaves the previous checkpoint intact and the partial one is removed at the next start.
SIGTERM (a preemption notice) makes the trainer save at the current step and exit with 143.
"""
import signal
import sys

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from sltjax import storage
from sltjax.errors import MissingInputError, UserError


def _manager(directory: str, item_names: tuple[str, ...], keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      directory, item_names=item_names,
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           cleanup_tmp_directories=True,
                                           enable_async_checkpointing=False))


class Checkpointer:

  def __init__(self, workdir: str, keep: int):
    self.workdir = workdir = storage.absolute(workdir)  # orbax wants absolute local paths
    self.latest = _manager(storage.join(workdir, 'checkpoints'), ('state', 'data', 'meta'), keep)
    self.best = _manager(storage.join(workdir, 'best'), ('params', 'meta'), 1)
    # orbax removes a killed run's unfinished saves in a background thread and waits for it
    # only before its next save: a command that ends sooner (an evaluation refused at once)
    # left that thread failing at interpreter exit, with a traceback after the message.
    # (A private method in orbax 0.12.8: skipped if a later release drops it.)
    for manager in (self.latest, self.best):
      getattr(manager, '_maybe_await_cleanup_tmp_directory', lambda: None)()

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save(self, step: int, state, data_iterator, meta: dict) -> None:
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator),
        meta=ocp.args.JsonSave(meta)))

  def restore(self, abstract_state, data_iterator):
    """(state, meta) of the newest readable checkpoint, placed as `abstract_state`; the iterator
    is reset in place to its saved position.

    A checkpoint that cannot be read (files truncated or missing) is moved, whole, to
    workdir/damaged_checkpoints/<step> (never deleted: it may be recoverable) and the one before
    it is tried; the run then redoes the steps after it.
    """
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        restored = self.latest.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iterator), meta=ocp.args.JsonRestore()))
        return restored.state, restored.meta
      except Exception as e:  # pylint: disable=broad-except  (orbax/TensorStore raise many kinds)
        reason = str(e).splitlines()[0][:300]
      multihost_utils.sync_global_devices(f'checkpoint {step} unreadable')
      target = storage.join(self.workdir, 'damaged_checkpoints', str(step))
      if jax.process_index() == 0:
        storage.move_folder(self.latest.directory / str(step), target)
      multihost_utils.sync_global_devices(f'checkpoint {step} moved')
      self.latest.reload()
      print(f'warning: checkpoint of step {step} is unreadable ({reason}); moved it to {target} '
            'and resumed from the one before.', file=sys.stderr)
    raise UserError(f'No readable checkpoint under {self.latest.directory} (the unreadable ones '
                    f'are in {storage.join(self.workdir, "damaged_checkpoints")}): move them back '
                    'if they can be repaired, or start again in a new workdir.')

  def discard_best_after(self, step: int) -> None:
    """Removes best checkpoints newer than `step`: left by a run that crashed before its next
    regular checkpoint, they are recreated identically as the resumed run gets there again."""
    for stale in [s for s in self.best.all_steps() if s > step]:
      self.best.delete(stale)

  def save_best(self, step: int, params, meta: dict) -> None:
    self.best.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                 meta=ocp.args.JsonSave(meta)), force=True)

  def restore_best(self, abstract_params):
    step = self.best.latest_step()
    if step is None:
      raise MissingInputError(f'No best checkpoint under {self.best.directory}: train first '
                              '(--mode=train) with evaluation enabled.')
    try:
      restored = self.best.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_params), meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except  (orbax/TensorStore raise many kinds)
      raise UserError(
          f'The best checkpoint {self.best.directory}/{step} cannot be read '
          f'({str(e).splitlines()[0][:300]}). Its files are damaged or incomplete: restore them '
          'from a copy, or move that folder away and score a training checkpoint by resuming '
          'training (it keeps a new best/).') from e
    return restored.params, restored.meta

  def close(self) -> None:
    self.latest.close()
    self.best.close()


class Preempted(SystemExit):
  """Raised after a preemption checkpoint was saved; exits with 143 (killed by SIGTERM)."""

  def __init__(self):
    super().__init__(143)


class PreemptionWatcher:
  """Says when the run was asked to stop (SIGTERM), at a step every process agrees on.

  Multi-process runs use JAX's preemption sync point (the coordinator propagates the notice and
  picks a common step); a single process watches SIGTERM itself.
  """

  def __init__(self):
    self._requested = False
    if jax.process_count() == 1:
      signal.signal(signal.SIGTERM, self._request)

  def _request(self, signum, frame):  # pylint: disable=unused-argument
    self._requested = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested


def read_best_variables(directory: str) -> dict[tuple[str, ...], object]:
  """{path: array} of the model in a training workdir's best checkpoint or in a pretrained
  directory (`python -m sltjax.convert`), for starting another stage from it.

  Paths are tuples of strings ('params'|'rest', 'head', 'conv1', 'kernel'), without orbax's
  trailing 'value'; arrays are host numpy.
  """
  directory = storage.absolute(directory)
  storage.check_access(directory, write=False)
  best = storage.path(directory) / 'best'
  if best.is_dir():
    steps = [int(p.name) for p in best.iterdir() if p.name.isdigit()]
    if not steps:
      raise MissingInputError(f'{best} holds no checkpoint: train that stage first.')
    path = best / str(max(steps)) / 'params'
  elif (storage.path(directory) / 'model').is_dir():
    path = storage.path(directory) / 'model'
  else:
    raise MissingInputError(f'{directory} is neither a training workdir (with best/) nor a '
                            'pretrained directory (with model/).')
  with ocp.StandardCheckpointer() as checkpointer:
    tree = checkpointer.restore(path)
  flat = {}
  for keys, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
    names = tuple(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in keys)
    flat[names[:-1] if names[-1] == 'value' else names] = value
  return flat
