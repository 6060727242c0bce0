"""The TFDS builder base shared by every sign language video dataset in tfds_builders/.

A dataset's builder only lists its clips (`list_clips`: ids, glosses, texts and frame sources,
plus every annotation problem it finds). This base then
  1. drops duplicate ids,
  2. decodes, resizes and JPEG-encodes every clip in worker processes into a cache beside the
     dataset (`DATA_DIR/<name>/.build-cache-<version>/`), so an interrupted build resumes,
  3. leaves out the clips a dataset's papers leave out for being too short (`SHORT_CLIPS`:
     How2Sign's sentences whose subtitle runs past the video; option `drop_short_clips`),
     counted in the build summary,
  4. stops before writing anything if any clip has a problem and on_error='fail', listing them all,
  5. lets TFDS write ArrayRecord shards into a temporary directory that is renamed only when
     complete, with an index of every field but the frames (in record order) in its metadata,
     plus each frame's gloss where the builder knows it (`frame_glosses`: synthetic_signs).
Records: id, signer, gloss, text (str), fps (float32), num_frames (int32) and frames, a sequence
of JPEG images.
"""
import importlib
import multiprocessing
import os
import shutil
import time

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from sltjax.data import clips
from sltjax.data.frames import FrameSize

ON_ERROR_CHOICES = ('fail', 'skip')


class BuildError(RuntimeError):
  """Raised before anything is finalised when the release has problems and on_error='fail'."""

  def __init__(self, name: str, problems: list[clips.Problem]):
    self.problems = problems
    listing = '\n'.join(f'  {p}' for p in problems)
    super().__init__(
        f'{name}: {len(problems)} problem(s) in the source data; nothing was written.\n{listing}\n'
        'Fix these files, or rebuild with --on_error=skip to leave these examples out (they are '
        'then listed in the build summary).')


class KeepEncoded(tfds.decode.Decoder):
  """A TFDS decoder that leaves images as their encoded bytes (the pipeline decodes them)."""

  def decode_example(self, serialized):
    return serialized

  def decode_example_np(self, serialized):
    return serialized

  def decode_batch_example_np(self, serialized):
    return serialized


def drop_duplicates(splits: dict[str, list[clips.ClipSpec]]):
  """Keeps the first example of each id (over all splits); the others become problems."""
  first_seen, kept, problems = {}, {}, []
  for split, specs in splits.items():
    kept[split] = []
    for spec in specs:
      if spec.id in first_seen:
        problems.append(clips.Problem(split, spec.id, 'annotations',
                                      f'duplicate id (first seen in split {first_seen[spec.id]!r}).'))
        continue
      first_seen[spec.id] = split
      kept[split].append(spec)
  return kept, problems


class SignVideoBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base for sign language video datasets; subclasses implement `list_clips`."""
  VERSION = tfds.core.Version('1.0.0')
  DEFAULT_FRAME_SIZE = '256'
  DEFAULT_JPEG_QUALITY = 90
  DESCRIPTION = ''
  HOMEPAGE = ''
  CITATION = ''
  # (fewest frames, why): a clip with fewer frames, or a readable but empty video, is expected
  # in the release and left out (counted in the summary, not a problem). None: every clip counts.
  SHORT_CLIPS: tuple[int, str] | None = None

  def __init__(self, *, frame_size: str | None = None, jpeg_quality: int | None = None,
               num_workers: int = 1, on_error: str = 'fail', show_progress: bool = False,
               drop_short_clips: bool | str = True, **kwargs):
    if on_error not in ON_ERROR_CHOICES:
      raise ValueError(f'on_error={on_error!r}; expected one of {ON_ERROR_CHOICES}.')
    if str(drop_short_clips).lower() not in ('true', 'false'):
      raise ValueError(f'drop_short_clips={drop_short_clips!r}; expected true or false.')
    self.short_clips = self.SHORT_CLIPS if str(drop_short_clips).lower() == 'true' else None
    quality = self.DEFAULT_JPEG_QUALITY if jpeg_quality is None else int(jpeg_quality)
    if not 1 <= quality <= 100:
      raise ValueError(f'jpeg_quality={quality}; expected 1..100.')
    self.settings = clips.EncodingSettings(
        FrameSize.parse(frame_size or self.DEFAULT_FRAME_SIZE), quality)
    self.num_workers, self.on_error, self.show_progress = num_workers, on_error, show_progress
    self._frame_glosses = {}  # clip id -> ClipSpec.frame_glosses, set by _split_generators
    super().__init__(**kwargs)

  def list_clips(self, manual_dir: str | None):
    """-> ({split: [ClipSpec]}, [Problem]) from the release under manual_dir."""
    raise NotImplementedError

  @property
  def cache_dir(self) -> str:
    return os.path.join(self._data_dir_root, self.name, f'.build-cache-{self.version}')

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.DESCRIPTION, homepage=self.HOMEPAGE,
        citation=self.CITATION, metadata=tfds.core.MetadataDict(),
        features=tfds.features.FeaturesDict({
            'id': tfds.features.Text(),
            'signer': tfds.features.Text(),
            'gloss': tfds.features.Text(),
            'text': tfds.features.Text(),
            'fps': tfds.features.Scalar(dtype=np.float32),
            'num_frames': tfds.features.Scalar(dtype=np.int32),
            'frames': tfds.features.Sequence(
                tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg')),
        }))

  # --- 1-3: list, encode in parallel into the cache, check -----------------------------------
  def _encode_all(self, splits: dict[str, list[clips.ClipSpec]]) -> list[clips.EncodeResult]:
    tasks = [(split, spec, self.settings, self.cache_dir)
             for split, specs in splits.items() for spec in specs]
    progress = tqdm.tqdm(total=len(tasks), unit='clip', desc=f'{self.name}: encoding frames',
                         disable=not self.show_progress, smoothing=0.05)
    results, frames_done, start = [], 0, time.monotonic()
    with progress:
      if self.num_workers > 1 and len(tasks) > 1:
        pool = multiprocessing.get_context('spawn').Pool(self.num_workers)
        iterator = pool.imap_unordered(clips.encode_clip, tasks, chunksize=1)
      else:
        pool, iterator = None, map(clips.encode_clip, tasks)
      try:
        for result in iterator:
          results.append(result)
          frames_done += result.num_frames
          progress.set_postfix_str(f'{frames_done / max(time.monotonic() - start, 1e-9):.0f} frames/s',
                                   refresh=False)
          progress.update()
      finally:
        if pool is not None:
          pool.terminate()
    order = {(split, spec.id): i for i, (split, spec, _, _) in enumerate(tasks)}
    return sorted(results, key=lambda r: order[r.split, r.spec.id])

  def _drop_short(self, results: list[clips.EncodeResult]):
    """(the results kept, {'reason', 'fewest_frames', 'ids': {split: [id]}} of those
    SHORT_CLIPS leaves out; {} when it is off)."""
    if self.short_clips is None:
      return results, {}
    fewest, reason = self.short_clips
    short = lambda r: r.empty or (r.problem is None and r.num_frames < fewest)
    ids = {}
    for r in filter(short, results):
      ids.setdefault(r.split, []).append(r.spec.id)
    return ([r for r in results if not short(r)],
            {'reason': reason, 'fewest_frames': fewest, 'ids': ids})

  def _split_generators(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir) if self.MANUAL_DOWNLOAD_INSTRUCTIONS else None
    splits, problems = self.list_clips(manual_dir)
    splits, duplicates = drop_duplicates(splits)
    results = self._encode_all(splits)
    results, too_short = self._drop_short(results)
    problems += duplicates + [r.problem for r in results if r.problem]
    if problems and self.on_error == 'fail':
      raise BuildError(self.name, problems)
    kept = {split: [r.spec for r in results if r.split == split and not r.problem]
            for split in splits}
    self.info.metadata.update({
        'frame_size': str(self.settings.frame_size),
        'jpeg_quality': self.settings.jpeg_quality,
        'skipped': [str(p) for p in problems],
        'too_short': too_short,
        'clips_reused_from_cache': sum(r.reused for r in results),
    })
    # Per-frame glosses (a rendered dataset's), by id until the index puts them in record order.
    self._frame_glosses = {spec.id: spec.frame_glosses for specs in kept.values()
                           for spec in specs if spec.frame_glosses}
    return {split: self._generate_examples(split, specs) for split, specs in kept.items() if specs}

  def _generate_examples(self, split: str, specs: list[clips.ClipSpec]):
    for spec in specs:
      clip = clips.read_cached(clips.cache_path(self.cache_dir, split, spec.id), spec,
                               self.settings)
      if clip is None:
        raise RuntimeError(f'{spec.id}: its encoded frames vanished from {self.cache_dir} '
                           'during the build; rerun the build.')
      yield spec.id, {
          'id': spec.id, 'signer': spec.signer, 'gloss': spec.gloss, 'text': spec.text,
          'fps': clip.fps, 'num_frames': len(clip.frames), 'frames': clip.frames,
      }

  # --- 4: write, index frame counts, finalise ---------------------------------------------------
  def _download_and_prepare(self, dl_manager, download_config):
    super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
    # Every field but the frames, in record order: a pipeline plans batch shapes and builds its
    # vocabularies from this index without reading any frame.
    self.info.metadata['index'] = {}
    for split in self.info.splits:
      source = self.as_data_source(split, decoders={'frames': KeepEncoded()})
      records = [source[i] for i in range(len(source))]
      self.info.metadata['index'][split] = {
          key: [r[key].decode() for r in records] for key in ('id', 'signer', 'gloss', 'text')}
      self.info.metadata['index'][split]['num_frames'] = [int(r['num_frames']) for r in records]
      if self._frame_glosses:
        self.info.metadata['index'][split]['frame_glosses'] = self._frame_glosses_of(records)

  def _frame_glosses_of(self, records) -> list[str]:
    """Each record's per-frame glosses (ClipSpec.frame_glosses), checked against its frames."""
    labels = []
    for record in records:
      clip_id, line = record['id'].decode(), self._frame_glosses[record['id'].decode()]
      if len(line.split()) != int(record['num_frames']):
        raise RuntimeError(f'{self.name} {clip_id}: {len(line.split())} frame glosses for '
                           f'{int(record["num_frames"])} frames (the builder\'s frame_glosses '
                           'must label every frame it encodes).')
      labels.append(line)
    return labels

  def download_and_prepare(self, *args, **kwargs):
    super().download_and_prepare(*args, **kwargs)
    shutil.rmtree(self.cache_dir, ignore_errors=True)


DATASETS = ('phoenix2014t', 'csl_daily', 'how2sign', 'openasl', 'synthetic_signs')


def builder_class(name: str) -> type[SignVideoBuilder]:
  """The builder of dataset `name` (importing it registers it with TFDS)."""
  if name not in DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; sltjax builds {", ".join(DATASETS)}.')
  module = importlib.import_module(f'tfds_builders.{name}.{name}_dataset_builder')
  return module.Builder
