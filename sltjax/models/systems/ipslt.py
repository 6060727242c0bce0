"""IP-SLT (Yao et al., ICCV 2023): iterative prototype refinement with iterative distillation, a
plug-in for every system that translates with the mBART-shaped encoder-decoder (Gloss2Text,
MMTLB Sign2Text, C2RL Sign2Text), turned on by the system config's `model.prototype` block.

  F = what the base encoder's layers read [B, S, d]: the embedded glosses, or the system's
      `inputs_embeds` (MMTLB's mapped visual features, C2RL's projected ones), after MBart's
      learned positions and layernorm_embedding
  E^0 = E1(F)                  the base encoder: the initial prototype       -> D1 -> Y^0
  E^k = E2(E^{k-1}, F)         k = 1..K: self-attention over the prototype and cross-attention
                               from it (query) to F (keys/values)           -> D2 -> Y^k
  training: LM losses on the chosen Y^k, plus Y^K distilled into Y^1..Y^{K-1} (and Y^0 when
            `distill_initial`): KL on token distributions or MSE on prototypes, teacher detached
  inference: E1, E2 K times, D2 once (`encode` returns E^K and `decode` runs D2, so every beam
             search over an MBart runs IP-SLT unchanged)

E2 and D2 are shared by all iterations (the parameter count does not depend on K). D2 is a second
decoder over MBart's shared token embeddings and output layer. Both start as copies of the base
network (`initial_copies`): E2's layers of E1's last layers (the cross-attention of that layer's
self-attention), D2 of D1, whenever a start (a pretrained mBART, a base-system workdir) fills E1
and D1 but not them. K = 0 is the base system: `translation_network` then builds a plain MBart.

From the paper's Fig. 2 (its overview; the method section's text was not reachable, see
below): E1 makes E^0, which D1 decodes to Y^0 in training only (D1 is removed at inference);
E2 takes E^{k-1} and F; D2 decodes every E^k; iterative distillation runs from Y^K into Y^1 .. Y^{K-1} (not Y^0:
`distill_initial` off by default); at inference only D2 decodes E^K, once.

Not settled by the figure, and so config values defaulting to an unofficial reimplementation's:
K 3, the layer mix 0.5 * self-attention + 0.5 * cross-attention ('parallel'), LM losses on Y^0
and Y^K, KL distillation. The distillation weight defaults to 1 (that reimplementation's 15 and 3
weigh a differently normalised KL); E2's depth to 1 layer. The paper's Sec. 3 would settle
them; no copy of it was reachable (the stored copies give their abstracts only).
"""
import dataclasses

import jax.numpy as jnp
from flax import nnx

from sltjax.losses import mean_cross_entropy, prototype_mse, token_distillation_kl
from sltjax.models.layers.attention import MultiHeadAttention
from sltjax.models.layers.dense import embedding, layer_norm
from sltjax.models.mbart import (POSITION_OFFSET, DecoderLayer, EncoderLayer, MBart, MBartConfig,
                                 call_layer)

CONFIG_BLOCK = 'prototype'  # config.model.prototype switches the plug-in on
FUSIONS = ('parallel', 'sequential')
LM_ITERATIONS = ('all', 'first_last', 'last')
DISTILLATIONS = ('kl', 'mse', 'none')


@dataclasses.dataclass(frozen=True)
class PrototypeConfig:
  """The `model.prototype` block."""
  iterations: int = 3  # K refinements; 0 is the base system
  refine_layers: int = 1  # E2's depth
  # 'parallel': x + dropout(0.5 self-attention + 0.5 cross-attention to F), then the FFN;
  # 'sequential': self-attention, then cross-attention, then the FFN (a decoder layer, unmasked).
  fusion: str = 'parallel'
  lm_iterations: str = 'first_last'  # LM loss on Y^0..Y^K ('all'), Y^0 and Y^K, or Y^K ('last')
  distillation: str = 'kl'  # 'kl': token distributions; 'mse': prototypes E^k; 'none'
  distillation_weight: float = 1.0
  distill_initial: bool = False  # Y^0 (E^0 for 'mse') is a student too

  def __post_init__(self):
    for name, allowed in (('fusion', FUSIONS), ('lm_iterations', LM_ITERATIONS),
                          ('distillation', DISTILLATIONS)):
      if getattr(self, name) not in allowed:
        raise ValueError(f'model.prototype.{name}={getattr(self, name)!r}; expected one of '
                         f'{allowed}.')
    if self.iterations < 0 or self.refine_layers < 1:
      raise ValueError(f'model.prototype needs iterations >= 0 (got {self.iterations}) and '
                       f'refine_layers >= 1 (got {self.refine_layers}).')

  @classmethod
  def from_model_config(cls, model_config) -> 'PrototypeConfig | None':
    """The block of a system's config.model (None when absent: the plug-in is off)."""
    block = model_config.get('prototype')
    return None if block is None else cls(**dict(block))

  def lm_targets(self) -> tuple[int, ...]:
    """The iterations k whose Y^k gets an LM loss."""
    k = self.iterations
    return {'all': tuple(range(k + 1)), 'first_last': (0, k), 'last': (k,)}[self.lm_iterations]

  def students(self) -> tuple[int, ...]:
    """The iterations distilled from the last one."""
    if self.distillation == 'none':
      return ()
    return tuple(range(0 if self.distill_initial else 1, self.iterations))


