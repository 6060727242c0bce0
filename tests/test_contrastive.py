"""The CLCL similarity and contrastive loss (C2RL's ICL, CiCo's CLCL) against a direct numpy
transcription of REFERENCE.md's formulas, pair by pair, frame by frame, and against CiCo's
released code (tests/cico_release_golden.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sltjax.losses import clcl_similarity, contrastive_loss
from tests.cico_release_golden import load_golden as load_cico_golden
from tests.conftest import REPO, subprocess_xla_flags


def reference_similarity(video, video_mask, text, text_mask, temperature, mask_padding):
  """Loops over pairs: v2t = mean over valid frames of sum_j s_ij softmax_j(s_i / t), t2v the
  same over tokens; masked entries out of the softmax unless CiCo's behaviour is asked."""
  def unit(x):
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(norms > 0, x / np.maximum(norms, 1e-30), 0)

  def softmax(x, keep):
    x = np.where(keep, x, -np.inf) if mask_padding else x
    e = np.exp(x - x.max())
    return e / e.sum()

  v2t = np.zeros((len(video), len(text)))
  t2v = np.zeros_like(v2t)
  for a, (v, vm) in enumerate(zip(video, video_mask)):
    for b, (t, tm) in enumerate(zip(text, text_mask)):
      if mask_padding:
        v, t = v * vm[:, None], t * tm[:, None]
      s = unit(v) @ unit(t).T  # [T, L]
      frames = [s[i] @ softmax(s[i] / temperature, tm > 0) for i in np.flatnonzero(vm)]
      tokens = [s[:, j] @ softmax(s[:, j] / temperature, vm > 0) for j in np.flatnonzero(tm)]
      v2t[a, b], t2v[a, b] = np.mean(frames), np.mean(tokens)
  return v2t, t2v


def random_pairs(seed, videos=5, texts=4, frames=7, tokens=6, dim=16):
  rng = np.random.default_rng(seed)
  video = rng.normal(size=(videos, frames, dim)).astype(np.float32)
  text = rng.normal(size=(texts, tokens, dim)).astype(np.float32)
  video_mask = (np.arange(frames) < rng.integers(2, frames + 1, videos)[:, None]).astype(np.float32)
  text_mask = (np.arange(tokens) < rng.integers(1, tokens + 1, texts)[:, None]).astype(np.float32)
  return video, video_mask, text, text_mask


@pytest.mark.parametrize('mask_padding', [True, False])
@pytest.mark.parametrize('text_block', [0, 3])
def test_similarity_matches_the_formula_pair_by_pair(mask_padding, text_block):
  video, video_mask, text, text_mask = random_pairs(0)
  got = jax.jit(lambda *a: clcl_similarity(*a, temperature=0.07, mask_padding=mask_padding,
                                           text_block=text_block))(
      video, video_mask, text, text_mask)
  want = reference_similarity(video, video_mask, text, text_mask, 0.07, mask_padding)
  for g, w in zip(got, want):
    assert g.shape == (5, 4)
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_cicos_released_loss_similarities_and_gradients_are_reproduced():
  """mask_padding=False and cico_mix are CiCo's own "Filip" similarity and loss (its release's
  flip_similarity_softmax and CrossEn, run by tests/cico_release_golden.py)."""
  golden = load_cico_golden()
  scale = float(golden['logit_scale'])

  def loss(video, text):
    v2t, t2v = clcl_similarity(video, golden['video_mask'], text, golden['text_mask'],
                               mask_padding=False)
    return contrastive_loss(v2t, t2v, np.eye(len(video)), scale, cico_mix=True), (v2t, t2v)
  (value, (v2t, t2v)), (grad_video, grad_text) = jax.value_and_grad(
      loss, argnums=(0, 1), has_aux=True)(jnp.asarray(golden['video']), jnp.asarray(golden['text']))
  for got, expected in ((np.exp(scale) * v2t, golden['i2t']), (np.exp(scale) * t2v, golden['t2i']),
                        (value, golden['loss']), (grad_video, golden['grad_video']),
                        (grad_text, golden['grad_text'])):
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
  # The padded frames' and tokens' features reach the loss through CiCo's softmax denominators.
  assert np.abs(golden['grad_video'][golden['video_mask'] == 0]).max() > 1e-4


