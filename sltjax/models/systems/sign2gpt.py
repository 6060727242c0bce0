"""Sign2GPT (Wong, Camgoz, Bowden, ICLR 2024): the frame encoder, the sign encoder, the
prototype head of pseudo-gloss pretraining, and the adapted XGLM that translates.

  frames [B, T, H, W, 3] -> DINOv2 (frozen; LoRA rank 4 on its last 3 blocks' fused qkv, o, fc1,
    fc2) per frame -> its CLS feature -> Linear -> 512 -> BatchNorm (valid frames)   (FrameEncoder)
  frame features [B, T, 512] + sinusoidal positions
    -> stage 1: 2 post-LN blocks of local self-attention (|i - j| <= 3, rotary q/k, padded keys
       masked, every position sees itself) and a 4x GELU MLP, each branch scaled by a learned
       layer scale (init 1e-5) and dropped per sample (drop path rising 0 -> 0.1 over the blocks)
    -> temporal average pooling (k3, s2, p1): [B, ceil(T/2), 512], a pooled position valid when
       its window's centre frame is (position 0 always)
    -> stage 2: 2 more blocks                                          -> [B, T', 512], mask

As the release (REFERENCE.md section 4), except that a clip's output does not depend on what pads
it: it equals the release's output for the clip alone, whose pooling also counts the zero
padding at its end. Padded frames are zeroed before pooling, and an n-frame clip keeps its
ceil(n / 2) pooled positions. (In a padded batch the release averages padded positions' stage-1
outputs into the last window and, for even n, marks one more position valid, whose window holds
the last frame and two padded ones.)

  sign features [B, T', 512] -> dropout 0.2 -> Linear -> 300 -> cosine with every pseudo-gloss's
    word vector and a zero "blank" prototype: s [B, T', V + 1]
    -> score_v = sum over time of softmax over glosses (s / tau_c) * softmax over valid time
       steps (s / tau_t); tau_c, tau_t learned from 0.1, clamped to [0.01, 1]
    -> [B, V] (blank dropped): how present each pseudo-gloss is (PrototypeHead)


  XGLM, frozen, adapted (adapt_xglm): LoRA (rank 4, alpha 4, dropout 0.1) on every layer's q, k
  and v projections and an unscaled one on its output projection; in parallel with each layer's
  self-attention, a zero-gated cross-attention to the visual tokens (VisualAdaptor): the
  layer's own LayerNorm on the visual tokens, the frozen q/k/v projections plus adaptor LoRAs,
  a per-head gate at 0 clamped to [0, 1] (straight-through gradient) on its probabilities, its
  output added per head before the shared output projection. At the start (gates 0, LoRA B 0)
  the model computes exactly the frozen LM.

  Stage 1 (Sign2GPTPretraining): frames -> FrameEncoder -> SignEncoder -> PrototypeHead.
  Stage 2 (Sign2GPTTranslator): frames -> FrameEncoder -> SignEncoder -> + sinusoidal positions
    -> Linear -> d_LM: the visual tokens the adapted XGLM attends to.

Dropout and drop path run when `rngs` is given (training), which also switches BatchNorm to
batch statistics.
"""
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from sltjax.models.backbones import registry as backbones
from sltjax.models.layers import lora
from sltjax.models.layers.attention import MultiHeadAttention
from sltjax.models.layers.conv import BatchNorm
from sltjax.models.layers.dense import Buffer, dense, layer_norm
from sltjax.models.layers.positions import apply_rotary, sinusoidal_positions
from sltjax.models.xglm import XGLM, XGLMConfig



@dataclasses.dataclass(frozen=True)
class FrameEncoderConfig:
  backbone: str = 'dinov2'
  backbone_options: backbones.BackboneOptions = backbones.BackboneOptions()
  lora_last_layers: int = 3  # LoRA on the backbone's last blocks (the release: 9-11 of 12)
  lora_rank: int = 4
  lora_alpha: float = 4.0
  lora_dropout: float = 0.1
  lora_init_std: float = 0.02
  dim: int = 512
  dtype: str = 'float32'
  param_dtype: str = 'float32'


