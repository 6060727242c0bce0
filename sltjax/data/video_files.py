"""Decoding video files (mp4, webm, mov, ...) into RGB frames with PyAV."""
import av
import numpy as np


class VideoError(ValueError):
  """A video that cannot be decoded, has no frames, or lacks the requested time range."""


class EmptyVideoError(VideoError):
  """A readable file that holds no video frame (in the requested time range), as a cut made
  past the end of a video gives."""


def _upright(frame: 'av.VideoFrame') -> np.ndarray:
  """[h, w, 3] uint8 of a decoded frame, turned by the rotation the container asks for."""
  array = frame.to_ndarray(format='rgb24')
  quarter_turns = round(getattr(frame, 'rotation', 0) or 0) // 90
  return np.ascontiguousarray(np.rot90(array, k=quarter_turns)) if quarter_turns % 4 else array


def read_video(path: str, start: float | None = None,
               end: float | None = None) -> tuple[list[np.ndarray], float]:
  """Frames [h, w, 3] uint8 of `path` (or of its [start, end) seconds) and the frame rate.

  Raises VideoError naming the file when it is not a decodable video, has no frames, or when
  start/end lie outside it.
  """
  if start is not None and end is not None and end <= start:
    raise VideoError(f'{path}: clip end {end:.3f}s is not after its start {start:.3f}s.')
  try:
    container = av.open(path)
  except (av.error.FFmpegError, OSError) as e:
    raise VideoError(f'{path}: not a readable video ({e}).') from e
  with container:
    if not container.streams.video:
      raise EmptyVideoError(f'{path}: the file has no video stream.')
    stream = container.streams.video[0]
    stream.thread_type = 'AUTO'
    fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
    duration = (float(container.duration) / av.time_base) if container.duration else None
    if duration is not None and start is not None and start >= duration:
      raise VideoError(f'{path}: clip start {start:.3f}s lies outside the video '
                       f'({duration:.3f}s long).')
    if duration is not None and end is not None and end > duration + 1.0 / fps:
      raise VideoError(f'{path}: clip end {end:.3f}s lies outside the video '
                       f'({duration:.3f}s long).')
    frames = []
    try:
      if start:
        container.seek(int(start / stream.time_base), stream=stream, backward=True)
      for frame in container.decode(stream):
        time = frame.time if frame.time is not None else len(frames) / fps
        if start is not None and time < start - 0.5 / fps:
          continue
        if end is not None and time >= end - 0.5 / fps:
          break
        frames.append(_upright(frame))
    except (av.error.FFmpegError, OSError) as e:
      raise VideoError(f'{path}: decoding failed after {len(frames)} frames ({e}).') from e
  if not frames:
    where = '' if start is None and end is None else f' between {start}s and {end}s'
    raise EmptyVideoError(f'{path}: no frames could be decoded{where}.')
  return frames, fps
