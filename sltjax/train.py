"""train_and_evaluate(config, workdir): the sltjax training loop, in sections, for every system.

experiment (mesh, data, model: sltjax/experiments/) -> optimizer and sharded state -> jitted
update step -> restore or start -> loop (log, evaluate + keep best, checkpoint) -> final report.
`evaluate_checkpoint` scores the best checkpoint on any split (--mode=eval); `extract_features`
writes a video model's backbone features as a dataset (--mode=extract_features).
"""
import math
import time

import jax
import jax.numpy as jnp
import optax
import tqdm
from flax import nnx

from sltjax import experiments, sharding
from sltjax.checkpointing import Preempted, PreemptionWatcher
from sltjax.errors import UserError
from sltjax.experiments.base import EXTRACT_FEATURES, log
from sltjax.metric_writers import MetricWriter
from sltjax.optim import frozen_mask, make_optimizer, trained_parameter_count

# Step metrics that also get a per-second rate in the logs.
RATE_METRICS = ('tokens', 'frames')


class NonFiniteLossError(RuntimeError):
  """Training produced NaN/Inf; the last good checkpoint is kept untouched."""


def build_experiment(config, workdir: str):
  """The system's experiment (sltjax/experiments/) for config.system."""
  return experiments.create(config, workdir)


def abstract_train_state(exp, tx: optax.GradientTransformation) -> dict:
  """{'params', 'rest', 'opt_state', 'step'} as ShapeDtypeStructs carrying their shardings."""
  abstract_opt_state = jax.eval_shape(tx.init, exp.abstract_params)
  shardings = {'params': exp.param_shardings, 'rest': exp.rest_shardings,
               'opt_state': sharding.named_shardings(abstract_opt_state, exp.mesh),
               'step': sharding.replicated(exp.mesh)}
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      {'params': exp.abstract_params, 'rest': exp.abstract_rest,
                       'opt_state': abstract_opt_state,
                       'step': jax.ShapeDtypeStruct((), jnp.int32)}, shardings)


