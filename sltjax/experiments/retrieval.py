"""What a system that retrieves (text <-> video) shares: the interface `python -m sltjax.retrieve`
uses, and its evaluation by CiCo's fused sign-retrieval metrics.

A RetrievalExperiment defines `encode_video` (features [B, T, d] with their mask; T may be 1 for a
pooled embedding), `encode_text` ([B, L, d]) and `pair_scores` (video-to-text and text-to-video
scores of every pair of two blocks); this class runs them over a split, an index or a list of
sentences, block by block, on every process.
"""
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from sltjax.data import batching
from sltjax.data.sign_labels import target_ids
from sltjax.experiments.base import RETRIEVE, log
from sltjax.experiments.video import VideoExperiment
from sltjax.metrics import RETRIEVAL_METRIC_NAMES, sign_retrieval_metrics

SIMILARITY_BLOCK = 32  # videos and texts scored together when ranking a split or an index


def same_sentence(text_ids):
  """[B, B] 1 where two rows' token ids are equal (clips of one sentence), from [B, L]: the
  positives of a contrastive loss whose batch may hold several clips of one sentence."""
  return jnp.all(text_ids[:, None, :] == text_ids[None, :, :], axis=-1).astype(jnp.float32)


def pad_stack(arrays: list[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
  """[n, length, d] zero-padded features and their [n, length] mask, from [len_i, d] arrays."""
  out = np.zeros((len(arrays), length, arrays[0].shape[-1]), np.float32)
  mask = np.zeros((len(arrays), length), np.float32)
  for i, a in enumerate(arrays):
    out[i, :len(a)], mask[i, :len(a)] = a, 1
  return out, mask


class RetrievalExperiment(VideoExperiment):
  """A video system that ranks sentences for videos and videos for sentences."""

  METRICS = RETRIEVAL_METRIC_NAMES

  def capabilities(self) -> frozenset[str]:
    return super().capabilities() | {RETRIEVE}

  # ------------------------------------------------------------------ per system
  def encode_video(self, model, inputs, mask):
    """(features [B, T, d], mask [B, T]) that retrieval compares, in eval mode."""
    raise NotImplementedError

  def encode_text(self, model, text_ids, text_mask):
    """Features [B, L, d] of token ids `X </s> lang` [B, L] (mask [B, L]), in eval mode; a
    pooled embedding is [B, 1, d] (its mask is then the first column of text_mask)."""
    raise NotImplementedError

  def pair_scores(self, video, video_mask, text, text_mask):
    """(v2t, t2v) [Bv, Bt] scores of every (video, text) pair, from video [Bv, T, d] / [Bv, T]
    and text [Bt, L, d] / [Bt, L] (jnp; jitted by `similarity`)."""
    raise NotImplementedError

  # ------------------------------------------------------------------ shared
  def text_inputs(self, labels):
    """(text ids, mask) [B, L] for a text encoder: the sentence `X </s> lang` (the labels)."""
    return labels, (labels != self.tokenizer.pad_id).astype(jnp.int32)

  def text_batch(self, sentences: list[str]) -> np.ndarray:
    """Token ids [len(sentences), bucket] `X </s> lang`, padded, as the data pipeline gives."""
    tok, buckets = self.tokenizer, self.config.data.length_buckets
    lang_id = tok.lang_id(self.config.tokenizer.tgt_lang)
    rows = [batching.fit_length(target_ids(tok, s, lang_id), max(buckets), keep_last=2)
            for s in sentences]
    return batching.pad_rows(rows, batching.bucket_length(max(map(len, rows)), buckets),
                             tok.pad_id)

  @staticmethod
  def _with_lengths(values, mask):
    return {'values': values.astype(jnp.float32),
            'lengths': jnp.sum(mask[:, :values.shape[1]], axis=1).astype(jnp.int32)}

  def video_embeddings_fn(self):
    """Jitted (params, rest, batch) -> {'values' [B, T', d], 'lengths' [B]}."""
    def run(params, rest, batch):
      values, mask = self.encode_video(self.merge(params, rest), *self.model_inputs(batch))
      return self._with_lengths(values, mask)
    return self.jitted('video_embeddings', run)

  def evaluation_fn(self):
    return self.video_embeddings_fn()

  def video_embeddings(self, params, rest, local_batch) -> list[np.ndarray]:
    """[T_i, d] features of every row of a global batch of clips (all processes call this)."""
    batch = {k: local_batch[k] for k in ('frames', 'frame_mask')}
    out = multihost_utils.process_allgather(
        self.video_embeddings_fn()(params, rest, self.global_batch(batch)), tiled=True)
    return [out['values'][i, :n] for i, n in enumerate(out['lengths'])]

  def text_embeddings(self, params, rest, text_ids: np.ndarray) -> list[np.ndarray]:
    """[L_i, d] features of every row of token ids [B, L] (a global batch; all processes)."""
    def run(params, rest, batch):
      ids, mask = self.text_inputs(batch['text_ids'])
      return self._with_lengths(self.encode_text(self.merge(params, rest), ids, mask), mask)

    rows = batching.local_rows(text_ids, jax.process_index(), jax.process_count())
    out = multihost_utils.process_allgather(self.jitted('text_embeddings', run)(
        params, rest, self.global_batch({'text_ids': rows})), tiled=True)
    return [out['values'][i, :n] for i, n in enumerate(out['lengths'])]

  def embed_texts(self, params, rest, sentences: list[str]) -> list[np.ndarray]:
    """[L_i, d] text features of each sentence, eval.batch_size at a time."""
    size = self.config.eval.batch_size
    out = []
    for start in range(0, len(sentences), size):
      chunk = sentences[start:start + size]
      ids = self.text_batch(chunk + [chunk[0]] * (size - len(chunk)))
      out.extend(self.text_embeddings(params, rest, ids)[:len(chunk)])
    return out

  def similarity(self, videos: list[np.ndarray], texts: list[np.ndarray]):
    """(v2t, t2v) [len(videos), len(texts)] `pair_scores` of [T_i, d] video features against
    [L_j, d] text features, SIMILARITY_BLOCK x SIMILARITY_BLOCK pairs at a time."""
    # Host-side scoring: every process computes all of it on its first local device.
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    if 'similarity' not in self._jitted:
      self._jitted['similarity'] = jax.jit(self.pair_scores, in_shardings=(local,) * 4,
                                           out_shardings=(local, local))
    score = self._jitted['similarity']
    frames = max(batching.bucket_length(max(len(v) for v in videos),
                                        self.config.data.frame_buckets),
                 max(len(v) for v in videos))
    tokens = max(len(t) for t in texts)
    v2t = np.zeros((len(videos), len(texts)), np.float32)
    t2v = np.zeros_like(v2t)
    block = SIMILARITY_BLOCK
    for i in range(0, len(videos), block):
      chunk = videos[i:i + block]
      v, vm = pad_stack(chunk + [chunk[0]] * (block - len(chunk)), frames)
      for j in range(0, len(texts), block):
        text_chunk = texts[j:j + block]
        t, tm = pad_stack(text_chunk + [text_chunk[0]] * (block - len(text_chunk)), tokens)
        a, b = jax.device_get(score(v, vm, t, tm))
        v2t[i:i + len(chunk), j:j + len(text_chunk)] = a[:len(chunk), :len(text_chunk)]
        t2v[i:i + len(chunk), j:j + len(text_chunk)] = b[:len(chunk), :len(text_chunk)]
    return v2t, t2v

  def evaluate(self, params, rest, split: str):
    """Sign retrieval over `split`: each video against the split's distinct sentences
    (metrics.sign_retrieval_metrics); predictions: each video's top-ranked sentence."""
    data, outputs = self.split_outputs(
        split, lambda local_batch: {'video': self.video_embeddings(params, rest, local_batch)})
    sentences = list(dict.fromkeys(data.texts))  # each distinct sentence embedded and scored once
    v2t, t2v = self.similarity(outputs['video'], self.embed_texts(params, rest, sentences))
    column = {sentence: j for j, sentence in enumerate(sentences)}
    of_video = [column[text] for text in data.texts]  # [videos, texts] as the split lists them
    metrics = sign_retrieval_metrics(v2t[:, of_video], t2v[:, of_video], data.texts)
    best = np.argmax(0.5 * v2t + 0.5 * t2v, axis=1)  # each video's top-ranked sentence
    log(f'{split}: retrieval over {len(data)} videos and {len(sentences)} sentences')
    return metrics, {'text': [sentences[j] for j in best]}
