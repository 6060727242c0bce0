"""Built video datasets (tfds_builders/) as grain pipelines of padded, masked batches.

  record (JPEG frames) -> temporal sampling (sampling.py) -> decode only the sampled frames ->
  one augmentation draw per clip (augmentation.py) -> normalisation -> tokenization ->
  padding to length buckets with masks

Batches follow the global-batch plans of batching.py: every process computes the sampled
lengths of the whole global batch (from the split's index, no frames read) so all processes
agree on shapes, then decodes only its own rows. Draws come from a generator per global batch,
so a resumed iterator repeats them exactly.
"""
import dataclasses

import cv2
import grain
import ml_collections
import numpy as np

from sltjax import storage
from sltjax.data import augmentation, batching, clip_builder, clips, sampling
from sltjax.data.sign_labels import SignLabels
from sltjax.data.tokenizers import GlossVocabulary, Tokenizer
from sltjax.errors import MissingInputError


def default_config() -> ml_collections.ConfigDict:
  """Data settings of a video experiment (`config.data`); each system's config sets its
  published recipe over them."""
  return ml_collections.ConfigDict({
      'name': 'synthetic_signs',  # a dataset of tfds_builders/
      'data_dir': '',  # where `python -m sltjax.data.build` wrote it
      'train_split': 'train',
      'sampling': 'all',  # a strategy registered in sampling.py (by name)
      'max_frames': 0,  # cap after sampling (evenly spaced); 0: none
      'frame_buckets': (32, 64, 96, 128, 192, 256, 320, 400),
      'length_buckets': (16, 32, 64, 128),  # text and gloss lengths
      'lowercase_gloss': False,
      'crop_size': 224,
      'eval_resize': 224,  # eval: short side resized to this, then the centre crop_size
      # eval: 'centre' (the crop above) or 'squash' (the whole frame resized to crop_size
      # squared, its aspect ratio lost, as Sign2GPT's release)
      'eval_crop': 'centre',
      'random_crop': 'resized',  # train: 'resized' (RandomResizedCrop), 'fixed', 'centre'
      'random_crop_scale': (0.7, 1.0),
      'random_crop_ratio': (0.75, 1.3333),
      'rotation_degrees': 0.0,
      'rotation_prob': 1.0,  # the share of clips rotated (by up to rotation_degrees)
      'hflip_prob': 0.0,
      'colour_jitter_prob': 0.0,
      'brightness': 0.4, 'contrast': 0.4, 'saturation': 0.4, 'hue': 0.1,
      'grayscale_prob': 0.0,
      'normalization': 'none',  # augmentation.NORMALIZATIONS; 'none' = uint8, normalised on device
      'channel_order': 'rgb',
      'num_workers': 0,
      # Batches carry each frame's gloss id (frame_gloss_ids; built datasets whose index has
      # them: synthetic_signs), for losses on frame labels.
      'frame_glosses': False,
      'fps': 25.0,  # the dataset's frame rate; translate resamples other videos to it
  })


@dataclasses.dataclass
class VideoSplit:
  """One split of a built dataset: random access to records, and its index (no frames)."""
  name: str
  split: str
  source: object  # records with 'frames' as JPEG bytes
  ids: list[str]
  num_frames: np.ndarray  # [records]
  glosses: list[str]
  texts: list[str]
  frame_glosses: list[str] | None = None  # per record, per frame (clips.ClipSpec); None: unknown

  def __len__(self):
    return len(self.ids)


def _built_index(config):
  """(builder, {split: index}) of dataset config.name under config.data_dir; says how to build it if absent."""
  how_to_build = (f'  python -m sltjax.data.build --dataset={config.name} '
                  f'--data_dir={config.data_dir or "DIR"}'
                  + ('' if config.name == 'synthetic_signs' else ' --manual_dir=RELEASE'))
  if not config.data_dir:
    raise MissingInputError(f'config.data.data_dir is not set: build {config.name} with\n'
                            f'{how_to_build}\nthen pass --config.data.data_dir=DIR.')
  storage.check_access(config.data_dir, write=False)
  builder = clip_builder.builder_class(config.name)(data_dir=config.data_dir)
  if not builder.is_prepared():
    raise MissingInputError(f'{config.name} is not built under data_dir={config.data_dir!r}. '
                            f'Build it with\n{how_to_build}')
  return builder, builder.info.metadata['index']


