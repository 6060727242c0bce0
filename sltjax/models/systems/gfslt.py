"""GFSLT-VLP (Zhou et al., ICCV 2023): gloss-free visual-language pretraining of a sign encoder.

  frames [B, T, H, W, 3] -> each clip padded as the release's collate pads it: 8 copies of its
    first frame before, its last frame repeated after, to ceil(n / 4) * 4 + 16 frames
    -> ResNet-18 per frame [B, T, 512] (or given per-frame features: backbone 'features')
    -> [Conv1d k5 (no padding) -> BatchNorm -> ReLU -> MaxPool 2] x 2   [B, T', d], T' ~ T/4
    -> a learned CLS token prepended -> an mBART-shaped encoder (3 layers, from scratch)
    -> Linear (no bias) of the CLS output: the video embedding [B, d]          (VisualEncoder)
  text `X </s> lang` -> an mBART encoder -> its state at the last real token: the sentence
    embedding [B, d] (the release takes the position of the largest token id, mBART's language
    code, which is the last real token)
  CLIP loss: cosine similarities x exp(logit scale) -> in both directions, halved, each row's KL
    from softmax(10 x identity) (the release's KLLoss; sltjax.losses.clip_kl_loss)
  masked self-supervised text decoding: the text with its last words masked -> the text encoder
    (no gradient) -> a separate mBART-shaped decoder (3 layers) writes the whole sentence

Facts from the paper and its release (github:zhoubenjia/GFSLT-VLP, train_vlp_v2.py, models.py):
the logit scale starts at ln(1/0.07) and is never clamped; masking ('omit_last') replaces the last
ceil(n * u) of a sentence's n words, u ~ U(0, 0.15), by <mask>; the decoder's loss is label-smoothed
(0.2) cross entropy weighted by loss_lambda. Differences here, for one step on one optimizer over a
sharded global batch: the decoder trains every step with the rest (the release: its own AdamW,
every 5th step), the contrastive batch is the global batch (the release's: each GPU's),
masking is over tokens of the sentence (the release: whitespace words), the TemporalConv's
BatchNorm leaves padded positions out of its statistics (the release's takes them in, padded
with 1.0), and the decoder's output projection stays tied to its embedding (the release's is a
separate copy). tests/test_gfslt_release_parity.py checks the rest against the release.

Dropout runs when `rngs` is given (training), which also switches BatchNorm to batch statistics
over the valid positions.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from sltjax.models.backbones import registry as backbones
from sltjax.models.layers.conv import BatchNorm, max_pool, temporal_conv
from sltjax.models.layers.dense import dense
from sltjax.models.mbart import MBart, MBartConfig

INITIAL_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's start; GFSLT-VLP never clamps it


@dataclasses.dataclass(frozen=True)
class VisualConfig:
  backbone: str = 'resnet18'  # a registered frame backbone (sltjax/models/backbones/registry.py)
  backbone_width: float = 1.0
  frozen_bn: bool = False
  bn_momentum: float = 0.0  # backbone running-statistics momentum (Flax's); 0: the released one
  feature_dim: int = 0  # backbone 'features': the width of the given per-frame features
  pad_clip_edges: bool = True  # the release's first/last-frame padding (edge_padded_clips)
  conv_kernel: int = 5
  conv_blocks: int = 2  # [conv -> BN -> ReLU -> max pool 2] blocks: T' ~ T / 2**blocks
  dtype: str = 'float32'
  param_dtype: str = 'float32'

  @property
  def backbone_options(self) -> backbones.BackboneOptions:
    return backbones.BackboneOptions(width=self.backbone_width, frozen_bn=self.frozen_bn,
                                     bn_momentum=self.bn_momentum, feature_dim=self.feature_dim,
                                     dtype=self.dtype, param_dtype=self.param_dtype)


EDGE_FRAMES = 8  # the release's left padding, and the least it adds on the right


def edge_padded_clips(clips, lengths):
  """The release's collate padding of each clip: EDGE_FRAMES copies of its first frame, its n
  frames, then its last frame repeated to ceil(n / 4) * 4 + 2 * EDGE_FRAMES frames in all (an
  empty row stays empty).

  clips [B, T, ...] (clip b's frames first), lengths [B] -> ([B, T'', ...], lengths [B]),
  T'' = ceil(T / 4) * 4 + 2 * EDGE_FRAMES.
  """
  padded_frames = -(-clips.shape[1] // 4) * 4 + 2 * EDGE_FRAMES
  source = jnp.clip(jnp.arange(padded_frames)[None, :] - EDGE_FRAMES, 0,
                    jnp.maximum(lengths[:, None] - 1, 0))  # [B, T'']
  index = source.reshape(source.shape + (1,) * (clips.ndim - 2))
  padded = jnp.take_along_axis(clips, index, axis=1)
  return padded, jnp.where(lengths > 0, (lengths + 3) // 4 * 4 + 2 * EDGE_FRAMES, 0)


def temporal_length(frames, kernel: int, blocks: int):
  """Valid positions after `blocks` of [unpadded conv of `kernel` -> max pool 2] (of ints or
  arrays)."""
  for _ in range(blocks):
    frames = jnp.maximum(frames - (kernel - 1), 0) // 2
  return frames


class TemporalConv(nnx.Module):
  """[B, T, C] per-frame features -> [B, T', d]: the release's TemporalConv (conv_type 2)."""

  def __init__(self, in_features: int, out_features: int, cfg: VisualConfig, *, rngs: nnx.Rngs):
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    self.kernel = cfg.conv_kernel
    self.convs = nnx.List([
        temporal_conv(in_features if i == 0 else out_features, out_features, cfg.conv_kernel,
                      padding='VALID', **kw)
        for i in range(cfg.conv_blocks)])
    self.norms = nnx.List([BatchNorm(out_features, momentum=0.9, **kw)
                           for _ in range(cfg.conv_blocks)])

  def __call__(self, x, lengths, train: bool):
    """x [B, T, C] (padding zeroed), lengths [B] -> ([B, T', d], valid lengths [B])."""
    for conv, norm in zip(self.convs, self.norms):
      x = conv(x)
      lengths = jnp.maximum(lengths - (self.kernel - 1), 0)
      valid = (jnp.arange(x.shape[1])[None, :] < lengths[:, None])[..., None]  # [B, T, 1]
      x = jnp.maximum(norm(x, valid.astype(x.dtype), train=train), 0.0) * valid
      x = max_pool(x, (2,), (2,), (0,))  # floor(T / 2) positions, as MaxPool1d(2)
      lengths = lengths // 2
    return x, lengths


class VisualEncoder(nnx.Module):
  """Frames -> the video embedding [B, d] (the CLS output through a bias-free Linear)."""

  def __init__(self, cfg: VisualConfig, encoder: MBartConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    self.backbone = backbones.build(cfg.backbone, cfg.backbone_options, rngs)
    width = backbones.output_dim(cfg.backbone, cfg.backbone_options)
    self.temporal_conv = TemporalConv(width, encoder.d_model, cfg, rngs=rngs)
    self.cls_token = nnx.Param(jax.random.normal(rngs.params(), (encoder.d_model,),
                                                 jnp.dtype(cfg.param_dtype)))
    self.encoder = MBart(dataclasses.replace(encoder, decoder_layers=0), rngs=rngs)
    self.head = dense(encoder.d_model, encoder.d_model, ('embed', 'mlp'), use_bias=False, **kw,
                      kernel_init=nnx.initializers.lecun_normal())

  def __call__(self, frames, frame_mask, rngs=None):
    """frames [B, T, H, W, 3] normalised (or features [B, T, C]), frame_mask [B, T] -> [B, d]."""
    train = rngs is not None
    if self.config.pad_clip_edges:
      frames, lengths = edge_padded_clips(frames, jnp.sum(frame_mask, axis=1))
      frame_mask = (jnp.arange(frames.shape[1])[None, :] < lengths[:, None]).astype(
          frame_mask.dtype)
    if self.backbone is None:  # given per-frame features [B, T, C]
      features, mask = frames.astype(self.config.dtype), frame_mask
    else:
      features, mask = self.backbone(frames.astype(self.config.dtype), frame_mask, train=train)
    features = features * mask[..., None].astype(features.dtype)
    x, lengths = self.temporal_conv(features, jnp.sum(mask, axis=1), train)
    if x.shape[1] == 0:
      raise ValueError(f'{frames.shape[1]} frames leave no position after the temporal '
                       f'convolutions (kernel {self.config.conv_kernel}, '
                       f'{self.config.conv_blocks} blocks): raise data.frame_buckets.')
    cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1)  # [B, 1 + T', d]
    attention_mask = (jnp.arange(x.shape[1])[None, :] <= lengths[:, None]).astype(jnp.int32)
    states = self.encoder.encode(None, attention_mask, inputs_embeds=x, rngs=rngs)
    return self.head(states[:, 0])


class VisualLanguagePretraining(nnx.Module):
  """The visual encoder, the text encoder, the masked-text decoder and the logit scale."""

  def __init__(self, visual: VisualConfig, visual_encoder: MBartConfig, text: MBartConfig,
               decoder: MBartConfig, *, rngs: nnx.Rngs):
    widths = {visual_encoder.d_model, text.d_model, decoder.d_model}
    if len(widths) != 1:
      raise ValueError(f'The visual encoder ({visual_encoder.d_model}), text encoder '
                       f'({text.d_model}) and text decoder ({decoder.d_model}) must share one '
                       'width: CLIP compares the first two, the decoder attends to the second.')
    self.visual = VisualEncoder(visual, visual_encoder, rngs=rngs)
    self.text = MBart(dataclasses.replace(text, decoder_layers=0), rngs=rngs)
    self.decoder = MBart(dataclasses.replace(decoder, encoder_layers=0), rngs=rngs)
    self.logit_scale = nnx.Param(jnp.asarray(INITIAL_LOGIT_SCALE, visual.param_dtype))

  def encode_text(self, text_ids, text_mask, rngs=None):
    """(sentence embedding [B, d], all states [B, L, d]) of `X </s> lang` [B, L] (mask [B, L])."""
    states = self.text.encode(text_ids, text_mask, rngs=rngs)
    last = jnp.maximum(jnp.sum(text_mask, axis=1) - 1, 0)  # the language code
    return jnp.take_along_axis(states, last[:, None, None], axis=1)[:, 0], states

  def masked_text_logits(self, masked_ids, masked_mask, decoder_input_ids, rngs=None):
    """Logits [B, L', vocab] of the decoder writing the sentence (teacher-forced
    `decoder_input_ids`) from the text encoder's states of the masked text, which get no
    gradient from it (as the release's torch.no_grad)."""
    states = jax.lax.stop_gradient(self.text.encode(masked_ids, masked_mask, rngs=rngs))
    logits, _ = self.decoder.decode(decoder_input_ids, masked_mask,
                                    self.decoder.cross_attention_kv(states), rngs=rngs)
    return logits


def mask_last_words(text_ids, text_mask, key, *, rate: float, mask_id: int):
  """`X </s> lang` [B, L] with the last ceil(n * u) of each row's n tokens of X replaced by
  mask_id, u ~ U(0, rate) per row (the release's 'omit_last' noise, over tokens)."""
  n = jnp.maximum(jnp.sum(text_mask, axis=1) - 2, 0)  # tokens before `</s> lang`
  u = jax.random.uniform(key, n.shape, maxval=rate)
  masked = jnp.ceil(n * u).astype(n.dtype)
  positions = jnp.arange(text_ids.shape[1])[None, :]
  hide = (positions >= (n - masked)[:, None]) & (positions < n[:, None])
  return jnp.where(hide, mask_id, text_ids)
