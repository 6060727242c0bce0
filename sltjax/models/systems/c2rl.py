"""C2RL (Chen, Zhou et al., 2024): gloss-free pretraining of a visual encoder with implicit
content learning (CLCL contrastive loss against a text encoder) and explicit context learning
(a text decoder captioning from the visual features), then Sign2Text and sign retrieval on its
frozen features.

  frames [B, T, H, W, 3] -> backbone per frame (ResNet-18) [B, T, 512]
    -> Conv1D k3 + BatchNorm + ReLU -> Linear -> + learned positions -> 3 encoder layers
    -> visual features V [B, T, d]                                           (VisualEncoder)
  pretraining (C2RLPretraining), on one mBART-shaped text network of width d:
    text `X </s> lang` -> its encoder (embedding + 3 layers) -> W [B, L, d]   ICL: CLCL(V, W)
    `lang X </s>` -> its decoder (3 layers cross-attending to V) -> logits    ECL: LM loss
  downstream, on V (offline features, or the frozen encoder run on frames):
    SignTranslator  V -> Linear -> mBART `inputs_embeds` -> decoder         (Sign2Text)
    SignRetriever   V -> Linear -> mBART encoder A; text -> mBART encoder B  (SLRet, CLCL)

Dropout runs when `rngs` is given (training), which also switches BatchNorm to batch statistics
over the valid frames.
"""
import dataclasses
import math

import jax.numpy as jnp
from flax import nnx

from sltjax.models.backbones import registry as backbones
from sltjax.models.layers.conv import BatchNorm, temporal_conv
from sltjax.models.layers.dense import dense, embedding, layer_norm
from sltjax.models.mbart import EncoderLayer, MBart, MBartConfig
from sltjax.models.systems.ipslt import PrototypeConfig, translation_network

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP / CiCo clamp the learned log-scale here
INITIAL_LOGIT_SCALE = math.log(1 / 0.07)


@dataclasses.dataclass(frozen=True)
class VisualEncoderConfig:
  backbone: str = 'resnet18'  # a registered backbone (sltjax/models/backbones/registry.py)
  backbone_width: float = 1.0
  frozen_bn: bool = False
  bn_momentum: float = 0.0  # backbone running-statistics momentum (Flax's); 0: the released one
  conv_kernel: int = 3
  d_model: int = 512
  layers: int = 3
  heads: int = 8
  ffn_dim: int = 2048
  dropout: float = 0.1
  max_frames: int = 512  # learned positions
  dtype: str = 'float32'
  param_dtype: str = 'float32'

  def __post_init__(self):
    if self.backbone == 'features':
      raise ValueError('C2RL\'s visual encoder needs a frame backbone (model.visual.backbone); '
                       'downstream stages read extracted features with data.features_dir.')
    backbones.get(self.backbone)  # raises naming the registered ones

  @property
  def backbone_options(self) -> backbones.BackboneOptions:
    return backbones.BackboneOptions(width=self.backbone_width, frozen_bn=self.frozen_bn,
                                     bn_momentum=self.bn_momentum, dtype=self.dtype,
                                     param_dtype=self.param_dtype)

  def layer_config(self) -> MBartConfig:
    """The encoder layers' shape, as an mBART config (its vocabulary is unused)."""
    return MBartConfig(vocab_size=1, d_model=self.d_model, encoder_attention_heads=self.heads,
                       encoder_ffn_dim=self.ffn_dim, dropout=self.dropout,
                       dtype=self.dtype, param_dtype=self.param_dtype)


def _drop(dropout: nnx.Dropout, x, rngs):
  return dropout(x, deterministic=rngs is None, rngs=rngs)


