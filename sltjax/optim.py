"""The optax optimizer built from config.optimizer and config.schedule.

Per-module learning rates and frozen modules: `config.optimizer.param_groups` maps a regular
expression over parameter paths ('encoder_layers/0/fc1/kernel') to a learning-rate multiplier;
multiplier 0 freezes the matching parameters (no update, no optimizer state). The first matching
pattern wins; unmatched parameters use multiplier 1. `config.optimizer.frozen`, a regular
expression settable from the command line, freezes what it matches ahead of every group.
Frozen parameters get no gradient at all: the update step stops gradients at them
(`frozen_mask`), so XLA drops the backward pass that only they need (a frozen backbone costs its
forward pass alone), and they are not in the clipping norm.
"""
import re

import jax
import optax
from flax import nnx


def learning_rate_schedule(config) -> optax.Schedule:
  """config.schedule: kind 'constant' | 'cosine' (linear warm-up from warmup_init_factor * lr,
  then cosine to end_factor * lr)."""
  sched = config.schedule
  peak = config.optimizer.learning_rate
  if sched.kind == 'constant':
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, sched.warmup_steps), optax.constant_schedule(peak)],
        [sched.warmup_steps]) if sched.warmup_steps else optax.constant_schedule(peak)
  if sched.kind == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=peak * sched.get('warmup_init_factor', 0.0), peak_value=peak,
        warmup_steps=sched.warmup_steps,
        decay_steps=max(config.total_steps, sched.warmup_steps + 1),
        end_value=peak * sched.end_factor)
  raise ValueError(f'config.schedule.kind={sched.kind!r}; expected "constant" or "cosine".')


DECAY_SCOPES = ('all', 'matrices')


def decay_mask(opt):
  """Which parameters weight decay applies to: optimizer.decay 'all' (default) or 'matrices'
  (parameters of 2 or more dimensions: no decay on biases, norms, layer scales, gates, as
  timm's param_groups_weight_decay)."""
  scope = opt.get('decay', 'all')
  if scope not in DECAY_SCOPES:
    raise ValueError(f'config.optimizer.decay={scope!r}; expected one of {DECAY_SCOPES}.')
  return None if scope == 'all' else lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)


def _base_optimizer(opt, learning_rate) -> optax.GradientTransformation:
  coupled_decay = (optax.add_decayed_weights(opt.weight_decay, mask=decay_mask(opt))
                   if opt.weight_decay else optax.identity())
  if opt.name == 'adam':  # coupled L2 weight decay, as torch.optim.Adam(weight_decay=...)
    return optax.chain(coupled_decay, optax.adam(learning_rate, b1=opt.b1, b2=opt.b2, eps=opt.eps))
  if opt.name == 'adamw':
    return optax.adamw(learning_rate, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                       weight_decay=opt.weight_decay, mask=decay_mask(opt))
  if opt.name == 'sgd':
    return optax.chain(coupled_decay, optax.sgd(learning_rate, momentum=opt.momentum or None))
  raise ValueError(f'config.optimizer.name={opt.name!r}; expected "adam", "adamw" or "sgd".')


def param_path(path) -> str:
  """'encoder_layers/0/fc1/kernel' for a pytree path into parameters (a Variable's own
  attribute, `.value`, left out)."""
  return '/'.join(str(k.key if hasattr(k, 'key') else k.idx) for k in path
                  if hasattr(k, 'key') or hasattr(k, 'idx'))


def group_multipliers(params, param_groups: dict[str, float]):
  """Per parameter, the multiplier of the first pattern matching its path (1.0 if none).

  Raises if a pattern matches no parameter (almost always a typo).
  """
  patterns = [(p, re.compile(p), float(m)) for p, m in param_groups.items()]
  paths = [param_path(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  unmatched = [p for p, regex, _ in patterns if not any(regex.search(name) for name in paths)]
  if unmatched:
    raise ValueError(f'config.optimizer.param_groups patterns {unmatched} match no parameter; '
                     'parameter paths look like "encoder_layers/0/fc1/kernel".')

  def multiplier(path, _):
    name = param_path(path)
    return next((m for _, regex, m in patterns if regex.search(name)), 1.0)

  return jax.tree_util.tree_map_with_path(multiplier, params)


def learning_rate_multipliers(config, params):
  """Per parameter, its learning-rate multiplier from config.optimizer (0: frozen)."""
  opt = config.optimizer
  groups = dict(opt.param_groups)
  if opt.get('frozen'):
    groups = {opt.frozen: 0.0, **{p: m for p, m in groups.items() if p != opt.frozen}}
  return group_multipliers(params, groups)


def frozen_mask(config, params):
  """Per parameter, True where config.optimizer freezes it."""
  return jax.tree.map(lambda m: m == 0, learning_rate_multipliers(config, params))


def trained_parameter_count(config, params) -> int:
  """How many parameter entries config.optimizer trains (params may be abstract)."""
  return int(sum(x.size for x, frozen in zip(jax.tree.leaves(params),
                                             jax.tree.leaves(frozen_mask(config, params)))
                 if not frozen))


def make_optimizer(config, params: nnx.State) -> tuple[optax.GradientTransformation,
                                                       optax.Schedule]:
  """The full gradient transformation (clipping, groups, optimizer) and the base lr schedule."""
  opt = config.optimizer
  schedule = learning_rate_schedule(config)
  multipliers = learning_rate_multipliers(config, params)
  transforms = {m: optax.set_to_zero() if m == 0 else
                   _base_optimizer(opt, lambda step, m=m: schedule(step) * m)
                for m in set(jax.tree.leaves(multipliers))}
  tx = optax.multi_transform(transforms, multipliers)
  if opt.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  if opt.get('grad_clip_value'):  # each gradient entry clipped first (torch's clip_grad_value_)
    tx = optax.chain(optax.clip(opt.grad_clip_value), tx)
  return tx, schedule
