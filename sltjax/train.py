"""train_and_evaluate(config, workdir): the sltjax training loop, in sections.

mesh -> input pipelines -> model and optimizer (created sharded) -> jitted update and decode steps
-> restore or start -> loop (log, evaluate + keep best, checkpoint) -> final report.
`evaluate_checkpoint` scores the best checkpoint on any split (--mode=eval).
"""
import dataclasses
import math
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from flax import nnx
from jax.experimental import multihost_utils

from sltjax import sharding
from sltjax.checkpointing import Checkpointer, Preempted, PreemptionWatcher
from sltjax.convert import pretrained
from sltjax.data import batching, text
from sltjax.data.tokenizers import Tokenizer, load_tokenizer
from sltjax.decoding import encoder_decoder_search
from sltjax.losses import label_smoothed_cross_entropy
from sltjax.metric_writers import MetricWriter
from sltjax.metrics import translation_metrics
from sltjax.models.mbart import MBart, MBartConfig
from sltjax.optim import make_optimizer


def _log(message: str) -> None:
  """Console message from process 0 (absl INFO is left to libraries, shown with --verbosity=0)."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(message)


class NonFiniteLossError(RuntimeError):
  """Training produced NaN/Inf; the last good checkpoint is kept untouched."""


@dataclasses.dataclass
class Experiment:
  """Everything train and eval modes share, built once from the config."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  tokenizer: Tokenizer
  model_config: MBartConfig
  graphdef: nnx.GraphDef
  abstract_params: nnx.State
  abstract_rest: nnx.State  # non-trainable variables (buffers; batch statistics later)
  param_shardings: nnx.State
  rest_shardings: nnx.State
  checkpointer: Checkpointer
  train_lines: tuple[list[str], list[str]]  # (sources, targets) of data.train_split


def _global_batch(local_batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Assembles the processes' local rows into global arrays sharded over the batch axes."""
  return {k: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh), v)
          for k, v in local_batch.items()}


def _check_batch_size(name: str, batch_size: int, mesh) -> None:
  for divisor, what in ((jax.process_count(), 'JAX processes'),
                        (sharding.data_parallel_size(mesh), 'data-parallel devices')):
    if batch_size % divisor:
      raise ValueError(f'{name}={batch_size} must be divisible by the number of {what} '
                       f'({divisor}).')


def build_experiment(config, workdir: str) -> Experiment:
  """Mesh, tokenizer and the abstract (shape-only, sharding-annotated) model."""
  # ---------------------------------------------------------------- Mesh
  mesh = sharding.make_mesh(config.mesh)
  _log(f'Mesh {dict(mesh.shape)} over {jax.device_count()} devices in {jax.process_count()} '
       'processes.')
  # ---------------------------------------------------------------- Tokenizer
  init_from = config.model.get('init_from')
  sources, targets = text.read_parallel(config.data, config.data.train_split)
  tokenizer_config = config.tokenizer
  if tokenizer_config.kind == 'mbart' and not tokenizer_config.path and init_from:
    tokenizer_config = ml_collections.ConfigDict({**config.tokenizer.to_dict(), 'path': init_from})
  tokenizer = load_tokenizer(tokenizer_config, os.path.join(workdir, 'tokenizer'),
                             train_texts=sources + targets)
  # ---------------------------------------------------------------- Abstract model
  if init_from:  # architecture from the pretrained checkpoint; dropout and dtypes from config
    model_config = pretrained.model_config(init_from, config.model.to_dict())
    if model_config.vocab_size != tokenizer.vocab_size:
      raise ValueError(f'The pretrained model in {init_from} has {model_config.vocab_size} ids but '
                       f'the tokenizer ({tokenizer_config.path or tokenizer_config.kind}) has '
                       f'{tokenizer.vocab_size}: use the tokenizer that was trimmed with it.')
  else:
    model_config = MBartConfig.from_dict({**config.model.to_dict(),
                                          'vocab_size': tokenizer.vocab_size,
                                          'pad_token_id': tokenizer.pad_id})
  abstract_model = nnx.eval_shape(lambda: MBart(model_config, rngs=nnx.Rngs(config.seed)))
  graphdef, abstract_params, abstract_rest = nnx.split(abstract_model, nnx.Param, ...)
  return Experiment(
      config=config, mesh=mesh, tokenizer=tokenizer, model_config=model_config, graphdef=graphdef,
      abstract_params=abstract_params, abstract_rest=abstract_rest,
      param_shardings=sharding.named_shardings(abstract_params, mesh),
      rest_shardings=sharding.named_shardings(abstract_rest, mesh),
      checkpointer=Checkpointer(workdir, config.keep_checkpoints),
      train_lines=(sources, targets))


