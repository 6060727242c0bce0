"""Training losses: label-smoothed cross entropy (and its per-token or per-sentence mean), CTC,
distillation between decoder passes, and the contrastive losses (CLCL's fine-grained one, CLIP's
global one)."""
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


def mean_cross_entropy(logits, labels, weights, label_smoothing: float, *,
                       per: str = 'token'):
  """(mean label-smoothed cross entropy, weighted tokens) of `label_smoothed_cross_entropy`'s
  sum: per weighted token (per='token', the default of every system's LM loss) or per sentence
  (per='sentence': the sum over a sentence's tokens averaged over the batch's rows, as the SLT
  releases that sum before dividing by the batch). Shapes as label_smoothed_cross_entropy."""
  total, tokens = label_smoothed_cross_entropy(logits, labels, weights, label_smoothing)
  if per == 'token':
    return total / jnp.maximum(tokens, 1.0), tokens
  if per == 'sentence':
    return total / labels.shape[0], tokens
  raise ValueError(f'per={per!r}: expected "token" or "sentence".')


def token_distillation_kl(student_logits, teacher_logits, weights):
  """KL(teacher || student) of the token distributions, averaged over weighted tokens; the
  teacher gets no gradient. logits: [batch, len, vocab] float32; weights: [batch, len]."""
  teacher = jax.lax.stop_gradient(jax.nn.log_softmax(teacher_logits, axis=-1))
  student = jax.nn.log_softmax(student_logits, axis=-1)
  per_token = jnp.sum(jnp.exp(teacher) * (teacher - student), axis=-1)  # [batch, len]
  return jnp.sum(per_token * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def prototype_mse(student, teacher, mask):
  """Mean squared distance between two encoder outputs [batch, len, dim] over the valid
  positions (mask [batch, len]) and the features; the teacher gets no gradient."""
  teacher = jax.lax.stop_gradient(teacher)
  per_position = jnp.mean(jnp.square(student.astype(jnp.float32) - teacher.astype(jnp.float32)),
                          axis=-1)  # [batch, len]
  mask = mask.astype(jnp.float32)
  return jnp.sum(per_position * mask) / jnp.maximum(jnp.sum(mask), 1.0)


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


def frame_gloss_cross_entropy(gloss_logits, gloss_mask, frame_gloss_ids):
  """Cross entropy of each output position's gloss logits against the gloss its frames show
  (blank between signs), summed over a video's positions and averaged over the batch as
  sign_translation_loss takes CTC (so that each position weighs as much in the two): per-frame
  targets where the data knows them (a rendered dataset).

  gloss_logits: [batch, positions, classes] float32; gloss_mask: [batch, positions];
  frame_gloss_ids: [batch, frames], frames a multiple of positions (a backbone that pools time by
  frames / positions): each position takes the label of the middle frame of its window.
  """
  stride = frame_gloss_ids.shape[1] // gloss_logits.shape[1]
  targets = frame_gloss_ids[:, stride // 2::stride][:, :gloss_logits.shape[1]]  # [B, T']
  per_position = optax.softmax_cross_entropy_with_integer_labels(gloss_logits, targets)
  return jnp.sum(per_position * gloss_mask.astype(jnp.float32)) / gloss_logits.shape[0]


def sign_translation_loss(out, batch, *, ctc_weight: float, translation_weight: float,
                          translation=None, frame_gloss_weight: float = 0.0):
  """MMTLB's objective: ctc_weight * CTC / batch size, plus translation_weight * the translation
  network's loss when the model translates, plus frame_gloss_weight * the per-frame gloss cross
  entropy (frame_gloss_cross_entropy; not MMTLB's: for data that labels its frames).

  out: the model's {'gloss_logits' [B, T', K], 'gloss_mask' [B, T']}; batch: {'gloss_ids',
  'gloss_mask' [B, G], and 'frame_gloss_ids' [B, T] with frame_gloss_weight}; translation:
  (loss, metrics) of MBart.translation_loss, or None.
  Returns (loss, {'ctc'[, 'frame_gloss'], plus the translation's metrics}).
  """
  ctc = ctc_loss_sum(out['gloss_logits'], out['gloss_mask'], batch['gloss_ids'],
                     batch['gloss_mask']) / out['gloss_logits'].shape[0]
  metrics = {'ctc': ctc}
  loss = ctc_weight * ctc
  if frame_gloss_weight:
    metrics['frame_gloss'] = frame_gloss_cross_entropy(out['gloss_logits'], out['gloss_mask'],
                                                       batch['frame_gloss_ids'])
    loss = loss + frame_gloss_weight * metrics['frame_gloss']
  if translation is not None:
    loss = loss + translation_weight * translation[0]
    metrics.update(translation[1])
  return loss, metrics


# ------------------------------------------------------------------ contrastive (C2RL / CiCo)
_MASKED = -1e30  # the logit of a masked entry
def l2_normalize(x):
  """Rows of x [..., dim] scaled to unit norm (zero rows stay zero), in float32 or wider."""
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


def _clcl_block(video, video_mask, text, text_mask, temperature: float, mask_padding: bool):
  """(v2t, t2v) [num_videos, block] for one block of texts; see clcl_similarity."""
  s = jnp.einsum('vtd,wld->vwtl', video, text)  # [Bv, bt, T, L]
  vm = video_mask[:, None, :, None] > 0  # [Bv, 1, T, 1]
  tm = text_mask[None, :, None, :] > 0  # [1, bt, 1, L]
  # V2T: each frame attends over the tokens; T2V: each token attends over the frames. Masked
  # entries get a large negative logit, not where=: a row with nothing valid (a padded text)
  # then stays finite, and so do its gradients.
  logits = s / temperature
  over_tokens = jax.nn.softmax(jnp.where(tm, logits, _MASKED) if mask_padding else logits, axis=3)
  over_frames = jax.nn.softmax(jnp.where(vm, logits, _MASKED) if mask_padding else logits, axis=2)
  frame_scores = jnp.sum(s * over_tokens, axis=3)  # [Bv, bt, T]
  token_scores = jnp.sum(s * over_frames, axis=2)  # [Bv, bt, L]
  frames = jnp.maximum(jnp.sum(video_mask, axis=1), 1)[:, None]  # [Bv, 1]
  tokens = jnp.maximum(jnp.sum(text_mask, axis=1), 1)[None, :]  # [1, bt]
  v2t = jnp.sum(frame_scores * video_mask[:, None, :], axis=2) / frames
  t2v = jnp.sum(token_scores * text_mask[None, :, :], axis=2) / tokens
  return v2t, t2v


def clcl_similarity(video, video_mask, text, text_mask, *, temperature: float = 0.07,
                    mask_padding: bool = True, text_block: int = 0):
  """CiCo's cross-lingual contrastive similarities of every (video, text) pair.

  video [num_videos, frames, dim], text [num_texts, tokens, dim], masks 1 where valid; features
  are L2-normalised here. Returns (v2t, t2v), both [num_videos, num_texts], before the logit
  scale: v2t[i, j] = mean over video i's valid frames of sum_k s * softmax_k(s / temperature)
  over text j's tokens; t2v the same with frames and tokens swapped. mask_padding=False is CiCo:
  padded frames and tokens, with the features the encoders gave them, stay in the softmax
  denominators (padding only out of the outer mean).

  The [num_videos, num_texts, frames, tokens] similarity grows with the square of the batch:
  text_block > 0 computes it for that many texts at a time, recomputed in the backward pass
  instead of stored, so memory grows as num_videos * text_block. Under jit, a video batch
  sharded over devices splits it further.
  """
  video_mask, text_mask = video_mask.astype(jnp.float32), text_mask.astype(jnp.float32)
  if mask_padding:  # else CiCo: padded positions keep whatever features the encoders gave them
    video, text = video * video_mask[..., None], text * text_mask[..., None]
  video, text = l2_normalize(video), l2_normalize(text)
  block = jax.checkpoint(lambda t, tm: _clcl_block(video, video_mask, t, tm, temperature,
                                                   mask_padding))
  num_texts = text.shape[0]
  if not text_block or text_block >= num_texts:
    return block(text, text_mask)
  pad = -num_texts % text_block
  text = jnp.pad(text, ((0, pad), (0, 0), (0, 0)))
  text_mask = jnp.pad(text_mask, ((0, pad), (0, 0)))
  blocks = (text.reshape(-1, text_block, *text.shape[1:]),
            text_mask.reshape(-1, text_block, text_mask.shape[1]))
  v2t, t2v = jax.lax.map(lambda b: block(*b), blocks)  # [blocks, Bv, text_block]
  def join(x):
    return jnp.moveaxis(x, 0, 1).reshape(x.shape[1], -1)[:, :num_texts]
  return join(v2t), join(t2v)


def clip_kl_loss(scores, positives, logit_scale):
  """GFSLT-VLP's CLIP loss (its release's utils.KLLoss in both directions, halved), on cosine
  similarities scores [num_videos, num_texts]: per row, KL(softmax(10 x positives) ||
  softmax(exp(logit_scale) x scores)), averaged over the rows. The target's factor 10 leaves
  the negatives (B - 1) / (e^10 + B - 1) of a row's mass (1.4e-4 for the release's 4 per GPU).
  positives [num_videos, num_texts] is 1 where a video shows the text's sentence."""
  scale = jnp.exp(logit_scale)
  positives = positives.astype(jnp.float32)

  def kl(logits, targets):  # rows rank their columns
    targets = jax.nn.softmax(10.0 * targets, axis=1)
    return jnp.mean(optax.losses.kl_divergence(jax.nn.log_softmax(logits, axis=1), targets))

  return (kl(scale * scores, positives) + kl(scale * scores.T, positives.T)) / 2


def contrastive_loss(v2t, t2v, positives, logit_scale, *, label_smoothing: float = 0.0,
                     cico_mix: bool = False):
  """Symmetric InfoNCE over the batch on CLCL similarities [num_videos, num_texts].

  positives [num_videos, num_texts] is 1 where a video shows the text's sentence (several per
  row when clips repeat a sentence); each direction's target spreads its mass evenly over the
  positives, then label smoothing over all candidates. logit_scale: the log of the learned
  scale. Default (C2RL): [CE(V2T) + CE(T2V^T)] / 2, videos ranking texts and texts ranking
  videos; cico_mix: CiCo's 1/2 [(CE(V2T) + CE(V2T^T)) / 2 + (CE(T2V^T) + CE(T2V)) / 2].
  """
  scale = jnp.exp(logit_scale)
  positives = positives.astype(jnp.float32)

  def ce(logits, targets):  # rows rank their columns
    targets = targets / jnp.maximum(jnp.sum(targets, axis=1, keepdims=True), 1.0)
    targets = optax.smooth_labels(targets, label_smoothing)
    return jnp.mean(optax.softmax_cross_entropy(logits, targets))

  video_to_text = ce(scale * v2t, positives)
  text_to_video = ce(scale * t2v.T, positives.T)
  if not cico_mix:
    return (video_to_text + text_to_video) / 2
  return ((video_to_text + ce(scale * v2t.T, positives.T)) / 2
          + (text_to_video + ce(scale * t2v, positives)) / 2) / 2
