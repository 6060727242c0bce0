"""Training losses: label-smoothed cross entropy and CTC (C2RL adds InfoNCE and IP-SLT distillation)."""
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


def ctc_loss_sum(gloss_logits, frame_mask, gloss_ids, gloss_mask):
  """Sum over the batch of CTC negative log-likelihoods (blank 0), as MMTLB's loss before it
  divides by the batch size.

  gloss_logits: [batch, frames, classes] float32; frame_mask: [batch, frames] (1 = valid);
  gloss_ids, gloss_mask: [batch, glosses]. Rows without glosses (filler rows) contribute 0.
  """
  per_row = optax.ctc_loss(gloss_logits, 1.0 - frame_mask.astype(jnp.float32), gloss_ids,
                           1.0 - gloss_mask.astype(jnp.float32), blank_id=0)
  has_labels = jnp.sum(gloss_mask, axis=1) > 0
  return jnp.sum(jnp.where(has_labels, per_row, 0.0))


def sign_translation_loss(out, batch, *, ctc_weight: float, translation_weight: float,
                          label_smoothing: float):
  """MMTLB's objective: ctc_weight * CTC / batch size, plus translation_weight * the smoothed
  cross entropy per target token when the model translated (out has 'logits').

  out: the model's {'gloss_logits' [B, T', K], 'gloss_mask' [B, T'][, 'logits' [B, L, V]]};
  batch: {'gloss_ids', 'gloss_mask' [B, G][, 'labels', 'label_weights' [B, L]]}.
  Returns (loss, {'ctc'[, 'ce', 'tokens']}).
  """
  ctc = ctc_loss_sum(out['gloss_logits'], out['gloss_mask'], batch['gloss_ids'],
                     batch['gloss_mask']) / out['gloss_logits'].shape[0]
  metrics = {'ctc': ctc}
  loss = ctc_weight * ctc
  if 'logits' in out:
    ce_sum, tokens = label_smoothed_cross_entropy(out['logits'], batch['labels'],
                                                  batch['label_weights'], label_smoothing)
    ce = ce_sum / jnp.maximum(tokens, 1.0)
    loss = loss + translation_weight * ce
    metrics.update(ce=ce, tokens=tokens)
  return loss, metrics