def make_train_step(exp, tx: optax.GradientTransformation, schedule, state_shardings):
  """Jitted update: (state, batch) -> (state, metrics); the state's buffers are donated.

  The model's non-trainable variables (BatchNorm statistics) come out of the forward pass
  updated and are carried in state['rest'].
  """
  dropout_root = jax.random.key(exp.config.seed + 1)
  frozen = frozen_mask(exp.config, exp.abstract_params)

  def train_step(state, batch):
    dropout_key = jax.random.fold_in(dropout_root, state['step'])

    def loss_fn(params):
      # Frozen parameters are constants of the loss: no backward pass is computed for them.
      params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen)
      model = nnx.merge(exp.graphdef, params, state["rest"], copy=True)
      loss, metrics = exp.loss(model, batch, nnx.Rngs(dropout=dropout_key))
      return loss, (metrics, nnx.split(model, nnx.Param, ...)[2])

    with sharding.tracing_mesh(exp.mesh):
      (loss, (metrics, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = exp.constrain(optax.apply_updates(state['params'], updates))
    new_state = dict(state, params=params, rest=rest, opt_state=opt_state, step=state['step'] + 1)
    metrics = {**metrics, 'loss': loss, 'grad_norm': optax.global_norm(grads),
               'learning_rate': schedule(state['step']),
               # A finite loss can still come with a non-finite update: check both.
               'finite': jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(params))}
    return new_state, metrics

  return jax.jit(train_step,
                 in_shardings=(state_shardings, sharding.batch_sharding(exp.mesh)),
                 out_shardings=(state_shardings, sharding.replicated(exp.mesh)),
                 donate_argnums=0)


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Trains config's model on data.train_split, evaluating on eval.split; returns the best scores.

  Rerunning the same command resumes from the latest checkpoint in `workdir` (parameters,
  optimizer, data iterator), reaching the same results as an uninterrupted run.
  """
  if config.eval.split == 'test' and config.eval_every_steps:
    raise UserError("eval.split='test' while training would choose the best checkpoint on the "
                     'test set: train with eval.split=dev, then score test with --mode=eval '
                     '--config.eval.split=test.')
  exp = build_experiment(config, workdir)
  mesh = exp.mesh
  exp.check_batch_size('batch_size', config.batch_size)
  exp.check_batch_size('eval.batch_size', config.eval.batch_size)
  # ---------------------------------------------------------------- Input
  train_iter = iter(exp.train_dataset())
  # ---------------------------------------------------------------- Model and optimizer
  tx, schedule = make_optimizer(config, exp.abstract_params)
  abstract_state = abstract_train_state(exp, tx)
  state_shardings = jax.tree.map(lambda x: x.sharding, abstract_state)
  # ---------------------------------------------------------------- Update step
  train_step = make_train_step(exp, tx, schedule, state_shardings)
  # ---------------------------------------------------------------- Restore or start
  meta = {'best_score': -math.inf, 'best_step': None}
  if exp.checkpointer.latest_step() is not None:
    state, meta = exp.checkpointer.restore(abstract_state, train_iter)
    log(f'Resumed from step {int(state["step"])} ({exp.checkpointer.latest.directory}).')
  else:
    params, rest = exp.init_variables()
    opt_state = jax.jit(tx.init, out_shardings=state_shardings['opt_state'])(params)
    state = {'params': params, 'rest': rest, 'opt_state': opt_state,
             'step': jax.device_put(jnp.array(0, jnp.int32), sharding.replicated(mesh))}
  start_step = int(state['step'])
  exp.checkpointer.discard_best_after(start_step)
  writer = MetricWriter(workdir, resume_step=start_step)
  if start_step == 0:
    sizes = jax.tree.leaves(jax.tree.map(lambda x: x.size, exp.abstract_params))
    trained = trained_parameter_count(config, exp.abstract_params)
    log(f'Model: {sum(sizes) / 1e6:.2f}M parameters, {trained / 1e6:.2f}M trained.')
  # ---------------------------------------------------------------- Loop
  def run_eval(step, state):
    metrics, predictions = exp.evaluate(state['params'], state['rest'], config.eval.split)
    writer.write(step, config.eval.split, metrics)
    for kind, lines in predictions.items():
      writer.write_predictions(_predictions_name(f'{config.eval.split}_step{step}', kind), lines)
    if jax.process_index() == 0:
      exp.write_figures(writer.predictions_dir, f'{config.eval.split}_step{step}')
    score = exp.score(metrics)
    if score > meta['best_score']:
      meta.update(best_score=score, best_step=step, best_metrics=metrics)
      exp.checkpointer.save_best(step, {'params': state['params'], 'rest': state['rest']},
                                 {'step': step, 'split': config.eval.split, **metrics})
    return metrics

  preemption = PreemptionWatcher()
  progress = tqdm.tqdm(total=config.total_steps, initial=start_step, unit='step', dynamic_ncols=True,
                       disable=jax.process_index() != 0, smoothing=0.1)
  pending = []  # per-step metrics (device arrays) not yet brought to the host
  # Sums since the last log, added step by step in float64 so that they do not depend on where
  # the run synced or was interrupted; saved with checkpoints for an exact resume.
  totals = meta.setdefault('log_window', {'steps': 0})
  window_start = time.perf_counter()
  for step in range(start_step + 1, config.total_steps + 1):
    with jax.profiler.StepTraceAnnotation('train', step_num=step):
      state, step_metrics = train_step(state, exp.global_batch(next(train_iter)))
    pending.append(step_metrics)
    progress.update(1)
    is_last = step == config.total_steps
    will_log = step % config.log_every_steps == 0 or is_last
    will_eval = bool(config.eval_every_steps) and (step % config.eval_every_steps == 0 or is_last)
    preempted = preemption.reached(step)
    will_save = step % config.checkpoint_every_steps == 0 or is_last or preempted
    if will_log or will_eval or will_save:  # bring metrics to the host; never save/eval NaNs
      host = jax.device_get(pending)
      for i, m in enumerate(host):
        if not m['finite']:
          raise NonFiniteLossError(
              f'Training diverged at step {step - len(host) + 1 + i}: loss {m["loss"]}, or '
              'non-finite parameters after the update. Stopped; the last good checkpoint '
              f'(step {exp.checkpointer.latest_step()}) is kept. Lower '
              'optimizer.learning_rate or set optimizer.grad_clip_norm.')
        for key, value in m.items():
          if key not in ('finite', 'learning_rate'):
            totals[key] = totals.get(key, 0) + float(value)
      totals['steps'] += len(host)
      pending = []
    if will_log:
      elapsed = time.perf_counter() - window_start
      summary = {k: v / totals['steps'] for k, v in totals.items() if k != 'steps'}
      summary.update({f'{k}_per_sec': totals[k] / elapsed for k in RATE_METRICS if k in totals})
      summary.update(learning_rate=float(host[-1]['learning_rate']),
                     steps_per_sec=totals['steps'] / elapsed)
      writer.write(step, 'train', summary)
      progress.set_postfix(loss=f'{summary["loss"]:.3f}')
      totals.clear()
      totals['steps'] = 0
      window_start = time.perf_counter()
    if will_eval:
      metrics = run_eval(step, state)
      log(f'step {step}: {config.eval.split} ' + ' '.join(
          f'{k}={v:.2f}' for k, v in metrics.items()))
    if will_save:
      exp.checkpointer.save(step, state, train_iter, meta)
    if preempted:
      progress.close()
      log(f'Preempted: saved step {step}; rerun the same command to resume.')
      exp.checkpointer.close()
      raise Preempted()
  progress.close()
  # ---------------------------------------------------------------- Final report
  best = meta.get('best_metrics') or {}
  if best:
    writer.write(meta['best_step'], f'{config.eval.split}_best', best)
  writer.close()
  exp.checkpointer.close()
  return best


def extract_features(config, workdir: str) -> dict[str, int]:
  """Writes the features of the workdir's backbone as a dataset (video systems); returns
  {split: videos written} (splits already complete are skipped, so a rerun resumes)."""
  exp = build_experiment(config, workdir)
  exp.require(EXTRACT_FEATURES, 'extracting features')
  exp.check_batch_size('eval.batch_size', config.eval.batch_size)
  written = exp.extract_features()
  exp.checkpointer.close()
  return written


def _predictions_name(prefix: str, kind: str) -> str:
  return prefix if kind == 'text' else f'{prefix}.{kind}'


def evaluate_checkpoint(config, workdir: str) -> dict[str, float]:
  """Scores the best checkpoint of `workdir` on config.eval.split; writes metrics + predictions."""
  exp = build_experiment(config, workdir)
  exp.check_batch_size('eval.batch_size', config.eval.batch_size)
  params, rest, step = exp.eval_variables()
  metrics, predictions = exp.evaluate(params, rest, config.eval.split)
  writer = MetricWriter(workdir)  # appends to the training run's logs
  writer.write(step, f'eval_{config.eval.split}', metrics)
  paths = [writer.write_predictions(_predictions_name(f'{config.eval.split}_best_step{step}', k),
                                    lines) for k, lines in predictions.items()]
  if jax.process_index() == 0:
    paths += exp.write_figures(writer.predictions_dir, f'{config.eval.split}_best_step{step}')
  writer.close()
  exp.checkpointer.close()
  log(f'Best checkpoint (step {step}) on {config.eval.split}: {metrics}; predictions in '
      f'{", ".join(map(str, paths))}')
  return metrics
