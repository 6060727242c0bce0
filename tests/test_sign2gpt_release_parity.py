"""Sign2GPT against its authors' released code, from the release's own state dicts
(sltjax.convert.release): stage 1 (tests/sign2gpt_release_golden.py: the sign encoder, the
prototype head and the pseudo-gloss loss) and stage 2 (tests/sign2gpt_stage2_release_golden.py:
the whole translator from frames: DINOv2 with its LoRAs, projection and BatchNorm, the sign
encoder, the visual projection and the frozen XGLM with its LoRAs and zero-gated cross-attention,
and the label-smoothed translation loss), their outputs and every gradient.

Deliberate difference: the release's temporal pooling averages padded frames' features into the
last valid window; sltjax zeroes padded frames first, so a video's features do not depend on its
batch's padding. The encoder goldens therefore use full-length rows; the head and the XGLM, which
mask their inputs themselves, are checked on rows of different lengths.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.sign2gpt import FROZEN
from sltjax.convert.release import (SIGN2GPT_LM, sign2gpt_layout, sign2gpt_release_name,
                                    sign2gpt_release_tensors, sign2gpt_state)
from sltjax.losses import mean_cross_entropy
from sltjax.models.backbones.registry import BackboneOptions
from sltjax.models.systems.sign2gpt import (AdaptorConfig, FrameEncoderConfig, PrototypeHead,
                                            SignEncoder, SignEncoderConfig, Sign2GPTTranslator,
                                            pseudo_gloss_loss)
from sltjax.models.xglm import XGLMConfig
from tests import sign2gpt_stage2_release_golden as stage2_golden
from tests.release_golden_files import assert_close
from tests.sign2gpt_release_golden import CLASSES, DIM, HEADS, HIDDEN, load_golden

GOLDEN = load_golden()
GOLDEN2 = stage2_golden.load_golden()


class Stage1(nnx.Module):
  """The part of sltjax's Sign2GPTPretraining the golden covers, under its attribute names."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.sign_encoder = SignEncoder(SignEncoderConfig(dim=DIM, heads=HEADS), rngs=rngs)
    self.head = PrototypeHead(DIM, np.ones((CLASSES, HIDDEN), np.float32), rngs=rngs)


def release_stage1() -> Stage1:
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Stage1(rngs=nnx.Rngs(0))))
  return nnx.merge(graphdef, sign2gpt_state(GOLDEN['state'], abstract, jnp.float32,
                                            stage='pseudo_gloss'))


def test_encoder_head_loss_and_every_gradient_match_the_release():
  model = release_stage1()
  features = jnp.asarray(GOLDEN['features'])

  def loss(m):
    x, mask = m.sign_encoder(features, jnp.ones(features.shape[:2]))
    scores = m.head(x, mask)['scores']
    return 10.0 * pseudo_gloss_loss(scores, GOLDEN['targets']), (x, mask, scores)
  (value, (x, mask, scores)), grads = nnx.value_and_grad(loss, has_aux=True)(model)
  assert_close(x, GOLDEN['hidden'])
  np.testing.assert_array_equal(np.asarray(mask) > 0, GOLDEN['hidden_mask'])
  assert_close(scores, GOLDEN['scores'])
  assert_close(value, GOLDEN['loss'])
  compared = set()
  for path, grad in nnx.to_flat_state(grads):
    if path == ('head', 'prototypes'):
      continue  # fixed word vectors, as the release's trainable_emb=False
    name = sign2gpt_release_name(path)
    assert_close(grad.get_value(), sign2gpt_layout(path, GOLDEN['grad'][name]), rtol=2e-5)
    compared.add(name)
  assert compared == set(GOLDEN['grad'])  # every trained tensor of the release


def test_the_head_masks_time_as_the_release_on_rows_of_different_lengths():
  model = release_stage1()
  mask = jnp.asarray(GOLDEN['head_mask'], jnp.float32)

  def loss(x):
    scores = model.head(x, mask)['scores']
    return 10.0 * pseudo_gloss_loss(scores, GOLDEN['targets']), scores
  (value, scores), grad = jax.value_and_grad(loss, has_aux=True)(
      jnp.asarray(GOLDEN['head_input']))
  assert_close(scores, GOLDEN['head_scores'])
  assert_close(value, GOLDEN['head_loss'])
  assert_close(grad, GOLDEN['head_grad_input'])
  assert np.all(GOLDEN['head_grad_input'][~GOLDEN['head_mask']] == 0)  # padding gets nothing


def test_a_stage1_state_dict_missing_or_extra_tensors_lists_them_all():
  state = dict(GOLDEN['state'])
  del state['post_model.vocab_embedding']
  del state['sign_model.encoder.network_block.network.2.1.norm2.bias']
  state['sign_model.encoder.network_block.network.2.1.norm3.bias'] = np.zeros(DIM, np.float32)
  abstract = nnx.state(nnx.eval_shape(lambda: Stage1(rngs=nnx.Rngs(0))))
  with pytest.raises(ValueError) as error:
    sign2gpt_state(state, abstract, jnp.float32, stage='pseudo_gloss')
  message = str(error.value)
  assert "Sign2GPT's release" in message
  assert 'missing post_model.vocab_embedding' in message
  assert 'missing sign_model.encoder.network_block.network.2.1.norm2.bias' in message
  assert 'unexpected sign_model.encoder.network_block.network.2.1.norm3.bias' in message