def abstract_variables(exp: Experiment) -> dict:
  """{'params', 'rest'} as ShapeDtypeStructs carrying their shardings (restore targets)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      {'params': exp.abstract_params, 'rest': exp.abstract_rest},
                      {'params': exp.param_shardings, 'rest': exp.rest_shardings})


def create_model_variables(exp: Experiment):
  """(params, rest) from config.model.init_from, else initialised from config.seed; each array is
  created (or restored) directly on its shards."""
  init_from = exp.config.model.get('init_from')
  if init_from:
    restored = pretrained.restore_variables(init_from, abstract_variables(exp))
    return restored['params'], restored['rest']

  def init():
    return nnx.split(MBart(exp.model_config, rngs=nnx.Rngs(exp.config.seed)), nnx.Param, ...)[1:]
  return jax.jit(init, out_shardings=(exp.param_shardings, exp.rest_shardings))()


def make_decode_fn(exp: Experiment) -> Callable:
  """Jitted beam search: (params, rest, batch) -> best sequences [batch, 1 + max_new_tokens]."""
  ev, tok = exp.config.eval, exp.tokenizer
  batch_sharding = sharding.batch_sharding(exp.mesh)

  def decode(params, rest, batch):
    model = nnx.merge(exp.graphdef, params, rest)
    sequences = encoder_decoder_search(
        model, batch['input_ids'], batch['attention_mask'],
        decoder_start_token_id=tok.lang_id(exp.config.tokenizer.tgt_lang),
        eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, num_beams=ev.num_beams,
        max_new_tokens=ev.max_new_tokens, length_penalty=ev.length_penalty,
        length_penalty_style=ev.length_penalty_style, early_stopping=ev.early_stopping)
    return sequences[:, 0]

  return jax.jit(decode, in_shardings=(exp.param_shardings, exp.rest_shardings, batch_sharding),
                 out_shardings=batch_sharding)


def tokenized_split(exp: Experiment, split: str) -> text.TokenizedCorpus:
  sources, targets = (exp.train_lines if split == exp.config.data.train_split else
                      text.read_parallel(exp.config.data, split))
  return text.tokenize_corpus(sources, targets, exp.tokenizer, exp.config.tokenizer.src_lang)


def evaluate_corpus(exp: Experiment, decode_fn, params, rest, corpus: text.TokenizedCorpus):
  """Decodes every example of `corpus`; returns (metrics, hypotheses in corpus order)."""
  cfg = exp.config
  loader = text.BatchLoader(corpus, exp.tokenizer, cfg.tokenizer.tgt_lang, cfg.data.length_buckets,
                            jax.process_index(), jax.process_count())
  hypotheses = [''] * len(corpus)
  plan = batching.eval_plan(len(corpus), cfg.eval.batch_size)
  for local_batch in batching.make_dataset(plan, loader, num_workers=0):
    batch = _global_batch(local_batch, exp.mesh)
    sequences = multihost_utils.process_allgather(decode_fn(params, rest, batch), tiled=True)
    indices = multihost_utils.process_allgather(batch['index'], tiled=True)
    for index, sequence in zip(indices, sequences):
      if index != batching.PAD_INDEX:
        hypotheses[index] = exp.tokenizer.decode(sequence[1:])
  return translation_metrics(hypotheses, corpus.references), hypotheses


def make_train_step(exp: Experiment, tx: optax.GradientTransformation, schedule,
                    state_shardings) -> Callable:
  """Jitted update: (state, batch) -> (state, metrics); the state's buffers are donated."""
  cfg = exp.config
  dropout_root = jax.random.key(cfg.seed + 1)

  def train_step(state, batch):
    dropout_key = jax.random.fold_in(dropout_root, state['step'])

    def loss_fn(params):
      model = nnx.merge(exp.graphdef, params, state['rest'])
      logits = model(batch['input_ids'], batch['attention_mask'], batch['decoder_input_ids'],
                     rngs=nnx.Rngs(dropout=dropout_key))
      loss_sum, tokens = label_smoothed_cross_entropy(logits, batch['labels'],
                                                      batch['label_weights'], cfg.label_smoothing)
      return loss_sum / jnp.maximum(tokens, 1.0), tokens

    (loss, tokens), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    new_state = dict(state, params=params, opt_state=opt_state, step=state['step'] + 1)
    metrics = {'loss': loss, 'tokens': tokens, 'grad_norm': optax.global_norm(grads),
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
  exp = build_experiment(config, workdir)
  mesh = exp.mesh
  _check_batch_size('batch_size', config.batch_size, mesh)
  _check_batch_size('eval.batch_size', config.eval.batch_size, mesh)
  # ---------------------------------------------------------------- Input
  train_corpus = tokenized_split(exp, config.data.train_split)
  eval_corpus = tokenized_split(exp, config.eval.split) if config.eval_every_steps else None
  loader = text.BatchLoader(train_corpus, exp.tokenizer, config.tokenizer.tgt_lang,
                            config.data.length_buckets, jax.process_index(), jax.process_count())
  train_iter = iter(batching.make_dataset(
      batching.train_plan(len(train_corpus), config.batch_size, config.seed), loader,
      config.data.num_workers))
  # ---------------------------------------------------------------- Model and optimizer
  tx, schedule = make_optimizer(config, exp.abstract_params)
  abstract_opt_state = jax.eval_shape(tx.init, exp.abstract_params)
  state_shardings = {
      'params': exp.param_shardings, 'rest': exp.rest_shardings,
      'opt_state': sharding.named_shardings(abstract_opt_state, mesh),
      'step': sharding.replicated(mesh)}
  # ---------------------------------------------------------------- Update and decode steps
  train_step = make_train_step(exp, tx, schedule, state_shardings)
  decode_fn = make_decode_fn(exp)
  # ---------------------------------------------------------------- Restore or start
  meta = {'best_score': -math.inf, 'best_step': None}
  if exp.checkpointer.latest_step() is not None:
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        {'params': exp.abstract_params, 'rest': exp.abstract_rest,
         'opt_state': abstract_opt_state, 'step': jax.ShapeDtypeStruct((), jnp.int32)},
        state_shardings)
    state, meta = exp.checkpointer.restore(abstract_state, train_iter)
    _log(f'Resumed from step {int(state["step"])} ({exp.checkpointer.latest.directory}).')
  else:
    params, rest = create_model_variables(exp)
    opt_state = jax.jit(tx.init, out_shardings=state_shardings['opt_state'])(params)
    state = {'params': params, 'rest': rest, 'opt_state': opt_state,
             'step': jax.device_put(jnp.array(0, jnp.int32), sharding.replicated(mesh))}
  start_step = int(state['step'])
  exp.checkpointer.discard_best_after(start_step)
  writer = MetricWriter(workdir, resume_step=start_step)
  if start_step == 0:
    num_params = sum(x.size for x in jax.tree.leaves(exp.abstract_params))
    _log(f'Model: {num_params / 1e6:.2f}M parameters, vocabulary {exp.tokenizer.vocab_size}.')
  # ---------------------------------------------------------------- Loop
  def run_eval(step, state):
    metrics, hypotheses = evaluate_corpus(exp, decode_fn, state['params'], state['rest'],
                                          eval_corpus)
    writer.write(step, config.eval.split, metrics)
    writer.write_predictions(f'{config.eval.split}_step{step}', hypotheses)
    score = metrics[config.eval.best_metric]
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
  totals = meta.setdefault('log_window', dict.fromkeys(('steps', 'loss', 'grad_norm', 'tokens'), 0))
  window_start = time.perf_counter()
  for step in range(start_step + 1, config.total_steps + 1):
    with jax.profiler.StepTraceAnnotation('train', step_num=step):
      state, step_metrics = train_step(state, _global_batch(next(train_iter), mesh))
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
        for key in ('loss', 'grad_norm', 'tokens'):
          totals[key] += float(m[key])
      totals['steps'] += len(host)
      pending = []
    if will_log:
      elapsed = time.perf_counter() - window_start
      summary = {'loss': totals['loss'] / totals['steps'],
                 'grad_norm': totals['grad_norm'] / totals['steps'],
                 'learning_rate': float(host[-1]['learning_rate']),
                 'steps_per_sec': totals['steps'] / elapsed,
                 'tokens_per_sec': totals['tokens'] / elapsed}
      writer.write(step, 'train', summary)
      progress.set_postfix(loss=f'{summary["loss"]:.3f}')
      totals.update(dict.fromkeys(totals, 0))
      window_start = time.perf_counter()
    if will_eval:
      metrics = run_eval(step, state)
      _log(f'step {step}: {config.eval.split} ' + ' '.join(
          f'{k}={v:.2f}' for k, v in metrics.items()))
    if will_save:
      exp.checkpointer.save(step, state, train_iter, meta)
    if preempted:
      progress.close()
      _log(f'Preempted: saved step {step}; rerun the same command to resume.')
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


def evaluate_checkpoint(config, workdir: str) -> dict[str, float]:
  """Scores the best checkpoint of `workdir` on config.eval.split; writes metrics + predictions."""
  exp = build_experiment(config, workdir)
  _check_batch_size('eval.batch_size', config.eval.batch_size, exp.mesh)
  corpus = tokenized_split(exp, config.eval.split)
  restored, meta = exp.checkpointer.restore_best(abstract_variables(exp))
  metrics, hypotheses = evaluate_corpus(exp, make_decode_fn(exp), restored['params'],
                                        restored['rest'], corpus)
  writer = MetricWriter(workdir)  # appends to the training run's logs
  writer.write(meta['step'], f'eval_{config.eval.split}', metrics)
  path = writer.write_predictions(f'{config.eval.split}_best_step{meta["step"]}', hypotheses)
  writer.close()
  exp.checkpointer.close()
  _log(f'Best checkpoint (step {meta["step"]}) on {config.eval.split}: {metrics}; '
       f'predictions in {path}')
  return metrics
