"""Training losses (the SLT systems add CTC, InfoNCE and distillation here)."""
import jax
import jax.numpy as jnp
import optax


def label_smoothed_cross_entropy(logits, labels, weights, label_smoothing: float):
  """Sum of smoothed token cross entropies and the number of weighted tokens.

  logits: [batch, len, vocab] float32; labels: [batch, len] int; weights: [batch, len] (0 for
  padding and ignored labels). Smoothing spreads `label_smoothing` uniformly over the vocabulary
  (fairseq/HF convention). Returns (loss_sum, token_count) so callers can normalise over the
  global batch.
  """
  vocab = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, vocab), label_smoothing)
  per_token = optax.softmax_cross_entropy(logits, targets)  # [batch, len]
  return jnp.sum(per_token * weights), jnp.sum(weights)