def split_names(config) -> list[str]:
  """The splits of the built dataset config.name, sorted."""
  return sorted(_built_index(config)[1])


def open_split(config, split: str) -> VideoSplit:
  """`split` of dataset config.name under config.data_dir; says how to build it if absent."""
  builder, index = _built_index(config)
  if split not in index:
    raise MissingInputError(f'{config.name} under {config.data_dir} has no split {split!r}; it has '
                            f'{sorted(index)}.')
  case = (lambda lines: [g.lower() for g in lines]) if config.lowercase_gloss else list
  frame_glosses = index[split].get('frame_glosses')
  if config.get('frame_glosses') and frame_glosses is None:
    raise MissingInputError(
        f'data.frame_glosses: {config.name} under {config.data_dir} has no per-frame glosses '
        '(only synthetic_signs, built by this version, records them); set '
        '--config.data.frame_glosses=False and loss.frame_gloss_weight=0, or rebuild it.')
  return VideoSplit(
      name=config.name, split=split,
      source=builder.as_data_source(split, decoders={'frames': clip_builder.KeepEncoded()}),
      ids=index[split]['id'], num_frames=np.array(index[split]['num_frames']),
      glosses=case(index[split]['gloss']), texts=index[split]['text'],
      frame_glosses=None if frame_glosses is None else case(frame_glosses))


def decode_frames(jpegs, indices: np.ndarray, clip: str) -> list[np.ndarray]:
  """RGB frames [h, w, 3] at `indices` (repeats decoded once); `clip` names it in errors."""
  decoded = {}
  for i in np.unique(indices):
    decoded[int(i)] = cv2.imdecode(np.frombuffer(jpegs[i], np.uint8), cv2.IMREAD_COLOR_RGB)
    if decoded[int(i)] is None:
      raise ValueError(f'{clip}: stored frame {i} is not a decodable JPEG; the dataset files are '
                       'damaged: rebuild the dataset.')
  return [decoded[int(i)] for i in indices]


class VideoBatchLoader(grain.transforms.RandomMap):
  """Global batch of record indices -> this process's padded batch.

  Output (rows = local batch, T = frame bucket, S = crop_size):
    frames [rows, T, S, S, 3] (uint8, or float32 when normalised here), padded by repeating the
      last frame; frame_mask [rows, T] (1 = real frame); num_frames [rows]
    gloss_ids, gloss_mask [rows, G] (CTC labels, blank 0 never a label, padding 0 with mask 0)
    decoder_input_ids, labels, label_weights [rows, L] (targets `X </s> tgt_lang`, as text.py)
    index [rows] (record index, -1 for filler rows of the last eval batch)
    frame_gloss_ids [rows, T] with config.frame_glosses: each frame's gloss id (blank between
      signs and on padding)
  """

  def __init__(self, split: VideoSplit, config, tokenizer: Tokenizer, glosses: GlossVocabulary,
               tgt_lang: str, train: bool, process_index: int = 0, process_count: int = 1,
               record_labels: dict[str, np.ndarray] | None = None):
    self.split, self.config, self.train = split, config, train
    self.process_index, self.process_count = process_index, process_count
    self.glosses = glosses
    # Resolved here: a worker process unpickles the function by its module, which registers it.
    self.sampling = sampling.strategy(config.sampling)
    self.labels = SignLabels(split.glosses, split.texts, tokenizer, glosses, tgt_lang,
                             config.length_buckets, record_labels)

  def _sample(self, index: int, seed: int) -> tuple[np.ndarray, np.random.Generator]:
    if index == batching.PAD_INDEX:
      return np.zeros(0, int), None
    rng = np.random.default_rng(seed)
    indices = sampling.sample_frames(self.sampling, int(self.split.num_frames[index]), rng,
                                     self.train, self.config.max_frames)
    return indices, rng

  def _clip(self, index: int, indices: np.ndarray, rng, length: int) -> np.ndarray:
    """[length, S, S, 3] uint8 of record `index`'s frames at `indices` (at most `length`),
    augmented, padded with its last frame."""
    frames = decode_frames(self.split.source[index]['frames'], indices,
                           f'{self.split.name}/{self.split.split} {self.split.ids[index]}')
    transform = augmentation.draw_clip_transform(*frames[0].shape[:2], rng, self.config,
                                                 self.train)
    out = np.stack([augmentation.apply(f, transform, self.config.crop_size) for f in frames])
    return np.concatenate([out, np.repeat(out[-1:], length - len(out), axis=0)])

  def random_map(self, global_indices: np.ndarray, rng: np.random.Generator):
    seeds = rng.integers(2**63, size=len(global_indices))  # one per global row
    sampled = [self._sample(int(i), s) for i, s in zip(global_indices, seeds)]
    real = global_indices != batching.PAD_INDEX
    length = batching.bucket_length(max(len(s) for (s, _), r in zip(sampled, real) if r),
                                    self.config.frame_buckets)
    mine = batching.local_rows(np.arange(len(global_indices)), self.process_index,
                               self.process_count)  # this process's rows of the global batch
    size = self.config.crop_size
    frames = np.zeros((len(mine), length, size, size, 3), np.uint8)
    frame_mask = np.zeros((len(mine), length), np.int32)
    frame_gloss_ids = np.zeros((len(mine), length), np.int32)  # blank where no sign or padding
    for row, g in enumerate(mine):
      index = int(global_indices[g])
      if index != batching.PAD_INDEX:
        indices, clip_rng = sampled[g]
        if len(indices) > length:  # longer than the largest bucket: evenly spaced
          indices = indices[np.linspace(0, len(indices) - 1, length).round().astype(int)]
        frames[row] = self._clip(index, indices, clip_rng, length)
        frame_mask[row, :len(indices)] = 1
        if self.config.get('frame_glosses'):
          frame_gloss_ids[row, :len(indices)] = self.frame_gloss_ids(index)[indices]
    batch = {
        'frames': augmentation.normalize(frames, self.config.normalization,
                                         self.config.channel_order),
        'frame_mask': frame_mask,
        'num_frames': frame_mask.sum(1).astype(np.int32),
        **self.labels.arrays(global_indices, mine),
    }
    if self.config.get('frame_glosses'):
      batch['frame_gloss_ids'] = frame_gloss_ids
    return batch

  def frame_gloss_ids(self, index: int) -> np.ndarray:
    """[num_frames] gloss id of each frame of record `index` (blank between signs)."""
    return np.array([GlossVocabulary.BLANK_ID if g == clips.NO_SIGN else self.glosses.encode(g)[0]
                     for g in self.split.frame_glosses[index].split()], np.int32)


