"""The label half of a sign-video batch: CTC gloss labels and decoder targets, shared by the loader
of frames (video.py) and the loader of pre-extracted features (features.py)."""
import numpy as np

from sltjax.data import batching
from sltjax.data.tokenizers import GlossVocabulary, Tokenizer


def target_ids(tokenizer: Tokenizer, text: str, tgt_lang_id: int) -> np.ndarray:
  """A sentence's ids `X </s> tgt_lang` (the decoder's labels, and a text encoder's input)."""
  return np.array(tokenizer.encode(text) + [tokenizer.eos_id, tgt_lang_id], np.int32)


class SignLabels:
  """Per record of a split: gloss ids (CTC labels), the target ids `X </s> tgt_lang`, and any
  labels a system adds (record_labels: {name: [records, ...] array}, e.g.
  pseudo-gloss targets)."""

  def __init__(self, glosses: list[str], texts: list[str], tokenizer: Tokenizer,
               vocabulary: GlossVocabulary, tgt_lang: str, length_buckets: tuple[int, ...],
               record_labels: dict[str, np.ndarray] | None = None):
    self.record_labels = dict(record_labels or {})
    for name, values in self.record_labels.items():
      if len(values) != len(texts):
        raise ValueError(f'record_labels[{name!r}] has {len(values)} rows for {len(texts)} '
                         'records.')
    self.pad_id, self.tgt_lang_id = tokenizer.pad_id, tokenizer.lang_id(tgt_lang)
    self.length_buckets = tuple(length_buckets)
    self.targets = [target_ids(tokenizer, t, self.tgt_lang_id) for t in texts]
    self.gloss_ids = [np.array(vocabulary.encode(g), np.int32) for g in glosses]

  def arrays(self, global_indices: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Labels of the global batch's positions `rows` (this process's rows):

      gloss_ids, gloss_mask [rows, G] (blank 0 never a label; padding 0 with mask 0)
      decoder_input_ids, labels, label_weights [rows, L] (batching.decoder_targets)
      index [rows] (record index, PAD_INDEX for filler rows)
      each record_labels entry [rows, ...] (zeros for filler rows)

    G and L are bucketed from every real row of the global batch, so all processes agree.
    """
    real = global_indices[global_indices != batching.PAD_INDEX]
    gloss_len = batching.bucket_length(max(len(self.gloss_ids[i]) for i in real),
                                       self.length_buckets)
    text_len = batching.bucket_length(max(len(self.targets[i]) for i in real),
                                      self.length_buckets)
    glosses, labels = [], []
    for index in global_indices[rows]:
      if index == batching.PAD_INDEX:
        glosses.append(np.zeros(0, np.int32))
        labels.append(np.zeros(0, np.int32))
      else:
        glosses.append(self.gloss_ids[index][:gloss_len])
        labels.append(batching.fit_length(self.targets[index], text_len, keep_last=2))
    gloss_mask = np.arange(gloss_len)[None] < np.array([len(g) for g in glosses])[:, None]
    indices = global_indices[rows]
    extra = {name: np.where((indices != batching.PAD_INDEX).reshape(-1, *[1] * (values.ndim - 1)),
                            values[np.maximum(indices, 0)], 0).astype(values.dtype)
             for name, values in self.record_labels.items()}
    return {
        'gloss_ids': batching.pad_rows(glosses, gloss_len, GlossVocabulary.BLANK_ID),
        'gloss_mask': gloss_mask.astype(np.int32),
        **batching.decoder_targets(labels, text_len, self.pad_id, self.tgt_lang_id),
        'index': indices.astype(np.int32),
        **extra,
    }
