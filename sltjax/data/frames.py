"""Frame codecs and resizing shared by the dataset builders and the input pipeline.

Frames are uint8 RGB arrays [height, width, 3]. Builders store them as JPEG bytes; the pipeline
decodes only the frames it samples.
"""
import dataclasses
import io

import numpy as np
from PIL import Image, UnidentifiedImageError


class FrameError(ValueError):
  """A frame that cannot be read or decoded."""


@dataclasses.dataclass(frozen=True)
class FrameSize:
  """How builders resize frames: exact `height x width`, or a short side keeping the aspect ratio.

  Parsed from '260x210' (exact) or '256' (short side); 'native' keeps frames as they are.
  """
  height: int = 0
  width: int = 0
  short_side: int = 0

  @classmethod
  def parse(cls, text: str) -> 'FrameSize':
    text = str(text).strip().lower()
    try:
      if text == 'native':
        return cls()
      if 'x' in text:
        height, width = (int(v) for v in text.split('x'))
        if height > 0 and width > 0:
          return cls(height=height, width=width)
      elif int(text) > 0:
        return cls(short_side=int(text))
    except ValueError:
      pass
    raise ValueError(f'frame size {text!r}: expected HEIGHTxWIDTH (e.g. 260x210), a short side '
                     '(e.g. 256) or "native".')

  def __str__(self) -> str:
    if self.height:
      return f'{self.height}x{self.width}'
    return str(self.short_side) if self.short_side else 'native'

  def output_hw(self, height: int, width: int) -> tuple[int, int]:
    """The (height, width) a frame of (height, width) is resized to."""
    if self.height:
      return self.height, self.width
    if self.short_side:
      scale = self.short_side / min(height, width)
      return max(1, round(height * scale)), max(1, round(width * scale))
    return height, width


def resize(frame: np.ndarray, size: FrameSize) -> np.ndarray:
  """[h, w, 3] uint8 -> [H, W, 3] uint8 (area-averaging when shrinking, bilinear otherwise)."""
  out_h, out_w = size.output_hw(*frame.shape[:2])
  if (out_h, out_w) == frame.shape[:2]:
    return frame
  shrink = out_h < frame.shape[0]
  image = Image.fromarray(frame).resize((out_w, out_h), Image.BOX if shrink else Image.BILINEAR)
  return np.asarray(image)


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
  """[h, w, 3] uint8 -> JPEG bytes (4:2:0 chroma, as video codecs store colour)."""
  out = io.BytesIO()
  Image.fromarray(frame).save(out, format='JPEG', quality=quality)
  return out.getvalue()


def _open(source, name: str) -> Image.Image:
  try:
    image = Image.open(source)
    image.load()  # decodes now, so truncated files fail here and not later
  except (UnidentifiedImageError, OSError, SyntaxError) as e:
    raise FrameError(f'{name}: cannot decode the image ({e}).') from e
  return image.convert('RGB') if image.mode != 'RGB' else image


def decode_image_bytes(data: bytes, name: str = 'frame') -> np.ndarray:
  """JPEG/PNG bytes -> [h, w, 3] uint8."""
  return np.asarray(_open(io.BytesIO(data), name))


def read_image_file(path: str) -> np.ndarray:
  """An image file (PNG, JPEG, ...) -> [h, w, 3] uint8; FrameError names the file if unreadable."""
  return np.asarray(_open(path, path))