def test_cicos_padding_changes_the_scores_and_padded_values_do_not_leak():
  video, video_mask, text, text_mask = random_pairs(1)
  masked = clcl_similarity(video, video_mask, text, text_mask)
  cico = clcl_similarity(video, video_mask, text, text_mask, mask_padding=False)
  assert not np.allclose(masked[0], cico[0])
  noisy_video = np.where(video_mask[..., None] > 0, video, 1e3)
  noisy_text = np.where(text_mask[..., None] > 0, text, -1e3)
  again = clcl_similarity(noisy_video, video_mask, noisy_text, text_mask)
  for a, b in zip(masked, again):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_blocks_give_the_same_loss_and_gradients_with_finite_padding():
  video, video_mask, text, text_mask = random_pairs(2, videos=6, texts=6)
  positives = np.eye(6)
  positives[0, 3] = positives[3, 0] = 1  # clips 0 and 3 show the same sentence

  def loss(video, text, block):
    v2t, t2v = clcl_similarity(video, video_mask, text, text_mask, text_block=block)
    return contrastive_loss(v2t, t2v, positives, jnp.log(1 / 0.07), label_smoothing=0.2)

  loss_and_grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)
  whole = loss_and_grads(video, text, 0)
  blocked = loss_and_grads(video, text, 4)  # 6 texts: 4 + 2 padded
  np.testing.assert_allclose(whole[0], blocked[0], rtol=1e-6)
  for a, b in zip(whole[1], blocked[1]):
    assert np.all(np.isfinite(b))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_loss_is_symmetric_infonce_with_shared_positives_and_smoothing():
  rng = np.random.default_rng(3)
  v2t, t2v = rng.normal(size=(2, 4, 4))
  positives = np.eye(4)
  positives[1, 2] = positives[2, 1] = 1
  scale = np.log(20.0)

  def ce(logits, targets, smoothing):
    targets = targets / targets.sum(1, keepdims=True)
    targets = targets * (1 - smoothing) + smoothing / targets.shape[1]
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -np.mean(np.sum(targets * log_p, axis=1))

  want = (ce(20 * v2t, positives, 0.2) + ce(20 * t2v.T, positives.T, 0.2)) / 2
  np.testing.assert_allclose(contrastive_loss(v2t, t2v, positives, scale, label_smoothing=0.2),
                             want, rtol=1e-5)
  cico = ((ce(20 * v2t, positives, 0) + ce(20 * v2t.T, positives.T, 0)) / 2
          + (ce(20 * t2v.T, positives.T, 0) + ce(20 * t2v, positives, 0)) / 2) / 2
  np.testing.assert_allclose(contrastive_loss(v2t, t2v, positives, scale, cico_mix=True), cico,
                             rtol=1e-5)


def test_gradients_match_finite_differences():
  """float64 central differences of the smoothed loss in a few random directions."""
  with jax.enable_x64(True):
    video, video_mask, text, text_mask = (x.astype(np.float64) for x in random_pairs(4))
    positives = np.eye(5, 4)

    @jax.jit
    def loss(video, text):
      v2t, t2v = clcl_similarity(video, video_mask, text, text_mask, text_block=3)
      return contrastive_loss(v2t, t2v, positives, np.log(1 / 0.07), label_smoothing=0.2)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(video, text)
    rng = np.random.default_rng(5)
    for _ in range(3):
      dv, dt = rng.normal(size=video.shape), rng.normal(size=text.shape)
      eps = 1e-5
      numeric = (loss(video + eps * dv, text + eps * dt)
                 - loss(video - eps * dv, text - eps * dt)) / (2 * eps)
      analytic = np.sum(grads[0] * dv) + np.sum(grads[1] * dt)
      np.testing.assert_allclose(analytic, numeric, rtol=1e-6)


SHARDED_LOSS = '''
import sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from sltjax.losses import clcl_similarity, contrastive_loss
inputs = dict(np.load(sys.argv[1]))
mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
rows = NamedSharding(mesh, P('data'))

def loss(video, text):
  # Each device holds its clips' videos and texts; every text is a negative for every video.
  text = jax.lax.with_sharding_constraint(text, NamedSharding(mesh, P()))
  v2t, t2v = clcl_similarity(video, inputs['video_mask'], text, inputs['text_mask'], text_block=4)
  return contrastive_loss(v2t, t2v, inputs['positives'], np.log(1 / 0.07), label_smoothing=0.2)

step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), in_shardings=(rows, rows))
value, (dv, dt) = step(inputs['video'], inputs['text'])
np.savez(sys.argv[2], loss=value, dv=dv, dt=dt)
'''


def test_eight_devices_give_the_one_device_loss_and_gradients(tmp_path):
  """The global batch's negatives under sharding: 16 clips over 8 fake CPU devices."""
  import os  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  video, video_mask, text, text_mask = random_pairs(6, videos=16, texts=16)
  positives = np.eye(16)
  positives[2, 9] = positives[9, 2] = 1
  np.savez(tmp_path / 'inputs.npz', video=video, video_mask=video_mask, text=text,
           text_mask=text_mask, positives=positives)
  result = subprocess.run(
      [sys.executable, '-c', SHARDED_LOSS, str(tmp_path / 'inputs.npz'), str(tmp_path / 'out.npz')],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu',
           'XLA_FLAGS': subprocess_xla_flags(8)})
  assert result.returncode == 0, result.stderr[-3000:]
  sharded = np.load(tmp_path / 'out.npz')

  def loss(video, text):
    v2t, t2v = clcl_similarity(video, video_mask, text, text_mask)
    return contrastive_loss(v2t, t2v, positives, np.log(1 / 0.07), label_smoothing=0.2)

  value, (dv, dt) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(video, text)
  np.testing.assert_allclose(sharded['loss'], value, rtol=1e-5)
  np.testing.assert_allclose(sharded['dv'], dv, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(sharded['dt'], dt, rtol=1e-4, atol=1e-7)
