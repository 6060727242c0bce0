"""GFSLT-VLP's pretraining against its authors' released PyTorch modules (commit in
tests/gfslt_release_golden.py): the release's SLRCLIP, Text_Decoder, KLLoss and collate_fn ran
on the same weights (drawn by release name) and inputs; sltjax's VisualLanguagePretraining is
filled from those names and must give the same embeddings, CLIP logits, losses, decoder logits
and the gradient of every parameter.

Deliberate differences, checked against the corrected form rather than the release's:
- Padding inside the temporal convolutions: the release pads a batch's per-frame features with
  1.0 (its PAD_IDX) and its TemporalConv's BatchNorm takes training statistics over them, so a
  clip's embedding depends on the longer clips beside it; sltjax leaves padded positions out.
  The training golden uses clips of one length (nothing to pad); evaluation (running
  statistics) uses different lengths.
- The text decoder's output projection: the release builds it from a second from_pretrained
  call, so it is a separate copy of the input embedding that trains apart from it; sltjax ties
  the two (mBART's own design). The golden starts them equal; sltjax's embedding gradient is the
  sum of the release's two.
- Masking is over tokens (the release: whitespace words, re-tokenised); the golden gives both
  the same masked ids.
- The encoder-only and decoder-only networks of sltjax carry the other side's position table
  and norms (unused, zero gradient); the release's networks have no such tensors.
"""
import dataclasses
import functools

import jax.numpy as jnp
import numpy as np
from flax import nnx

from sltjax.convert.hf import hf_layout, hf_name
from sltjax.convert.state_dict import TORCH_LEAF_NAMES, torch_layout
from sltjax.experiments.gfslt import pretraining_losses
from sltjax.models.mbart import MBartConfig
from sltjax.models.systems.gfslt import (VisualConfig, VisualLanguagePretraining,
                                         edge_padded_clips, temporal_length)
from tests import release_golden_files
from tests.gfslt_release_golden import (FEATURES, LABEL_SMOOTHING, MBART, load_golden,
                                        release_weights)

GOLDEN = load_golden()
WEIGHTS = release_weights(GOLDEN['shapes'])
DECODER_EMBEDDING, DECODER_PROJECTION = 'text_decoder.embed_tokens.weight', 'lm_head.weight'
# The release's module of each sltjax mBART-shaped network and the side of it that exists there.
_NETWORKS = {'text': ('model_txt.model_txt.', 'encoder'),
             'visual/encoder': ('model_images.trans_encoder.', 'encoder'),
             'decoder': ('text_decoder.', 'decoder')}


def release_name(path: tuple) -> str | None:
  """The release's tensor name of an sltjax parameter path; None where the release has none
  (see the module docstring)."""
  text = '/'.join(map(str, path))
  if path == ('logit_scale',):
    return 'logit_scale'
  if path == ('visual', 'cls_token'):
    return 'model_images.cls_token'
  if path[:2] == ('visual', 'head'):
    return 'model_images.lm_head.weight'
  if path[:2] == ('visual', 'temporal_conv'):  # Sequential: [conv, BN, ReLU, pool] x 2
    kind, block, leaf = path[2:]
    index = 4 * block + (0 if kind == 'convs' else 1)
    return f'model_images.model.conv_1d.temporal_conv.{index}.{TORCH_LEAF_NAMES[leaf]}'
  for network, (prefix, side) in _NETWORKS.items():
    depth = network.count('/') + 1
    if text.startswith(network + '/'):
      name = hf_name(path[depth:])
      if name == 'model.shared.weight':
        return None if network == 'visual/encoder' else prefix + 'embed_tokens.weight'
      if name == 'final_logits_bias':
        return 'final_logits_bias' if network == 'decoder' else None
      return prefix + name.removeprefix(f'model.{side}.') if name.startswith(
          f'model.{side}.') else None
  raise ValueError(f'no release counterpart rule for {text}')


def release_tensor(path: tuple, name: str, tensors: dict) -> np.ndarray:
  """tensors[name] in sltjax's layout for `path`."""
  value = np.asarray(tensors[name])
  if path == ('visual', 'cls_token'):
    return value.reshape(-1)
  return hf_layout(path[-1:], value) if path[-1] == 'final_logits_bias' else torch_layout(
      path, value)


def release_model() -> tuple[VisualLanguagePretraining, list[str]]:
  """sltjax's model filled from the release's weights; the paths the release has no tensor for
  (they keep their own initial values)."""
  mbart = MBartConfig.from_dict(MBART)
  visual = VisualConfig(backbone='features', feature_dim=FEATURES)
  model = VisualLanguagePretraining(visual, dataclasses.replace(mbart, vocab_size=1), mbart,
                                    mbart, rngs=nnx.Rngs(0))
  state, own = nnx.state(model), []
  flat = []
  for path, variable in nnx.to_flat_state(state):
    name = release_name(path)
    if name is None:
      own.append('/'.join(map(str, path)))
      flat.append((path, variable))
      continue
    value = release_tensor(path, name, WEIGHTS)
    assert value.shape == variable.shape, (path, value.shape, variable.shape)
    flat.append((path, variable.replace(jnp.asarray(value, jnp.float32))))
  nnx.update(model, nnx.from_flat_state(flat))
  return model, own


assert_close = functools.partial(release_golden_files.assert_close, rtol=2e-5)


