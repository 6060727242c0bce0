"""LoRA (Hu et al., 2021): low-rank updates to chosen Linear layers of a model, any model.

  add_lora(model, LoRAConfig(targets=r'layers/(9|10|11)/.*(q_proj|fc1)$', rank=4, alpha=4),
           rngs)

wraps every nnx.Linear whose path matches `targets` in place: y = x W + b + (alpha / rank) *
dropout(x) A B, A ~ N(0, init_std) [in, rank], B = 0 [rank, out], so a wrapped model computes
exactly what it did before training. The wrapped layer keeps W and b under their own names (a
converted checkpoint still fills them), and A and B are new parameters `lora_a`, `lora_b`
sharded along W's input and output axes. Freeze the base weights by config
(optimizer.frozen='^(?!.*lora_)', everything but the adapters): frozen parameters get no
gradient, no optimizer state, no place in the clipping norm (sltjax/optim.py). `merge_lora` folds the
adapters into W for export. `fused` names sibling layers that share one A (a LoRA on their fused
projection: A [in, rank] once, B [rank, sum of outs] split among them). LoRA dropout runs when the caller passes `rngs` (training).
"""
import dataclasses
import re

import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  targets: str  # regex over module paths joined by '/', e.g. 'layers/3/attention/q_proj'
  rank: int = 4
  alpha: float = 4.0
  dropout: float = 0.0
  init_std: float = 0.02  # A's initial standard deviation
  # Sibling layers (by name) that read the same input and share one A, each with its slice of
  # B: a LoRA on their fused projection, e.g. ('q_proj', 'k_proj', 'v_proj') for a model whose
  # release fuses them (DINOv2's qkv). Each member still draws its own dropout mask.
  fused: tuple[str, ...] = ()

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


class LoRALinear(nnx.Linear):
  """An nnx.Linear (its kernel and bias adopted, not copied) plus a low-rank update."""

  def __init__(self, base: nnx.Linear, cfg: LoRAConfig, *, rngs: nnx.Rngs):
    # A throwaway kernel is initialised here and replaced by the base's (under jit, XLA drops it).
    super().__init__(base.in_features, base.out_features, use_bias=base.use_bias,
                     dtype=base.dtype, param_dtype=base.param_dtype, precision=base.precision,
                     dot_general=base.dot_general, rngs=rngs)
    self.kernel, self.bias = base.kernel, base.bias
    in_axis, out_axis = base.kernel.get_metadata().get('out_sharding') or (None, None)
    self.lora_a = nnx.Param(nnx.with_partitioning(nnx.initializers.normal(cfg.init_std),
                                                  (in_axis, None))(
        rngs.params(), (base.in_features, cfg.rank), base.param_dtype))
    self.lora_b = nnx.Param(nnx.with_partitioning(nnx.initializers.zeros, (None, out_axis))(
        rngs.params(), (cfg.rank, base.out_features), base.param_dtype))
    self.lora_scale = cfg.scale
    self.lora_dropout = nnx.Dropout(cfg.dropout)

  def __call__(self, inputs, out_sharding=None, *, rngs: nnx.Rngs | None = None):
    """inputs [..., in] -> [..., out]."""
    y = super().__call__(inputs, out_sharding)
    x = self.lora_dropout(inputs, deterministic=rngs is None, rngs=rngs)
    x, a, b = self.promote_dtype((x, self.lora_a[...], self.lora_b[...]), dtype=self.dtype)
    return y + (x @ a @ b) * jnp.asarray(self.lora_scale, y.dtype)

  def merged_kernel(self):
    """W + (alpha / rank) A B, in W's dtype."""
    kernel = self.kernel[...]
    update = (self.lora_a[...].astype(jnp.float32) @ self.lora_b[...].astype(jnp.float32))
    return (kernel.astype(jnp.float32) + self.lora_scale * update).astype(kernel.dtype)


def base_call(linear: nnx.Linear, inputs):
  """The layer without its adapters (x W + b), whether or not it has any."""
  return nnx.Linear.__call__(linear, inputs)


def call(linear: nnx.Linear, inputs, rngs: nnx.Rngs | None = None):
  """linear(inputs), with LoRA dropout's rngs when the layer has adapters."""
  return linear(inputs, rngs=rngs) if isinstance(linear, LoRALinear) else linear(inputs)


def _linears(model: nnx.Module):
  """(parent, attribute or index, path string, layer) of every nnx.Linear in `model`."""
  for path, node in list(nnx.iter_graph(model)):
    if isinstance(node, nnx.Linear) and path:
      parent = model
      for key in path[:-1]:
        parent = parent[key] if isinstance(parent, nnx.List) else getattr(parent, key)
      yield parent, path[-1], '/'.join(map(str, path)), node


def _replace(parent, key, module) -> None:
  if isinstance(parent, nnx.List):
    parent[key] = module
  else:
    setattr(parent, key, module)


def add_lora(model: nnx.Module, cfg: LoRAConfig, rngs: nnx.Rngs) -> list[str]:
  """Wraps every nnx.Linear of `model` whose path matches cfg.targets; returns their paths.
  Raises ValueError if the pattern matches none (almost always a typo)."""
  pattern = re.compile(cfg.targets)
  layers = list(_linears(model))
  targets = [(parent, key, path, layer) for parent, key, path, layer in layers
             if pattern.search(path) and not isinstance(layer, LoRALinear)]
  if not targets:
    raise ValueError(f'LoRA targets {cfg.targets!r} match no Linear layer; paths look like '
                     f'{layers[0][2] if layers else "(none)"!r}.')
  shared_a = {}  # id(parent) -> the A of its first fused member
  for parent, key, _, layer in targets:
    wrapped = LoRALinear(layer, cfg, rngs=rngs)
    if key in cfg.fused:
      wrapped.lora_a = shared_a.setdefault(id(parent), wrapped.lora_a)
    _replace(parent, key, wrapped)
  return [path for _, _, path, _ in targets]


def merge_lora(model: nnx.Module) -> list[str]:
  """Replaces every LoRALinear of `model` by a plain nnx.Linear whose kernel includes the
  update (for export); returns their paths."""
  merged = []
  for parent, key, path, layer in list(_linears(model)):
    if not isinstance(layer, LoRALinear):
      continue
    plain = nnx.eval_shape(lambda layer=layer: nnx.Linear(
        layer.in_features, layer.out_features, use_bias=layer.use_bias, dtype=layer.dtype,
        param_dtype=layer.param_dtype, precision=layer.precision,
        dot_general=layer.dot_general, rngs=nnx.Rngs(0)))
    plain.kernel = layer.kernel.replace(layer.merged_kernel())
    plain.bias = layer.bias
    _replace(parent, key, plain)
    merged.append(path)
  return merged
