"""What a dataset builder produces per example: a clip spec, its JPEG encoding, and its problems.

Kept free of TensorFlow Datasets so that build worker processes start quickly. A builder lists
`ClipSpec`s (metadata + a `source` that can load the frames); `encode_clip` loads, resizes and
JPEG-encodes one clip into a cache file, or returns the problem that stopped it.
"""
import dataclasses
import hashlib
import os
import re
from typing import Protocol

import numpy as np

from sltjax.data import frames as frame_lib
from sltjax.data.video_files import EmptyVideoError, VideoError, read_video


NO_SIGN = '-'  # in ClipSpec.frame_glosses: a frame between signs


class ClipSource(Protocol):
  """Where a clip's frames come from."""

  def load(self) -> tuple[list[np.ndarray], float]:
    """The frames [h, w, 3] uint8 and the frame rate; raises FrameError/VideoError."""

  def fingerprint(self) -> str:
    """Changes whenever the source files change (so a cached encoding is redone)."""


def _file_stamp(path: str) -> str:
  stat = os.stat(path)
  return f'{path}:{stat.st_size}:{stat.st_mtime_ns}'


@dataclasses.dataclass(frozen=True)
class FrameFolder:
  """A clip stored as one image file per frame (PHOENIX PNGs, CSL-Daily JPEGs)."""
  paths: tuple[str, ...]
  fps: float

  def load(self):
    return [frame_lib.read_image_file(p) for p in self.paths], self.fps

  def fingerprint(self):
    return hashlib.sha1('\n'.join(map(_file_stamp, self.paths)).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class VideoFile:
  """A clip stored as a video file, optionally the [start, end) seconds of it."""
  path: str
  start: float | None = None
  end: float | None = None

  def load(self):
    return read_video(self.path, self.start, self.end)

  def fingerprint(self):
    return f'{_file_stamp(self.path)}:{self.start}:{self.end}'


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """One example as annotated: its id and text, and where its frames are."""
  id: str
  source: ClipSource
  gloss: str = ''
  text: str = ''
  signer: str = ''
  # Per frame, space-separated: the gloss being signed or NO_SIGN; '' where the release does not
  # say (only a rendered dataset knows).
  frame_glosses: str = ''


@dataclasses.dataclass(frozen=True)
class Problem:
  """A reason an example cannot be built, with the file or annotation row that shows it."""
  split: str
  example: str  # the example id, or '' when a row cannot even be parsed
  where: str  # a file, or 'file:line'
  message: str

  def __str__(self):
    example = f' {self.example}' if self.example else ''
    return f'[{self.split}]{example} ({self.where}): {self.message}'


@dataclasses.dataclass(frozen=True)
class EncodingSettings:
  frame_size: frame_lib.FrameSize
  jpeg_quality: int


@dataclasses.dataclass(frozen=True)
class EncodedClip:
  """A clip's JPEG frames, as cached between the encoding pass and the record writer."""
  frames: list[bytes]
  fps: float


def cache_path(cache_dir: str, split: str, clip_id: str) -> str:
  """A file name per (split, id) that is safe whatever characters the id has."""
  readable = re.sub(r'[^A-Za-z0-9_.-]', '_', clip_id)[:80]
  digest = hashlib.sha1(clip_id.encode()).hexdigest()[:12]
  return os.path.join(cache_dir, split, f'{readable}-{digest}.npz')


def _cache_key(spec: ClipSpec, settings: EncodingSettings) -> str:
  return f'{spec.source.fingerprint()}|{settings.frame_size}|q{settings.jpeg_quality}'


def read_cached(path: str, spec: ClipSpec, settings: EncodingSettings) -> EncodedClip | None:
  """The cached encoding of `spec`, or None if absent or made from other files/settings."""
  if not os.path.exists(path):
    return None
  with np.load(path, allow_pickle=False) as cached:
    if str(cached['key']) != _cache_key(spec, settings):
      return None
    data, offsets = cached['jpeg'].tobytes(), cached['offsets']
    frames = [data[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    return EncodedClip(frames=frames, fps=float(cached['fps']))


def _write_cached(path: str, spec: ClipSpec, settings: EncodingSettings, clip: EncodedClip):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  offsets = np.cumsum([0] + [len(f) for f in clip.frames])
  tmp = f'{path}.tmp{os.getpid()}.npz'
  np.savez(tmp, jpeg=np.frombuffer(b''.join(clip.frames), np.uint8), offsets=offsets,
           fps=clip.fps, key=_cache_key(spec, settings))
  os.replace(tmp, path)  # a clip is cached whole or not at all


@dataclasses.dataclass(frozen=True)
class EncodeResult:
  split: str
  spec: ClipSpec
  num_frames: int = 0
  problem: Problem | None = None
  reused: bool = False  # found in the cache of an earlier, interrupted build
  empty: bool = False  # the source is readable but holds no frame (`problem` says so)


def _where(spec: ClipSpec) -> str:
  source = spec.source
  if isinstance(source, FrameFolder):
    return os.path.dirname(source.paths[0]) if source.paths else '?'
  return getattr(source, 'path', type(source).__name__)


def encode_clip(task: tuple[str, ClipSpec, EncodingSettings, str]) -> EncodeResult:
  """Loads, resizes and JPEG-encodes one clip into its cache file (reused if up to date)."""
  split, spec, settings, cache_dir = task
  path = cache_path(cache_dir, split, spec.id)
  clip = read_cached(path, spec, settings)
  reused = clip is not None
  if clip is None:
    try:
      frames, fps = spec.source.load()
    except (frame_lib.FrameError, VideoError, OSError) as e:
      message = str(e) if isinstance(e, (frame_lib.FrameError, VideoError)) else repr(e)
      return EncodeResult(split, spec, problem=Problem(split, spec.id, _where(spec), message),
                          empty=isinstance(e, EmptyVideoError))
    if not frames:
      return EncodeResult(split, spec, empty=True, problem=Problem(split, spec.id, _where(spec),
                                                                   'the clip has no frames.'))
    clip = EncodedClip(
        frames=[frame_lib.encode_jpeg(frame_lib.resize(f, settings.frame_size),
                                      settings.jpeg_quality) for f in frames], fps=fps)
    _write_cached(path, spec, settings, clip)
  return EncodeResult(split, spec, num_frames=len(clip.frames), reused=reused)