class RefinementLayer(EncoderLayer):
  """E2's layer: an encoder layer whose prototype also attends (query) to F (keys/values)."""

  def __init__(self, cfg: MBartConfig, fusion: str, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    self.fusion = fusion
    self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.encoder_attention_heads,
                                         cfg.attention_dropout, **kw)
    self.cross_attn_layer_norm = layer_norm(cfg.d_model, **kw)

  def __call__(self, x, mask, features_kv, rngs):
    """x: the prototype [B, S, d]; mask [B, 1, 1, S]; features_kv: F's keys and values for
    `cross_attn` [B, S, heads, head_dim] each. Returns the refined prototype [B, S, d]."""
    drop = lambda h: self.dropout(h, deterministic=rngs is None, rngs=rngs)
    cross = lambda h: self.cross_attn(self.cross_attn_layer_norm(h), *features_kv, mask,
                                      rngs=rngs)
    if self.fusion == 'parallel':
      x = x + drop(0.5 * self.attend_to_self(x, mask, rngs) + 0.5 * cross(x))
    else:
      x = x + drop(self.attend_to_self(x, mask, rngs))
      x = x + drop(cross(x))
    return self.feed_forward(x, rngs)


class RefinedDecoder(nnx.Module):
  """D2: MBart's decoder stack (positions, layernorm_embedding, layers, final LayerNorm), run
  over the shared token embeddings; MBart.decode takes it as `decoder`."""

  def __init__(self, cfg: MBartConfig, *, rngs: nnx.Rngs):
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    self.embed_positions = embedding(cfg.max_position_embeddings + POSITION_OFFSET, cfg.d_model,
                                     ('positions', 'embed'), **kw)
    self.layernorm_embedding = layer_norm(cfg.d_model, **kw)
    self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.decoder_layers)])
    self.layer_norm = layer_norm(cfg.d_model, **kw)