def eval_clip(frames: list[np.ndarray], config) -> tuple[np.ndarray, int]:
  """A whole video's RGB frames (any size) -> ([bucket, S, S, 3] uint8, valid frames), as
  evaluation sees a record: eval sampling, short side resized then centre-cropped, padded with
  the last frame."""
  indices = sampling.sample_frames(config.sampling, len(frames), np.random.default_rng(0),
                                   False, config.max_frames)
  length = batching.bucket_length(len(indices), config.frame_buckets)
  if len(indices) > length:
    indices = indices[np.linspace(0, len(indices) - 1, length).round().astype(int)]
  transform = augmentation.draw_clip_transform(*frames[0].shape[:2], np.random.default_rng(0),
                                               config, False)
  out = np.stack([augmentation.apply(frames[i], transform, config.crop_size) for i in indices])
  return np.concatenate([out, np.repeat(out[-1:], length - len(out), axis=0)]), len(out)


def batch_shapes(config, rows: int, frames: int, labels: int, frame_dim: tuple[int, ...],
                 frames_dtype, record_labels: dict[str, tuple[int, ...]] | None = None
                 ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """The arrays of one batch as VideoBatchLoader (frame_dim (S, S, 3)) or FeatureBatchLoader
  (frame_dim (D,)) makes them: `frames` frames, `labels` gloss and text
  positions, and each record label's per-row shape, as {name: (shape, dtype)}. For compiling
  without a dataset (sltjax/compile_check.py)."""
  shape = lambda *dims, dtype=np.int32: (dims, np.dtype(dtype))
  batch = {'frames': shape(rows, frames, *frame_dim, dtype=frames_dtype),
           'frame_mask': shape(rows, frames), 'num_frames': shape(rows),
           'gloss_ids': shape(rows, labels), 'gloss_mask': shape(rows, labels),
           'decoder_input_ids': shape(rows, labels), 'labels': shape(rows, labels),
           'label_weights': shape(rows, labels, dtype=np.float32), 'index': shape(rows)}
  for name, dims in (record_labels or {}).items():
    batch[name] = shape(rows, *dims, dtype=np.float32)
  if config.get('frame_glosses'):
    batch['frame_gloss_ids'] = shape(rows, frames)
  return batch
