"""Pre-extracted visual features as a dataset, for training a translation head on a frozen
backbone's features.

`python -m sltjax.main ... --mode=extract_features --workdir=W` runs W's backbone (eval mode, eval
transform) over every split and writes W/features/:

  {split}.array_record  one record per video, in the split's order: np.save bytes of [T', C]
  {split}.json          its index: ids, glosses, texts, lengths, feature dim, what produced it

A split's records are written under a temporary name (in a local temporary folder when the
directory is on gs://) and moved in place when complete, its index last: an interrupted extraction
resumes by redoing only splits without an index and never rewrites a finished one. Training reads the
directory with model.backbone='features' and data.features_dir=W/features.
"""
import contextlib
import dataclasses
import io
import json
import os
import tempfile

import grain
import numpy as np
from array_record.python import array_record_module

from sltjax import storage
from sltjax.data import batching
from sltjax.data.sign_labels import SignLabels
from sltjax.data.tokenizers import GlossVocabulary, Tokenizer
from sltjax.errors import MissingInputError

RECORDS, INDEX = '{split}.array_record', '{split}.json'


@dataclasses.dataclass
class FeatureSplit:
  """One split of a features dataset: random access to [T', C] arrays, and its index."""
  name: str  # the dataset the features were extracted from
  split: str
  source: object  # records: np.save bytes
  ids: list[str]
  num_frames: np.ndarray  # [records] feature steps T' of each record
  glosses: list[str]
  texts: list[str]
  dim: int

  def __len__(self):
    return len(self.ids)

  def features(self, index: int) -> np.ndarray:
    """[T', C] float32 features of record `index`."""
    return np.load(io.BytesIO(self.source[index])).astype(np.float32)


def split_complete(directory: str, split: str) -> bool:
  return storage.path(storage.join(directory, INDEX.format(split=split))).is_file()


def write_split(directory: str, split: str, rows, index: dict) -> int:
  """Writes `rows` (an iterable of [T', C] arrays, one per video in order) and `index` ({'id',
  'gloss', 'text', ...: one entry per video}) as `split`; returns the number written."""
  records = storage.join(directory, RECORDS.format(split=split))
  storage.make_folder(directory)
  with contextlib.ExitStack() as cleanup:
    if storage.is_remote(directory):  # ArrayRecord writes local files only
      tmp = cleanup.enter_context(tempfile.TemporaryDirectory())
      written = os.path.join(tmp, RECORDS.format(split=split))
    else:
      written = records + '.tmp'  # removed if writing stops before it is moved in place
      cleanup.callback(lambda: os.path.exists(written) and os.remove(written))
    writer = array_record_module.ArrayRecordWriter(written, 'group_size:1')
    lengths, dims = [], set()
    try:
      for features in rows:
        buffer = io.BytesIO()
        np.save(buffer, features)
        writer.write(buffer.getvalue())
        lengths.append(int(features.shape[0]))
        dims.add(int(features.shape[1]))
    finally:
      writer.close()
    if len(lengths) != len(index['id']):
      raise ValueError(f'{split}: {len(lengths)} feature arrays for {len(index["id"])} videos.')
    if storage.is_remote(directory):
      storage.copy_file(written, records)
    else:
      os.replace(written, records)
  index = {**index, 'num_features': lengths, 'dim': dims.pop() if dims else 0}
  # The split counts as complete from here.
  storage.write_text(storage.join(directory, INDEX.format(split=split)), json.dumps(index))
  return len(lengths)


def open_split(directory: str, split: str, expected_dim: int) -> FeatureSplit:
  """`split` of the features dataset in `directory`, checked against the model's input size."""
  index_path = storage.join(directory, INDEX.format(split=split))
  storage.check_access(directory, write=False)
  if not storage.path(index_path).is_file():
    raise MissingInputError(
        f'{index_path} not found: data.features_dir={directory!r} holds no complete {split!r} '
        'split. Write it with python -m sltjax.main --config=<the backbone\'s config> '
        '--workdir=<its workdir> --mode=extract_features (into <workdir>/features).')
  index = json.loads(storage.read_text(index_path))
  if index['dim'] != expected_dim:
    raise ValueError(f'{index_path}: features have {index["dim"]} channels but '
                     f'model.feature_dim={expected_dim}; set --config.model.feature_dim='
                     f'{index["dim"]}.')
  source = grain.sources.ArrayRecordDataSource(
      [storage.join(directory, RECORDS.format(split=split))])
  if len(source) != len(index['id']):
    raise ValueError(f'{directory}: {split} has {len(source)} records but its index lists '
                     f'{len(index["id"])} videos; the directory is damaged: delete both '
                     f'{split} files and extract again.')
  return FeatureSplit(name=index['dataset'], split=split, source=source, ids=index['id'],
                      num_frames=np.array(index['num_features']), glosses=index['gloss'],
                      texts=index['text'], dim=index['dim'])


class FeatureBatchLoader(grain.transforms.Map):
  """Global batch of record indices -> this process's padded batch, as video.VideoBatchLoader
  but with features in place of frames (no augmentation: the features are fixed):

    frames [rows, T', C] float32 features, zero-padded to a data.frame_buckets length;
    frame_mask [rows, T']; num_frames [rows]; and the labels of sign_labels.SignLabels
  """

  def __init__(self, split: FeatureSplit, config, tokenizer: Tokenizer, glosses: GlossVocabulary,
               tgt_lang: str, process_index: int = 0, process_count: int = 1,
               record_labels: dict[str, np.ndarray] | None = None):
    self.split, self.config = split, config
    self.process_index, self.process_count = process_index, process_count
    self.labels = SignLabels(split.glosses, split.texts, tokenizer, glosses, tgt_lang,
                             config.length_buckets, record_labels)

  def map(self, global_indices: np.ndarray):
    real = global_indices[global_indices != batching.PAD_INDEX]
    length = batching.bucket_length(int(self.split.num_frames[real].max()),
                                    self.config.frame_buckets)
    mine = batching.local_rows(np.arange(len(global_indices)), self.process_index,
                               self.process_count)
    features = np.zeros((len(mine), length, self.split.dim), np.float32)
    frame_mask = np.zeros((len(mine), length), np.int32)
    for row, g in enumerate(mine):
      index = int(global_indices[g])
      if index != batching.PAD_INDEX:
        values = self.split.features(index)
        if len(values) > length:  # longer than the largest bucket: evenly spaced, as for frames
          values = values[np.linspace(0, len(values) - 1, length).round().astype(int)]
        features[row, :len(values)] = values
        frame_mask[row, :len(values)] = 1
    return {'frames': features, 'frame_mask': frame_mask,
            'num_frames': frame_mask.sum(1).astype(np.int32),
            **self.labels.arrays(global_indices, mine)}
