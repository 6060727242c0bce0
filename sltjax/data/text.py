"""Parallel text data ({split}.{source_suffix} / {split}.{target_suffix}) as grain pipelines.

A gloss-to-text corpus is read from `train.gloss` + `train.de`; each line pair is one example.
Examples are tokenized once, then batched by the global-batch plan of sltjax/data/batching.py
and padded to length buckets.
"""
import dataclasses

import grain
import numpy as np

from sltjax import storage
from sltjax.data import batching
from sltjax.data.tokenizers import Tokenizer
from sltjax.errors import MissingInputError, UserError


def split_paths(config, split: str) -> tuple[str, str]:
  return (storage.join(config.path, f'{split}.{config.source_suffix}'),
          storage.join(config.path, f'{split}.{config.target_suffix}'))


def available_splits(config) -> list[str]:
  """Splits with both a source and a target file under config.path."""
  folder = storage.path(config.path)
  if not folder.is_dir():
    return []
  names = {p.name.rsplit('.', 1)[0] for p in folder.iterdir()}
  return sorted(s for s in names
                if all(storage.path(p).is_file() for p in split_paths(config, s)))


def read_parallel(config, split: str) -> tuple[list[str], list[str]]:
  """Source and target lines of `split`, checked to be parallel and non-empty."""
  paths = split_paths(config, split)
  storage.check_access(config.path, write=False)
  missing = [p for p in paths if not storage.path(p).is_file()]
  if missing:
    raise MissingInputError(
        f'Split {split!r}: missing {missing}. Splits present under data.path={config.path!r}: '
        f'{available_splits(config) or "none"}.')
  sides = [storage.read_text(path).splitlines() for path in paths]
  (src_path, tgt_path), (sources, targets) = paths, sides
  if len(sources) != len(targets):
    raise UserError(f'{src_path} has {len(sources)} lines but {tgt_path} has {len(targets)}: '
                     'the files must be line-parallel.')
  for i, (s, t) in enumerate(zip(sources, targets)):
    if not s.strip() or not t.strip():
      empty = src_path if not s.strip() else tgt_path
      raise UserError(f'{empty}, line {i + 1}: empty line; every example needs a source and a '
                       'target (remove the pair from both files).')
  if config.lowercase_source:
    sources = [s.lower() for s in sources]
  return sources, targets


def write_parallel(directory: str, split: str, sources: list[str], targets: list[str],
                   source_suffix: str = 'gloss', target_suffix: str = 'de') -> None:
  """Writes `split` as {split}.{source_suffix} / {split}.{target_suffix}, one example per line
  (the layout read_parallel reads); both are encoded before either replaces the old pair."""
  if len(sources) != len(targets):
    raise ValueError(f'Split {split!r}: {len(sources)} sources but {len(targets)} targets.')
  contents = {suffix: ''.join(line + '\n' for line in lines).encode('utf-8')
              for suffix, lines in ((source_suffix, sources), (target_suffix, targets))}
  for suffix, data in contents.items():
    storage.write_bytes(storage.join(directory, f'{split}.{suffix}'), data)


@dataclasses.dataclass
class TokenizedCorpus:
  """Token ids per example: source `X </s> src_lang`, target `X </s>` (language code added later)."""
  sources: list[np.ndarray]
  targets: list[np.ndarray]
  references: list[str]  # the raw target lines, for scoring

  def __len__(self):
    return len(self.sources)


def tokenize_corpus(sources, targets, tokenizer: Tokenizer, src_lang: str) -> TokenizedCorpus:
  src_suffix = [tokenizer.eos_id, tokenizer.lang_id(src_lang)]
  return TokenizedCorpus(
      sources=[np.array(tokenizer.encode(s) + src_suffix, np.int32) for s in sources],
      targets=[np.array(tokenizer.encode(t) + [tokenizer.eos_id], np.int32) for t in targets],
      references=targets)


class BatchLoader(grain.transforms.Map):
  """Global batch of indices -> this process's padded batch of arrays.

  Output (rows = local batch): input_ids, attention_mask [rows, src_len]; decoder_input_ids,
  labels, label_weights [rows, tgt_len]; index [rows] (-1 for filler rows). The padded lengths are
  the buckets of the longest example of the *global* batch, so every process agrees on shapes.
  Over-long examples are truncated, keeping their final </s> (and language code).
  """

  def __init__(self, corpus: TokenizedCorpus, tokenizer: Tokenizer, tgt_lang: str,
               buckets: tuple[int, ...], process_index: int, process_count: int):
    # The process position is captured here: grain worker processes do not know it.
    self.process_index, self.process_count = process_index, process_count
    self.corpus = corpus
    self.pad_id = tokenizer.pad_id
    self.tgt_lang_id = tokenizer.lang_id(tgt_lang)
    self.buckets = tuple(sorted(buckets))

  def map(self, global_indices: np.ndarray) -> dict[str, np.ndarray]:
    real = global_indices[global_indices != batching.PAD_INDEX]
    src_len = batching.bucket_length(max(len(self.corpus.sources[i]) for i in real), self.buckets)
    # labels `X </s> lang` are one longer than the stored `X </s>`.
    tgt_len = batching.bucket_length(max(len(self.corpus.targets[i]) for i in real) + 1,
                                     self.buckets)
    rows = batching.local_rows(global_indices, self.process_index, self.process_count)
    sources, labels = [], []
    for i in rows:
      if i == batching.PAD_INDEX:
        sources.append(np.zeros(0, np.int32))
        labels.append(np.zeros(0, np.int32))
        continue
      sources.append(batching.fit_length(self.corpus.sources[i], src_len, keep_last=2))
      target = np.append(self.corpus.targets[i], self.tgt_lang_id)
      labels.append(batching.fit_length(target, tgt_len, keep_last=2))
    input_ids = batching.pad_rows(sources, src_len, self.pad_id)
    return {
        'input_ids': input_ids,
        'attention_mask': (input_ids != self.pad_id).astype(np.int32),
        **batching.decoder_targets(labels, tgt_len, self.pad_id, self.tgt_lang_id),
        'index': rows.astype(np.int32),
    }

