"""Sign2GPT's stage 1 against its authors' released code (tests/sign2gpt_release_golden.py): the
sign encoder, the prototype head and the pseudo-gloss loss, their outputs and every gradient,
from the release's own state dict (sltjax.convert.release).

Deliberate difference: the release's temporal pooling averages padded frames' features into the
last valid window; sltjax zeroes padded frames first, so a video's features do not depend on its
batch's padding. The encoder golden therefore uses full-length rows; the head, which masks time
itself, is checked on rows of different lengths.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sltjax.convert.release import sign2gpt_release_name, sign2gpt_stage1_state
from sltjax.convert.state_dict import torch_layout
from sltjax.models.systems.sign2gpt import (PrototypeHead, SignEncoder, SignEncoderConfig,
                                            pseudo_gloss_loss)
from tests.sign2gpt_release_golden import CLASSES, DIM, HEADS, HIDDEN, load_golden

GOLDEN = load_golden()


class Stage1(nnx.Module):
  """The part of sltjax's Sign2GPTPretraining the golden covers, under its attribute names."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.sign_encoder = SignEncoder(SignEncoderConfig(dim=DIM, heads=HEADS), rngs=rngs)
    self.head = PrototypeHead(DIM, np.ones((CLASSES, HIDDEN), np.float32), rngs=rngs)


def release_stage1() -> Stage1:
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Stage1(rngs=nnx.Rngs(0))))
  return nnx.merge(graphdef, sign2gpt_stage1_state(GOLDEN['state'], abstract, jnp.float32))


def assert_close(actual, expected, rtol=1e-5):
  expected = np.asarray(expected, np.float64)
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=0,
                             atol=rtol * max(np.abs(expected).max(), 1e-12))


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
    expected = GOLDEN['grad'][name]
    expected = expected.reshape(()) if path[-1].endswith('temperature') else torch_layout(
        path, expected)
    assert_close(grad.get_value(), expected, rtol=2e-5)
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
    sign2gpt_stage1_state(state, abstract, jnp.float32)
  message = str(error.value)
  assert "Sign2GPT's release" in message
  assert 'missing post_model.vocab_embedding' in message
  assert 'missing sign_model.encoder.network_block.network.2.1.norm2.bias' in message
  assert 'unexpected sign_model.encoder.network_block.network.2.1.norm3.bias' in message