def release_translator() -> Sign2GPTTranslator:
  """sltjax's stage-2 model at the golden's sizes, filled from the release's state dict."""
  lm, dino = stage2_golden.LM, stage2_golden.DINO
  architecture = BackboneOptions(architecture=(*dino.items(),
                                               ('image_size', stage2_golden.IMAGE)))
  frames = FrameEncoderConfig(backbone_options=architecture, lora_last_layers=1, dim=DIM)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Sign2GPTTranslator(
      frames, SignEncoderConfig(dim=DIM, heads=HEADS), XGLMConfig(**lm), AdaptorConfig(),
      rngs=nnx.Rngs(0))))
  return nnx.merge(graphdef, sign2gpt_state(GOLDEN2['state'], abstract, jnp.float32,
                                            stage='translation'))


def text_batch():
  """sltjax's Sign2GPT batch of the golden's `</s> X </s>` rows: decoder inputs (the row), their
  attention mask, labels (the row shifted by one) and the label weights."""
  text = jnp.asarray(GOLDEN2['text'])
  valid = (text != stage2_golden.LM['pad_token_id']).astype(jnp.int32)
  labels = jnp.concatenate([text[:, 1:], jnp.zeros_like(text[:, :1])], axis=1)
  weights = jnp.concatenate([valid[:, 1:], jnp.zeros_like(valid[:, :1])], axis=1)
  return text, valid, labels, weights.astype(jnp.float32)


def assert_trained_gradients_match(grads, expected: dict, prefix: tuple = ()):
  """Every gradient the release computes (of its trainable tensors) equals sltjax's, and sltjax's
  translation config freezes exactly the tensors the release freezes. `prefix`: the path of
  `grads` in the translator."""
  frozen = re.compile(FROZEN['translation'])
  expected = sign2gpt_release_tensors(expected)
  compared = set()
  for path, grad in nnx.to_flat_state(grads):
    path = prefix + path
    name = sign2gpt_release_name(path, 'translation')
    trained = not frozen.search('/'.join(map(str, path)))
    assert trained == (name in expected), (path, name)
    if trained:
      assert_close(grad.get_value(), sign2gpt_layout(path, expected[name]), rtol=2e-5)
      compared.add(name)
  assert compared == set(expected)


def test_stage2_logits_loss_and_every_trained_gradient_match_the_release():
  model = release_translator()
  frames = jnp.asarray(GOLDEN2['frames'])
  text, valid, labels, weights = text_batch()

  def loss(m):
    logits = m(frames, jnp.ones(frames.shape[:2]), text[:, :-1], valid[:, :-1])
    return mean_cross_entropy(logits, labels[:, :-1], weights[:, :-1], 0.1)[0], logits
  (value, logits), grads = nnx.value_and_grad(loss, has_aux=True)(model)
  target = np.asarray(weights[:, :-1]) > 0  # the release's logits at padding are not compared
  assert_close(np.asarray(logits)[target], GOLDEN2['logits'][target])
  assert_close(value, GOLDEN2['loss'])
  gates = [layer.visual_adaptor.gate[...] for layer in model.lm.layers]
  np.testing.assert_array_equal(np.stack(gates), GOLDEN2['gates'].reshape(len(gates), -1))
  assert_trained_gradients_match(grads, GOLDEN2['grad'])


def test_the_adapted_xglm_masks_visual_tokens_and_text_as_the_release():
  model = release_translator()
  text, valid, labels, weights = text_batch()
  visual_mask = jnp.asarray(GOLDEN2['visual_mask'], jnp.int32)

  def loss(lm, visual):
    logits = lm(text[:, :-1], valid[:, :-1], visual=(visual, visual_mask))
    return mean_cross_entropy(logits, labels[:, :-1], weights[:, :-1], 0.1)[0], logits
  (value, logits), (grads, grad_visual) = nnx.value_and_grad(
      loss, argnums=(0, 1), has_aux=True)(model.lm, jnp.asarray(GOLDEN2['visual']))
  target = np.asarray(weights[:, :-1]) > 0
  assert_close(np.asarray(logits)[target], GOLDEN2['lm_logits'][target])
  assert_close(value, GOLDEN2['lm_loss'])
  assert_close(grad_visual, GOLDEN2['lm_grad_visual'], rtol=2e-5)
  assert np.all(GOLDEN2['lm_grad_visual'][~GOLDEN2['visual_mask']] == 0)  # padding: nothing
  expected = {SIGN2GPT_LM + k: v for k, v in GOLDEN2['lm_grad'].items()}
  assert_trained_gradients_match(grads, expected, prefix=('lm',))