class FrameEncoder(nnx.Module):
  """Frames -> per-frame features [B, T, dim] (the sign encoder's input)."""

  def __init__(self, cfg: FrameEncoderConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    self.backbone = backbones.build(cfg.backbone, cfg.backbone_options, rngs)
    if cfg.lora_last_layers:
      layers = len(self.backbone.layers)
      blocks = '|'.join(str(i) for i in range(max(layers - cfg.lora_last_layers, 0), layers))
      # The release's LoRA is on DINOv2's fused qkv (one A for q, k and v), proj, fc1 and fc2:
      # 271,872 trainable spatial parameters with the projection and norm, the paper's count.
      lora.add_lora(self.backbone, lora.LoRAConfig(
          rf'^layers/({blocks})/(attention/(q_proj|k_proj|v_proj|out_proj)|fc1|fc2)$',
          rank=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
          init_std=cfg.lora_init_std, fused=('q_proj', 'k_proj', 'v_proj')), rngs)
    width = backbones.output_dim(cfg.backbone, cfg.backbone_options)
    self.projection = _xavier_dense(width, cfg.dim, ('conv_in', 'embed'), cfg, rngs)
    self.norm = BatchNorm(cfg.dim, momentum=0.9, **kw)

  def __call__(self, frames, frame_mask, rngs=None):
    """frames [B, T, H, W, 3] normalised, frame_mask [B, T] -> [B, T, dim]."""
    batch, length = frames.shape[:2]
    images = frames.reshape(batch * length, *frames.shape[2:]).astype(self.config.dtype)
    cls = self.backbone.images(images, rngs)[:, 0].reshape(batch, length, -1)
    x = self.projection(cls)
    return self.norm(x, frame_mask[..., None], train=rngs is not None)


@dataclasses.dataclass(frozen=True)
class SignEncoderConfig:
  dim: int = 512
  heads: int = 8
  stage_depths: tuple[int, ...] = (2, 2)  # blocks per stage; pooling between stages
  window: int = 7  # local attention: |i - j| <= window // 2
  mlp_ratio: int = 4
  dropout: float = 0.1  # attention probabilities, residual branches, MLP
  drop_path: float = 0.1  # of the last block; linear from 0 at the first
  layer_scale_init: float = 1e-5
  rotary_base: float = 10000.0
  dtype: str = 'float32'
  param_dtype: str = 'float32'

  def __post_init__(self):
    if self.window % 2 != 1:
      raise ValueError(f'window={self.window} must be odd (a position and two equal wings).')

  def drop_path_rates(self) -> list[float]:
    blocks = sum(self.stage_depths)
    return [self.drop_path * i / max(blocks - 1, 1) for i in range(blocks)]


def _xavier_dense(in_features: int, out_features: int, axes, cfg, rngs):
  """Linear with the release's Xavier-uniform kernel and zero bias."""
  return dense(in_features, out_features, axes, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
               rngs=rngs, kernel_init=nnx.initializers.xavier_uniform())


def drop_path(x, rate: float, rngs):
  """Stochastic depth: the whole branch of a sample dropped with probability `rate`, the kept
  ones scaled by 1 / (1 - rate); identity without rngs (evaluation). x: [B, ...]."""
  if rngs is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(rngs.dropout(), 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class LocalSelfAttention(nnx.Module):

  def __init__(self, cfg: SignEncoderConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    d = cfg.dim
    self.q_proj = _xavier_dense(d, d, ('embed', 'heads'), cfg, rngs)
    self.k_proj = _xavier_dense(d, d, ('embed', 'heads'), cfg, rngs)
    self.v_proj = _xavier_dense(d, d, ('embed', 'heads'), cfg, rngs)
    self.out_proj = _xavier_dense(d, d, ('heads', 'embed'), cfg, rngs)
    self.attention_dropout = nnx.Dropout(cfg.dropout)
    self.residual_dropout = nnx.Dropout(cfg.dropout)

  def __call__(self, x, mask, rngs=None):
    """x [B, T, d], mask [B, T] (1 = valid) -> [B, T, d]."""
    cfg = self.config
    batch, length, d = x.shape
    heads = lambda h: h.reshape(batch, length, cfg.heads, d // cfg.heads)
    q = apply_rotary(heads(lora.call(self.q_proj, x, rngs)), cfg.rotary_base)
    k = apply_rotary(heads(lora.call(self.k_proj, x, rngs)), cfg.rotary_base)
    v = heads(lora.call(self.v_proj, x, rngs))
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32) * (d // cfg.heads) ** -0.5
    position = jnp.arange(length)
    local = jnp.abs(position[:, None] - position[None, :]) <= cfg.window // 2  # [T, T]
    allowed = (local[None, None] & (mask[:, None, None, :] > 0)) | jnp.eye(length, dtype=bool)
    probs = jax.nn.softmax(jnp.where(allowed, logits, jnp.finfo(jnp.float32).min), axis=-1)
    probs = self.attention_dropout(probs.astype(v.dtype), deterministic=rngs is None, rngs=rngs)
    out = jnp.einsum('bhqk,bkhd->bqhd', probs, v).reshape(batch, length, d)
    out = lora.call(self.out_proj, out, rngs)
    return self.residual_dropout(out, deterministic=rngs is None, rngs=rngs)


class SignEncoderBlock(nnx.Module):
  """Post-LN: x = norm1(x + drop_path(ls1 * attention(x))); x = norm2(x + drop_path(ls2 * mlp(x)))."""

  def __init__(self, cfg: SignEncoderConfig, drop_path_rate: float, *, rngs: nnx.Rngs):
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    d, hidden = cfg.dim, cfg.dim * cfg.mlp_ratio
    self.attention = LocalSelfAttention(cfg, rngs=rngs)
    self.norm1 = layer_norm(d, **kw)
    self.fc1 = _xavier_dense(d, hidden, ('embed', 'mlp'), cfg, rngs)
    self.fc2 = _xavier_dense(hidden, d, ('mlp', 'embed'), cfg, rngs)
    self.norm2 = layer_norm(d, **kw)
    self.layer_scale1 = nnx.Param(jnp.full((d,), cfg.layer_scale_init, cfg.param_dtype))
    self.layer_scale2 = nnx.Param(jnp.full((d,), cfg.layer_scale_init, cfg.param_dtype))
    self.dropout = nnx.Dropout(cfg.dropout)
    self.drop_path_rate = drop_path_rate

  def __call__(self, x, mask, rngs=None):
    drop = lambda h: self.dropout(h, deterministic=rngs is None, rngs=rngs)
    h = self.attention(x, mask, rngs) * self.layer_scale1[...]
    x = self.norm1(x + drop_path(h, self.drop_path_rate, rngs))
    h = drop(lora.call(self.fc2, drop(jax.nn.gelu(lora.call(self.fc1, x, rngs),
                                                  approximate=False)), rngs))
    return self.norm2(x + drop_path(h * self.layer_scale2[...], self.drop_path_rate, rngs))


def pool_in_time(x, mask):
  """Average pooling k3, s2, p1 of x [B, T, d] (zero padding counted, padded frames zeroed
  first) -> [B, ceil(T / 2), d], and its mask [B, ceil(T / 2)]: valid where the window's centre
  frame is, position 0 always; so a clip of n frames keeps the ceil(n / 2) positions it has
  alone, whatever pads it."""
  valid = mask.astype(x.dtype)[..., None]
  pooled = nnx.avg_pool(x * valid, (3,), strides=(2,), padding=((1, 1),), count_include_pad=True)
  return pooled, (mask[:, ::2] > 0).at[:, 0].set(True).astype(mask.dtype)


class SignEncoder(nnx.Module):

  def __init__(self, cfg: SignEncoderConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    rates = iter(cfg.drop_path_rates())
    self.stages = nnx.List([nnx.List([SignEncoderBlock(cfg, next(rates), rngs=rngs)
                                      for _ in range(depth)]) for depth in cfg.stage_depths])

  def __call__(self, x, mask, rngs=None):
    """Frame features x [B, T, dim], mask [B, T] -> (x [B, T', dim], mask [B, T']),
    T' = T halved (rounding up) once between every two stages."""
    x = x + sinusoidal_positions(x.shape[1], x.shape[2]).astype(x.dtype)[None]
    for index, stage in enumerate(self.stages):
      if index:
        x, mask = pool_in_time(x, mask)
      for block in stage:
        x = block(x, mask, rngs)
    return x, mask


class PrototypeHead(nnx.Module):
  """Pseudo-gloss presence from sign features, against frozen word-vector prototypes."""

  def __init__(self, in_dim: int, word_vectors, *, dropout: float = 0.2,
               temperature: float = 0.1, dtype: str = 'float32', param_dtype: str = 'float32',
               rngs: nnx.Rngs):
    """word_vectors [V, dim]: one per pseudo-gloss (FastText in the release), kept fixed."""
    vectors = jnp.asarray(word_vectors, jnp.float32)
    self.projection = nnx.Linear(  # PyTorch's default Linear init, as the release's head
        in_dim, vectors.shape[1], dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        kernel_init=nnx.with_partitioning(
            nnx.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'), ('embed', 'mlp')),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros, ('mlp',)))
    norms = jnp.linalg.norm(vectors, axis=1, keepdims=True)
    self.prototypes = Buffer(vectors / jnp.maximum(norms, 1e-12))  # [V, dim], unit rows
    self.class_temperature = nnx.Param(jnp.asarray(temperature, param_dtype))
    self.time_temperature = nnx.Param(jnp.asarray(temperature, param_dtype))
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, x, mask, rngs=None):
    """x [B, T, in_dim], mask [B, T] -> {'scores' [B, V] in [0, 1], 'weights' [B, T, V]: each
    gloss's softmax over glosses times its softmax over time (where the model places it)}."""
    y = self.projection(self.dropout(x, deterministic=rngs is None, rngs=rngs))
    y = y.astype(jnp.float32)
    y = y * jax.lax.rsqrt(jnp.maximum(jnp.sum(y * y, axis=-1, keepdims=True), 1e-24))
    similarity = jnp.einsum('btd,vd->btv', y, self.prototypes[...])
    similarity = jnp.concatenate([similarity, jnp.zeros_like(similarity[..., :1])], axis=-1)
    class_temperature = jnp.clip(self.class_temperature[...].astype(jnp.float32), 0.01, 1.0)
    time_temperature = jnp.clip(self.time_temperature[...].astype(jnp.float32), 0.01, 1.0)
    over_glosses = jax.nn.softmax(similarity / class_temperature, axis=-1)
    valid = (mask > 0)[..., None]
    over_time = jax.nn.softmax(jnp.where(valid, similarity / time_temperature,
                                         jnp.finfo(jnp.float32).min), axis=1)
    weights = (over_glosses * over_time)[..., :-1]  # the blank column dropped
    return {'scores': jnp.sum(weights, axis=1), 'weights': weights}


def pseudo_gloss_loss(scores, targets):
  """Mean binary cross entropy over [B, V] of presence scores (clamped to [1e-8, 1 - 1e-8], as
  the release) against multi-hot targets."""
  p = jnp.clip(scores, 1e-8, 1 - 1e-8)
  return jnp.mean(-(targets * jnp.log(p) + (1 - targets) * jnp.log1p(-p)))


@dataclasses.dataclass(frozen=True)
class AdaptorConfig:
  rank: int = 4
  alpha: float = 4.0
  dropout: float = 0.1  # LoRA dropout
  attention_dropout: float = 0.1  # on the visual attention probabilities
  init_std: float = 0.2  # the release's A ~ N(0, 0.2) for the LM's LoRAs and the adaptor's query


def straight_through_clamp(x, low: float = 0.0, high: float = 1.0):
  """x clamped to [low, high] in the forward pass, its gradient passed through unchanged."""
  return x + jax.lax.stop_gradient(jnp.clip(x, low, high) - x)


class VisualAdaptor(nnx.Module):
  """Zero-gated cross-attention from a frozen LM layer's queries to visual tokens."""

  def __init__(self, d_model: int, heads: int, cfg: AdaptorConfig, *, param_dtype='float32',
               rngs: nnx.Rngs):
    self.heads, self.scale = heads, cfg.alpha / cfg.rank
    query_init = nnx.initializers.normal(cfg.init_std)
    # PyTorch's default Linear init, as the release leaves the key and value LoRAs.
    torch_default = nnx.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')
    param = lambda init, shape, axes: nnx.Param(nnx.with_partitioning(init, axes)(
        rngs.params(), shape, param_dtype))
    self.query_a = param(query_init, (d_model, cfg.rank), ('embed', None))
    self.query_b = param(nnx.initializers.zeros, (cfg.rank, d_model), (None, 'heads'))
    self.key_a = param(torch_default, (d_model, cfg.rank), ('embed', None))
    self.key_b = param(torch_default, (cfg.rank, d_model), (None, 'heads'))
    self.value_a = param(torch_default, (d_model, cfg.rank), ('embed', None))
    self.value_b = param(torch_default, (cfg.rank, d_model), (None, 'heads'))
    self.gate = nnx.Param(jnp.zeros((heads,), param_dtype))
    self.lora_dropout = nnx.Dropout(cfg.dropout)
    self.attention_dropout = nnx.Dropout(cfg.attention_dropout)

  def _project(self, linear, a, b, x, rngs):
    """The frozen projection (without its own LoRA) plus this adaptor's low-rank update."""
    dropped = self.lora_dropout(x, deterministic=rngs is None, rngs=rngs)
    update = (dropped @ a[...].astype(x.dtype) @ b[...].astype(x.dtype)) * self.scale
    out = lora.base_call(linear, x) + update
    return out.reshape(*out.shape[:2], self.heads, -1)  # [batch, length, heads, head_dim]

  def keys_values(self, attention: MultiHeadAttention, visual, rngs=None):
    """Keys and values [batch, V, heads, head_dim] of layer-normalised visual tokens."""
    return (self._project(attention.k_proj, self.key_a, self.key_b, visual, rngs),
            self._project(attention.v_proj, self.value_a, self.value_b, visual, rngs))

  def __call__(self, h, attention: MultiHeadAttention, visual, rngs=None):
    """h [rows, length, d] (the layer-normalised LM states; rows = sentences x beams), visual =
    (keys, values [sentences, V, heads, head_dim], mask [sentences, V]) -> the gated
    cross-attention output per head [rows, length, heads, head_dim]."""
    keys, values, mask = visual
    q = self._project(attention.q_proj, self.query_a, self.query_b, h, rngs)
    rows, length, heads, head_dim = q.shape
    sentences = keys.shape[0]
    q = q.reshape(sentences, rows // sentences, length, heads, head_dim) * head_dim ** -0.5
    logits = jnp.einsum('sglhd,svhd->sghlv', q, keys).astype(jnp.float32)
    logits = jnp.where(mask[:, None, None, None, :] > 0, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    probs = self.attention_dropout(probs, deterministic=rngs is None, rngs=rngs)
    gate = straight_through_clamp(self.gate[...].astype(jnp.float32))
    probs = (probs * gate[None, None, :, None, None]).astype(values.dtype)
    out = jnp.einsum('sghlv,svhd->sglhd', probs, values)
    return out.reshape(rows, length, heads, head_dim)


def adapt_xglm(model, cfg: AdaptorConfig, rngs: nnx.Rngs) -> None:
  """Adds Sign2GPT's adapters to an XGLM (sltjax/models/xglm.py) in place: a VisualAdaptor in
  every layer, LoRA on its self-attention's q, k, v (alpha / rank, dropout) and o (unscaled,
  no dropout, as the release). Converted weights keep their paths."""
  lm = model.config
  for layer in model.layers:
    layer.visual_adaptor = VisualAdaptor(lm.d_model, lm.attention_heads, cfg,
                                         param_dtype=lm.param_dtype, rngs=rngs)
  lora.add_lora(model, lora.LoRAConfig(r'self_attn/(q_proj|k_proj|v_proj)$', rank=cfg.rank,
                                       alpha=cfg.alpha, dropout=cfg.dropout,
                                       init_std=cfg.init_std), rngs)
  lora.add_lora(model, lora.LoRAConfig(r'self_attn/out_proj$', rank=cfg.rank, alpha=cfg.rank,
                                       dropout=0.0, init_std=cfg.init_std), rngs)


class Sign2GPTPretraining(nnx.Module):
  """Stage 1: pseudo-gloss presence from frames."""

  def __init__(self, frames: FrameEncoderConfig, signs: SignEncoderConfig, word_vectors, *,
               rngs: nnx.Rngs):
    self.frames = FrameEncoder(frames, rngs=rngs)
    self.sign_encoder = SignEncoder(signs, rngs=rngs)
    self.head = PrototypeHead(signs.dim, word_vectors, dtype=signs.dtype,
                              param_dtype=signs.param_dtype, rngs=rngs)

  def __call__(self, frames, frame_mask, rngs=None):
    """PrototypeHead's {'scores' [B, V], 'weights' [B, T', V]} and 'mask' [B, T']."""
    x, mask = self.sign_encoder(self.frames(frames, frame_mask, rngs), frame_mask, rngs)
    return {**self.head(x, mask, rngs), 'mask': mask}


class Sign2GPTTranslator(nnx.Module):
  """Stage 2: the adapted XGLM continuing `</s>` while attending to the visual tokens."""

  def __init__(self, frames: FrameEncoderConfig, signs: SignEncoderConfig, lm: XGLMConfig,
               adaptor: AdaptorConfig, *, rngs: nnx.Rngs):
    self.frames = FrameEncoder(frames, rngs=rngs)
    self.sign_encoder = SignEncoder(signs, rngs=rngs)
    self.visual_projection = dense(signs.dim, lm.d_model, ('conv_in', 'embed'), dtype=lm.dtype,
                                   param_dtype=lm.param_dtype, rngs=rngs)
    self.lm = XGLM(lm, rngs=rngs)
    adapt_xglm(self.lm, adaptor, rngs)

  def visual_tokens(self, frames, frame_mask, rngs=None):
    """(tokens [B, T', d_LM], mask [B, T']) of a batch of clips."""
    return self.visual_tokens_of_features(self.frames(frames, frame_mask, rngs), frame_mask,
                                          rngs)

  def visual_tokens_of_features(self, features, frame_mask, rngs=None):
    """(tokens [B, T', d_LM], mask [B, T']) of FrameEncoder's features [B, T, dim]."""
    x, mask = self.sign_encoder(features, frame_mask, rngs)
    x = x + sinusoidal_positions(x.shape[1], x.shape[2]).astype(x.dtype)[None]
    return self.visual_projection(x), mask

  def __call__(self, frames, frame_mask, input_ids, attention_mask, rngs=None):
    """Teacher-forced logits [B, L, vocab] of input_ids [B, L] (right-padded `</s> X </s>`)."""
    return self.lm(input_ids, attention_mask, visual=self.visual_tokens(frames, frame_mask, rngs),
                   rngs=rngs)
