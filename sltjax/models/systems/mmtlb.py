"""MMTLB (Chen et al., CVPR 2022): video -> glosses (CTC) and -> spoken sentence (mBART).

  frames [B, T, H, W, 3] -> backbone (S3D through Mixed_4f: [B, T/4, 832]; or ResNet-18 per frame)
    -> VisualHead: gloss representation Z [B, T', 512] and gloss logits [B, T', K]   (Sign2Gloss)
    -> V-L mapper (MLP on Z; or the CSL-Daily variant on gloss probabilities) [B, T', d]
    -> * sqrt(d), then `</s>` and the sign-language code appended after the valid frames
       (their text embeddings; or, with suffix='own', two vectors of their own, as the release's
       Sign2Text takes them from its gloss embedding)
    -> mBART encoder `inputs_embeds` -> decoder                                      (Sign2Text)

Dropout runs when `rngs` is given (training), which also switches BatchNorm to batch statistics
over the valid frames.
"""
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from sltjax.models.backbones import registry as backbones
from sltjax.models.layers.conv import BatchNorm
from sltjax.models.layers.dense import dense, layer_norm
from sltjax.models.layers.positions import sinusoidal_positions
from sltjax.models.mbart import MBartConfig
from sltjax.models.systems.ipslt import PrototypeConfig, translation_network

MAPPERS = ('mlp', 'gloss_probs')
SUFFIXES = ('text', 'own')


@dataclasses.dataclass(frozen=True)
class MMTLBConfig:
  num_glosses: int  # CTC classes, blank (0) included
  backbone: str = 's3d'  # a registered backbone; 'features': inputs are [B, T', feature_dim]
  backbone_width: float = 1.0  # S3D channel multiplier (ResNet: width 64 * this)
  feature_dim: int = 832  # input size of the head when backbone='features'
  frozen_bn: bool = False  # backbone BatchNorms use their running statistics
  bn_momentum: float = 0.0  # backbone running-statistics momentum (Flax's); 0: the released one
  backbone_frozen_layers: int = 0  # S3D layers kept in inference mode (the release: 1, block 0)
  head_dim: int = 512
  head_ffn_dim: int = 2048
  head_kernel: int = 3
  head_dropout: float = 0.1
  mapper: str = 'mlp'  # MAPPERS
  mapper_hidden: int = 1024
  # What follows the mapped frames: 'text' (the translation embedding's `</s>` and sign-language
  # code rows) or 'own' (a [2, d] parameter: the release's gloss-embedding rows of both).
  suffix: str = 'text'
  translation: MBartConfig | None = None  # None: Sign2Gloss only
  prototype: PrototypeConfig | None = None  # IP-SLT's refinement of the translation encoder
  dtype: str = 'float32'
  param_dtype: str = 'float32'

  def __post_init__(self):
    backbones.get(self.backbone)  # raises naming the registered ones
    if self.mapper not in MAPPERS:
      raise ValueError(f'model.mapper={self.mapper!r}; expected one of {MAPPERS}.')
    if self.suffix not in SUFFIXES:
      raise ValueError(f'model.suffix={self.suffix!r}; expected one of {SUFFIXES}.')

  @property
  def backbone_options(self) -> backbones.BackboneOptions:
    return backbones.BackboneOptions(
        width=self.backbone_width, frozen_bn=self.frozen_bn, bn_momentum=self.bn_momentum,
        frozen_layers=self.backbone_frozen_layers,
        feature_dim=self.feature_dim, dtype=self.dtype, param_dtype=self.param_dtype)

  @property
  def backbone_features(self) -> int:
    return backbones.output_dim(self.backbone, self.backbone_options)


class VisualHead(nnx.Module):
  """Backbone features -> gloss representation Z and gloss logits (MMTLB's head)."""

  def __init__(self, in_features: int, cfg: MMTLBConfig, *, rngs: nnx.Rngs):
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    d, k = cfg.head_dim, cfg.head_kernel
    self.projection = dense(in_features, d, ('conv_in', 'embed'), **kw)
    self.projection_bn = BatchNorm(d, momentum=0.9, **kw)
    self.norm = layer_norm(d, epsilon=1e-6, **kw)  # the release's LayerNorm epsilon
    conv = lambda i, o, axes: nnx.Conv(
        i, o, (k,), padding='SAME', **kw,
        kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, *axes)),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros, (axes[1],)))
    self.conv1 = conv(d, cfg.head_ffn_dim, ('embed', 'mlp'))
    self.conv2 = conv(cfg.head_ffn_dim, d, ('mlp', 'embed'))
    self.final_norm = layer_norm(d, epsilon=1e-6, **kw)
    self.classifier = dense(d, cfg.num_glosses, ('embed', 'vocab'), **kw)
    self.dropout = nnx.Dropout(cfg.head_dropout)

  def __call__(self, features, mask, rngs=None):
    """features [B, T', C], mask [B, T'] -> (Z [B, T', head_dim], gloss logits [B, T', K] f32)."""
    drop = lambda h: self.dropout(h, deterministic=rngs is None, rngs=rngs)
    valid = mask[..., None].astype(features.dtype)
    x = self.projection_bn(self.projection(features), valid, train=rngs is not None)
    x = jax.nn.relu(x) + sinusoidal_positions(x.shape[1], x.shape[2]).astype(x.dtype)[None]
    x = drop(x)
    h = self.norm(x) * valid  # padded frames do not leak into valid ones through the convs
    h = drop(jax.nn.relu(self.conv1(h))) * valid
    x = x + drop(self.conv2(h))
    z = self.final_norm(x)
    return z, self.classifier(z).astype(jnp.float32)