class VisualEncoder(nnx.Module):
  """Frames -> per-frame features V [B, T, d] (the features downstream stages read)."""

  def __init__(self, cfg: VisualEncoderConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    self.backbone = backbones.build(cfg.backbone, cfg.backbone_options, rngs)
    width = backbones.output_dim(cfg.backbone, cfg.backbone_options)
    self.temporal_conv = temporal_conv(width, width, cfg.conv_kernel, padding='SAME', **kw)
    self.temporal_bn = BatchNorm(width, momentum=0.9, **kw)
    self.projection = dense(width, cfg.d_model, ('conv_in', 'embed'), **kw)
    self.embed_positions = embedding(cfg.max_frames, cfg.d_model, ('positions', 'embed'), **kw)
    layer = cfg.layer_config()
    self.layers = nnx.List([EncoderLayer(layer, rngs=rngs) for _ in range(cfg.layers)])
    self.layer_norm = layer_norm(cfg.d_model, **kw)
    self.dropout = nnx.Dropout(cfg.dropout)

  def __call__(self, frames, frame_mask, rngs=None):
    """frames [B, T, H, W, 3] normalised, frame_mask [B, T] -> (V [B, T, d], frame_mask)."""
    train = rngs is not None
    features, mask = self.backbone(frames.astype(self.config.dtype), frame_mask, train=train)
    valid = mask[..., None].astype(features.dtype)  # [B, T, 1]
    # Padded frames are zeroed so that they do not leak into valid ones through the conv.
    x = self.temporal_conv(features * valid)
    x = jnp.maximum(self.temporal_bn(x, valid, train=train), 0.0)
    x = self.projection(x)
    if x.shape[1] > self.config.max_frames:
      raise ValueError(f'{x.shape[1]} frames exceed the visual encoder\'s {self.config.max_frames} '
                       'positions (model.visual.max_frames); lower data.max_frames.')
    x = x + self.embed_positions(jnp.arange(x.shape[1]))[None]
    x = _drop(self.dropout, x, rngs)
    attention_mask = mask[:, None, None, :].astype(bool)  # [B, 1, 1, T]
    for layer in self.layers:
      x = layer(x, attention_mask, rngs)
    return self.layer_norm(x), mask


class C2RLPretraining(nnx.Module):
  """The visual encoder, the text network (encoder for ICL, decoder for ECL) and the learned
  logit scale of the contrastive loss."""

  def __init__(self, visual: VisualEncoderConfig, text: MBartConfig, *, rngs: nnx.Rngs):
    if text.d_model != visual.d_model:
      raise ValueError(f'The text network\'s width ({text.d_model}) must equal the visual '
                       f'encoder\'s ({visual.d_model}): CLCL compares their features and the '
                       'decoder attends to the visual ones.')
    self.visual = VisualEncoder(visual, rngs=rngs)
    self.text = MBart(text, rngs=rngs)
    self.logit_scale = nnx.Param(jnp.asarray(INITIAL_LOGIT_SCALE, visual.param_dtype))

  def encode_text(self, text_ids, text_mask, rngs=None):
    """text_ids, text_mask [B, L] -> W [B, L, d]."""
    return self.text.encode(text_ids, text_mask, rngs=rngs)

  def __call__(self, frames, frame_mask, text_ids, text_mask, decoder_input_ids, rngs=None):
    """{'video' [B, T, d], 'video_mask' [B, T], 'text' [B, L, d], 'logits' [B, L', vocab]}."""
    video, video_mask = self.visual(frames, frame_mask, rngs)
    logits, _ = self.text.decode(decoder_input_ids, video_mask,
                                 self.text.cross_attention_kv(video), rngs=rngs)
    return {'video': video, 'video_mask': video_mask,
            'text': self.encode_text(text_ids, text_mask, rngs), 'logits': logits}


class _OnVisualFeatures(nnx.Module):
  """Downstream models: the visual encoder (frozen unless `train_visual`) and a Linear from its
  features."""

  def _features(self, inputs, mask, rngs=None):
    """inputs: features [B, T, d_visual] or frames [B, T, H, W, 3], mask [B, T] -> projected
    features [B, T, d] and the mask. A frozen encoder runs in eval mode, its BatchNorm
    statistics untouched."""
    if inputs.ndim == 5:
      inputs, mask = self.visual(inputs, mask, rngs if self.train_visual else None)
    return self.projection(inputs.astype(self.projection.kernel.dtype)), mask


class SignTranslator(_OnVisualFeatures):
  """Sign2Text: V -> Linear -> mBART `inputs_embeds` -> decoder."""

  def __init__(self, visual: VisualEncoderConfig, translation: MBartConfig, *,
               train_visual: bool = False, prototype: PrototypeConfig | None = None,
               rngs: nnx.Rngs):
    self.train_visual = train_visual
    self.visual = VisualEncoder(visual, rngs=rngs)
    self.projection = dense(visual.d_model, translation.d_model, ('conv_in', 'embed'),
                            dtype=translation.dtype, param_dtype=translation.param_dtype,
                            rngs=rngs)
    # With `prototype`, IP-SLT refines the mBART encoder's output (sltjax/models/systems/ipslt.py).
    self.translation = translation_network(translation, prototype, rngs=rngs)

  def encoder_inputs(self, inputs, mask, rngs=None):
    """(`inputs_embeds` [B, T, d_mbart], attention mask [B, T]) of features or frames."""
    return self._features(inputs, mask, rngs)

  def __call__(self, inputs, mask, decoder_input_ids, rngs=None):
    """Teacher-forced logits [B, L, vocab] from features or frames."""
    embeds, mask = self.encoder_inputs(inputs, mask, rngs)
    return self.translation(None, mask, decoder_input_ids, inputs_embeds=embeds, rngs=rngs)


class SignRetriever(_OnVisualFeatures):
  """SLRet: V -> Linear -> one mBART encoder; text -> a second, unshared mBART encoder."""

  def __init__(self, visual: VisualEncoderConfig, encoder: MBartConfig, *,
               train_visual: bool = False, rngs: nnx.Rngs):
    encoder = dataclasses.replace(encoder, decoder_layers=0)
    self.train_visual = train_visual
    self.visual = VisualEncoder(visual, rngs=rngs)
    self.projection = dense(visual.d_model, encoder.d_model, ('conv_in', 'embed'),
                            dtype=encoder.dtype, param_dtype=encoder.param_dtype, rngs=rngs)
    self.video_encoder = MBart(encoder, rngs=rngs)
    self.text_encoder = MBart(encoder, rngs=rngs)
    self.logit_scale = nnx.Param(jnp.asarray(INITIAL_LOGIT_SCALE, encoder.param_dtype))

  def encode_video(self, inputs, mask, rngs=None):
    """Features or frames -> (video features [B, T, d], mask [B, T])."""
    embeds, mask = self._features(inputs, mask, rngs)
    return self.video_encoder.encode(None, mask, inputs_embeds=embeds, rngs=rngs), mask

  def encode_text(self, text_ids, text_mask, rngs=None):
    """text_ids, text_mask [B, L] -> [B, L, d]."""
    return self.text_encoder.encode(text_ids, text_mask, rngs=rngs)