class IterativePrototypeMBart(MBart):
  """MBart with IP-SLT's refinement: `encode` gives E^K, `decode` runs D2 (inference);
  `translation_loss` trains every iteration."""

  def __init__(self, cfg: MBartConfig, prototype: PrototypeConfig, *, rngs: nnx.Rngs):
    if prototype.iterations < 1:
      raise ValueError('IterativePrototypeMBart needs iterations >= 1; K = 0 is a plain MBart '
                       '(translation_network).')
    super().__init__(cfg, rngs=rngs)
    self.prototype = prototype
    self.refine_layers = nnx.List([RefinementLayer(cfg, prototype.fusion, rngs=rngs)
                                   for _ in range(prototype.refine_layers)])
    self.refine_layer_norm = layer_norm(cfg.d_model, dtype=cfg.dtype,
                                        param_dtype=cfg.param_dtype, rngs=rngs)
    self.refined_decoder = RefinedDecoder(cfg, rngs=rngs)

  def initial_copies(self) -> dict[tuple, tuple]:
    """{path under this module: the path it starts as a copy of} (see the module docstring)."""
    base = self.config.encoder_layers
    copies = {}
    for i in range(len(self.refine_layers)):
      source = i + base - len(self.refine_layers)  # E1's last layers; a deeper E2 starts fresh
      if 0 <= source < base:
        copies[('refine_layers', i)] = ('encoder_layers', source)
        copies[('refine_layers', i, 'cross_attn')] = ('encoder_layers', source, 'self_attn')
        copies[('refine_layers', i, 'cross_attn_layer_norm')] = (
            'encoder_layers', source, 'self_attn_layer_norm')
    copies[('refine_layer_norm',)] = ('encoder_layer_norm',)
    for name in ('embed_positions', 'layernorm_embedding', 'layers', 'layer_norm'):
      copies[('refined_decoder', name)] = (f'decoder_{name}',)
    return copies

  def prototypes(self, input_ids, attention_mask, *, inputs_embeds=None, rngs=None):
    """[E^0, ..., E^K], each [B, S, d], for a source as MBart.encode takes it."""
    features = self.embed_source(input_ids, inputs_embeds=inputs_embeds, rngs=rngs)  # F
    prototype = self.encode_embedded(features, attention_mask, rngs)  # E^0
    mask = attention_mask[:, None, None, :].astype(bool)  # [B, 1, 1, S]
    features_kv = [layer.cross_attn.project_kv(features, rngs) for layer in self.refine_layers]
    out = [prototype]
    for _ in range(self.prototype.iterations):
      for layer, kv in zip(self.refine_layers, features_kv):
        prototype = call_layer(self.config.remat, layer, prototype, mask, kv, rngs)
      prototype = self.refine_layer_norm(prototype)
      out.append(prototype)
    return out

  def encode(self, input_ids=None, attention_mask=None, *, inputs_embeds=None, rngs=None):
    """The final prototype E^K [B, S, d]: what D2 decodes."""
    return self.prototypes(input_ids, attention_mask, inputs_embeds=inputs_embeds, rngs=rngs)[-1]

  def decoder_parts(self):
    return self.refined_decoder

  def initial_decoder(self):
    """D1, the base network's decoder (Y^0 in training; never run by inference)."""
    return MBart.decoder_parts(self)

  def iteration_logits(self, prototypes, attention_mask, decoder_input_ids, iterations, rngs):
    """{k: teacher-forced logits [B, L, vocab] of Y^k} for k in `iterations`: Y^0 by D1, the
    others by D2 in one pass over the prototypes stacked along the batch."""
    logits = {}
    if 0 in iterations:
      d1 = self.initial_decoder()
      logits[0], _ = self.decode(decoder_input_ids, attention_mask,
                                 self.cross_attention_kv(prototypes[0], d1), rngs=rngs,
                                 decoder=d1)
    refined = [k for k in iterations if k > 0]
    if refined:
      stacked = jnp.concatenate([prototypes[k] for k in refined], axis=0)  # [len(refined)*B, ...]
      tile = lambda x: jnp.concatenate([x] * len(refined), axis=0)
      out, _ = self.decode(tile(decoder_input_ids), tile(attention_mask),
                           self.cross_attention_kv(stacked), rngs=rngs)
      for k, part in zip(refined, jnp.split(out, len(refined), axis=0)):
        logits[k] = part
    return logits

  def translation_loss(self, attention_mask, decoder_input_ids, labels, label_weights, *,
                       input_ids=None, inputs_embeds=None, label_smoothing: float,
                       per: str = 'token', rngs=None):
    """Sum of the smoothed cross entropies (per target token or sentence, as MBart's) of the
    chosen Y^k, plus
    distillation_weight x the mean distillation loss of the students. Metrics: 'ce' (Y^K's, as
    the base network reports), 'ce_<k>' for the other decoded iterations, 'distillation',
    'tokens'."""
    cfg = self.prototype
    last = cfg.iterations
    prototypes = self.prototypes(input_ids, attention_mask, inputs_embeds=inputs_embeds,
                                 rngs=rngs)
    decoded = set(cfg.lm_targets()) | {last}
    if cfg.distillation == 'kl':
      decoded |= set(cfg.students())
    logits = self.iteration_logits(prototypes, attention_mask, decoder_input_ids,
                                   sorted(decoded), rngs)
    metrics, loss = {}, 0.0
    for k in sorted(decoded):
      ce, _ = mean_cross_entropy(logits[k], labels, label_weights, label_smoothing, per=per)
      metrics['ce' if k == last else f'ce_{k}'] = ce
      if k in cfg.lm_targets():
        loss = loss + ce
    metrics['tokens'] = jnp.sum(label_weights)
    students = cfg.students()
    if students:
      if cfg.distillation == 'kl':
        terms = [token_distillation_kl(logits[k], logits[last], label_weights) for k in students]
      else:
        terms = [prototype_mse(prototypes[k], prototypes[last], attention_mask) for k in students]
      distillation = sum(terms) / len(terms)
      metrics['distillation'] = distillation
      loss = loss + cfg.distillation_weight * distillation
    return loss, metrics


def describe(prototype: PrototypeConfig | None) -> str:
  """' + IP-SLT (K=..)' for a system's description when the plug-in is on, else ''."""
  if prototype is None or prototype.iterations == 0:
    return ''
  return f' + IP-SLT (K={prototype.iterations}, {prototype.distillation} distillation)'


def config_problems(model_config, translates: bool, what: str) -> list[str]:
  """Problems with a system config's `model.prototype` block (none when it is absent or valid);
  `translates`: whether the system, as configured (`what`), has an encoder-decoder to refine."""
  block = model_config.get('prototype')
  if block is None:
    return []
  if not translates:
    return [f'model.prototype (IP-SLT) refines the encoder of a translation network, and '
            f'{what} has none: remove the block']
  known = {field.name for field in dataclasses.fields(PrototypeConfig)}
  unknown = sorted(set(dict(block)) - known)
  if unknown:
    return [f'model.prototype has no {", ".join(unknown)} (it takes: {", ".join(sorted(known))})']
  try:
    PrototypeConfig.from_model_config(model_config)
  except ValueError as error:
    return [str(error).rstrip('.')]
  return []


def translation_network(cfg: MBartConfig, prototype: PrototypeConfig | None, *,
                        rngs: nnx.Rngs) -> MBart:
  """The translation network a system builds: a plain MBart unless `prototype` asks for at least
  one refinement."""
  if prototype is None or prototype.iterations == 0:
    return MBart(cfg, rngs=rngs)
  return IterativePrototypeMBart(cfg, prototype, rngs=rngs)