class GlossProbabilityMapper(nnx.Module):
  """CSL-Daily's V-L mapper: gloss probabilities -> a bias-free Linear(K -> d), whose rows can be
  initialised from the glosses' mBART embeddings."""

  def __init__(self, num_glosses: int, d_model: int, cfg: MMTLBConfig, *, rngs: nnx.Rngs):
    self.linear = dense(num_glosses, d_model, ('vocab', 'embed'), use_bias=False,
                        dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs, init_std=0.02)

  def __call__(self, z, gloss_logits):  # pylint: disable=unused-argument
    return self.linear(jax.nn.softmax(gloss_logits, axis=-1).astype(self.linear.kernel.dtype))


class MLPMapper(nnx.Module):
  """PHOENIX's V-L mapper: Z -> Linear -> ReLU -> Linear (512 -> 1024 -> 1024)."""

  def __init__(self, in_features: int, hidden: int, d_model: int, cfg: MMTLBConfig, *,
               rngs: nnx.Rngs):
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    self.fc1 = dense(in_features, hidden, ('embed', 'mlp'), **kw)
    self.fc2 = dense(hidden, d_model, ('mlp', 'embed'), **kw)

  def __call__(self, z, gloss_logits):  # pylint: disable=unused-argument
    return self.fc2(jax.nn.relu(self.fc1(z)))


class MMTLB(nnx.Module):
  """Sign2Gloss (config.translation None) or Sign2Text (with the mBART translation network)."""

  def __init__(self, cfg: MMTLBConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.backbone = backbones.build(cfg.backbone, cfg.backbone_options, rngs)
    self.head = VisualHead(cfg.backbone_features, cfg, rngs=rngs)
    translates = cfg.translation is not None
    d = cfg.translation.d_model if translates else 0
    self.mapper = (None if not translates else
                   MLPMapper(cfg.head_dim, cfg.mapper_hidden, d, cfg, rngs=rngs)
                   if cfg.mapper == 'mlp' else
                   GlossProbabilityMapper(cfg.num_glosses, d, cfg, rngs=rngs))
    self.translation = (translation_network(cfg.translation, cfg.prototype, rngs=rngs)
                        if translates else None)
    if translates and cfg.suffix == 'own':  # [`</s>`, sign-language code] x d
      init = nnx.with_partitioning(nnx.initializers.normal(0.02), (None, 'embed'))
      self.suffix = nnx.Param(init(rngs.params(), (2, d), jnp.dtype(cfg.param_dtype)))

  def visual(self, frames, frame_mask, rngs=None):
    """frames [B, T, H, W, 3] normalised (or features [B, T', C] for backbone='features'),
    frame_mask [B, T] -> {'z' [B, T', D], 'gloss_logits' [B, T', K], 'gloss_mask' [B, T']}."""
    features, mask = (frames, frame_mask) if self.backbone is None else self.backbone(
        frames.astype(self.config.dtype), frame_mask, train=rngs is not None)
    z, gloss_logits = self.head(features, mask, rngs)
    return {'z': z, 'gloss_logits': gloss_logits, 'gloss_mask': mask}

  def encoder_inputs(self, visual, eos_id: int, sign_lang_id: int):
    """mBART `inputs_embeds` [B, T'+2, d] and mask: the mapped frames scaled by sqrt(d) (as the
    release does), then the embeddings of `</s>` and the sign-language code right after each
    row's valid frames (the model's own two with suffix='own'), scaled alike."""
    mapped = self.mapper(visual['z'], visual['gloss_logits']) * self.translation.embed_scale
    batch, length, d = mapped.shape
    mapped = jnp.concatenate([mapped, jnp.zeros((batch, 2, d), mapped.dtype)], axis=1)
    valid = jnp.sum(visual['gloss_mask'], axis=1).astype(jnp.int32)[:, None]  # [B, 1]
    position = jnp.arange(length + 2)[None]  # [1, T'+2]
    if self.config.suffix == 'own':
      specials = self.suffix.value * self.translation.embed_scale  # [2, d]
    else:
      specials = self.translation.embed_tokens(jnp.array([eos_id, sign_lang_id]))  # [2, d]
    embeds = jnp.where((position == valid)[..., None], specials[0].astype(mapped.dtype), mapped)
    embeds = jnp.where((position == valid + 1)[..., None], specials[1].astype(mapped.dtype),
                       embeds)
    return embeds, (position < valid + 2).astype(jnp.int32)

  def translation_loss(self, visual, decoder_input_ids, labels, label_weights, *, eos_id: int,
                       sign_lang_id: int, label_smoothing: float, per: str = 'token',
                       rngs=None):
    """(loss, metrics) of the translation network (MBart.translation_loss, `per` token or
    sentence) on `visual`'s encoder inputs; decoder_input_ids, labels, label_weights [B, L]."""
    embeds, mask = self.encoder_inputs(visual, eos_id, sign_lang_id)
    return self.translation.translation_loss(mask, decoder_input_ids, labels, label_weights,
                                             inputs_embeds=embeds,
                                             label_smoothing=label_smoothing, per=per, rngs=rngs)

  def __call__(self, frames, frame_mask, decoder_input_ids=None, *, eos_id: int = 2,
               sign_lang_id: int = 0, rngs=None):
    """Visual outputs, plus teacher-forced 'logits' [B, L, vocab] when translating."""
    out = self.visual(frames, frame_mask, rngs)
    if self.translation is not None and decoder_input_ids is not None:
      embeds, mask = self.encoder_inputs(out, eos_id, sign_lang_id)
      out['logits'] = self.translation(None, mask, decoder_input_ids, inputs_embeds=embeds,
                                       rngs=rngs)
    return out