def test_every_release_tensor_has_one_place_and_the_rest_is_unused_by_design():
  model, own = release_model()
  used = {release_name(p) for p, _ in nnx.to_flat_state(nnx.state(model))} - {None}
  # The release's visual encoder keeps an unused token table; the decoder's output projection
  # is tied to its embedding in sltjax.
  assert set(GOLDEN['shapes']) - used == {'model_images.trans_encoder.embed_tokens.weight',
                                          DECODER_PROJECTION} | {
      n for n in GOLDEN['shapes'] if n.endswith('num_batches_tracked')}
  assert all(p.startswith(('visual/encoder/decoder_', 'text/decoder_', 'decoder/encoder_'))
             or p in ('visual/encoder/shared/embedding', 'visual/encoder/final_logits_bias',
                      'text/final_logits_bias') for p in own), own


def test_clips_are_padded_as_the_releases_collate_pads_them():
  lengths = jnp.asarray(GOLDEN['eval_lengths'])
  features = jnp.asarray(GOLDEN['eval_features'])
  padded, padded_lengths = edge_padded_clips(features, lengths)
  np.testing.assert_array_equal(padded_lengths, GOLDEN['eval_video_lengths'])
  np.testing.assert_array_equal(temporal_length(padded_lengths, 5, 2),
                                GOLDEN['eval_attention_mask'].sum(axis=1))
  for clip, source, n, total in zip(np.asarray(padded), np.asarray(features),
                                    GOLDEN['eval_lengths'], np.asarray(padded_lengths)):
    np.testing.assert_array_equal(clip[:8], np.repeat(source[:1], 8, axis=0))
    np.testing.assert_array_equal(clip[8:8 + n], source[:n])
    np.testing.assert_array_equal(clip[8 + n:total], np.repeat(source[n - 1:n], total - 8 - n,
                                                               axis=0))
  # A batch's empty rows (padding examples) stay empty; one clip alone is padded the same.
  _, lengths = edge_padded_clips(features[:2], jnp.array([0, 5]))
  np.testing.assert_array_equal(lengths, [0, 24])
  n = int(GOLDEN['eval_lengths'][1])
  alone, alone_length = edge_padded_clips(features[1:2, :n], jnp.array([n]))
  np.testing.assert_array_equal(alone_length, padded_lengths[1:2])
  np.testing.assert_array_equal(alone[0, :int(alone_length[0])],
                                padded[1, :int(alone_length[0])])


def test_evaluation_embeddings_equal_the_releases_on_clips_of_different_lengths():
  model, _ = release_model()
  features = jnp.asarray(GOLDEN['eval_features'])
  mask = (np.arange(features.shape[1])[None] < GOLDEN['eval_lengths'][:, None]).astype(np.int32)
  assert_close(model.visual(features, jnp.asarray(mask)), GOLDEN['eval_video'])
  ids, text_mask = jnp.asarray(GOLDEN['text_ids']), jnp.asarray(GOLDEN['text_mask'])
  assert_close(model.encode_text(ids, text_mask)[0], GOLDEN['eval_text'])


def test_training_losses_logits_and_every_gradient_equal_the_releases():
  model, own = release_model()
  features = jnp.asarray(GOLDEN['train_features'])
  frame_mask = jnp.ones(features.shape[:2], jnp.int32)
  ids, text_mask = jnp.asarray(GOLDEN['text_ids']), jnp.asarray(GOLDEN['text_mask'])
  masked_ids = jnp.asarray(GOLDEN['masked_ids'])
  decoder_input_ids = jnp.asarray(GOLDEN['decoder_input_ids'])

  def total(model):
    clip, decoding, _ = pretraining_losses(
        model, features, frame_mask, ids, text_mask, masked_ids, decoder_input_ids,
        text_mask.astype(jnp.float32), jnp.eye(3), label_smoothing=LABEL_SMOOTHING,
        rngs=nnx.Rngs(0))
    return clip + decoding, (clip, decoding)

  (_, (clip, decoding)), grads = nnx.value_and_grad(total, has_aux=True)(model)
  assert_close(clip, GOLDEN['train_clip_loss'])
  assert_close(decoding, GOLDEN['train_lm_loss'])

  rngs = nnx.Rngs(0)  # training mode (dropout is off): BatchNorm on batch statistics
  video = model.visual(features, frame_mask, rngs)
  sentence = model.encode_text(ids, text_mask)[0]
  video, sentence = (x / jnp.linalg.norm(x, axis=1, keepdims=True) for x in (video, sentence))
  assert_close(jnp.exp(model.logit_scale[...]) * video @ sentence.T,
               GOLDEN['train_logits_per_image'])
  logits = model.masked_text_logits(masked_ids, text_mask, decoder_input_ids)
  real = np.asarray(text_mask, bool)  # the release's pad queries are never scored
  assert_close(np.asarray(logits)[real], GOLDEN['train_lm_logits'][real])

  compared = 0
  for path, gradient in nnx.to_flat_state(grads):
    name = release_name(path)
    if name is None:  # unused by design (see the module docstring)
      np.testing.assert_array_equal(gradient.get_value(), 0.0, err_msg='/'.join(map(str, path)))
      continue
    expected = GOLDEN[f'grad/{name}']
    if name == DECODER_EMBEDDING:  # tied in sltjax: both uses' gradients
      expected = expected + GOLDEN[f'grad/{DECODER_PROJECTION}']
    # Biases before a BatchNorm and attention key biases have zero gradients in exact
    # arithmetic (float32 leaves ~1e-8); every other gradient here is above 1e-3.
    assert_close(gradient.get_value(), release_tensor(path, name, {name: expected}),
                 rtol=5e-5, least_scale=1e-3)
    compared += 1
  assert compared == sum(k.startswith('grad/') for k in GOLDEN) - 1  # lm_head: in the sum
  assert own  # the unused tensors were checked above
