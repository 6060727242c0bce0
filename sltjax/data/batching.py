"""Global-batch index plans shared by every grain pipeline.

A pipeline is a grain MapDataset of *global* batches of record indices (shuffled per epoch from the
seed); each JAX process then loads only its own contiguous rows of each global batch. So 1 process
and N processes see exactly the same global batches, and the iterator state (saved in checkpoints)
is a position in this plan.
"""
import bisect

import grain
import numpy as np

PAD_INDEX = -1  # marks filler rows of the last, partial evaluation batch


def train_plan(num_records: int, global_batch_size: int, seed: int) -> grain.MapDataset:
  """Endless global batches [global_batch_size] of record indices, reshuffled every epoch."""
  return (grain.MapDataset.range(num_records).shuffle(seed=seed).repeat()
          .batch(global_batch_size, drop_remainder=True))


def eval_plan(num_records: int, global_batch_size: int) -> grain.MapDataset:
  """One pass in order; the last global batch is filled up with PAD_INDEX."""
  num_batches = -(-num_records // global_batch_size)
  indices = np.full(num_batches * global_batch_size, PAD_INDEX, np.int64)
  indices[:num_records] = np.arange(num_records)
  return grain.MapDataset.source(indices.reshape(num_batches, global_batch_size))


def local_rows(global_indices: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
  """Process `process_index`'s contiguous slice of a global batch of indices."""
  per_process = len(global_indices) // process_count
  start = process_index * per_process
  return global_indices[start:start + per_process]


def bucket_length(length: int, buckets: tuple[int, ...]) -> int:
  """The smallest bucket >= length (the largest if none), so XLA compiles few shapes."""
  i = bisect.bisect_left(buckets, length)
  return buckets[min(i, len(buckets) - 1)]


def pad_rows(rows: list[np.ndarray], length: int, pad_value: int) -> np.ndarray:
  """Stacks 1-D int rows into [len(rows), length], right-padded with pad_value."""
  out = np.full((len(rows), length), pad_value, np.int32)
  for i, row in enumerate(rows):
    out[i, :len(row)] = row[:length]
  return out


def fit_length(ids: np.ndarray, length: int, keep_last: int) -> np.ndarray:
  """ids cut to `length`, keeping their final `keep_last` ids (e.g. `</s> lang`)."""
  return ids if len(ids) <= length else np.concatenate([ids[:length - keep_last],
                                                         ids[-keep_last:]])


def decoder_targets(labels: list[np.ndarray], length: int, pad_id: int,
                    tgt_lang_id: int) -> dict[str, np.ndarray]:
  """Teacher-forcing arrays [rows, length] from label rows `X </s> lang` (already fitted).

  decoder_input_ids is mBART's shift_tokens_right (`lang X </s>`); label_weights is 1 on every
  label but the final language code (never predicted, as in the SLT releases) and the padding.
  """
  label_ids = pad_rows(labels, length, pad_id)
  lengths = np.array([len(l) for l in labels])
  decoder_input_ids = np.roll(label_ids, 1, axis=1)
  decoder_input_ids[:, 0] = tgt_lang_id
  decoder_input_ids[np.arange(length)[None, :] >= lengths[:, None]] = pad_id
  weights = (np.arange(length)[None, :] < (lengths - 1)[:, None]).astype(np.float32)
  return {'decoder_input_ids': decoder_input_ids, 'labels': label_ids, 'label_weights': weights}


def make_dataset(plan: grain.MapDataset, loader, num_workers: int,
                 seed: int = 0) -> grain.IterDataset:
  """A checkpointable iterator-dataset of local batches, optionally with worker processes.

  A loader that is a grain RandomMap gets a generator per global batch derived from `seed` and
  the batch's position in the plan, so its draws are reproduced exactly on resume.
  """
  if isinstance(loader, grain.transforms.RandomMap):
    dataset = plan.random_map(loader, seed=seed)
  else:
    dataset = plan.map(loader)
  dataset = dataset.to_iter_dataset()
  if num_workers > 0:
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return dataset
