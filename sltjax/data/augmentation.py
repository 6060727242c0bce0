"""Spatial augmentation with one random draw per clip, and frame normalisation.

Geometry (random resized crop, rotation, horizontal flip; or resize + centre crop at eval) is one
affine warp per frame; colour (brightness, contrast, saturation, hue, grayscale) is one 3x4
colour matrix per frame. Both are drawn once per clip, so every frame of a clip moves alike.
"""
import dataclasses
import math

import cv2
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as torchvision's grayscale
# RGB <-> YIQ: hue is a rotation of the IQ plane.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                       np.float32)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class ClipTransform:
  """One clip's draw: an affine warp [2, 3] (source -> output pixels) and a colour map
  x' = colour @ x + gray_weight * mean_gray(frame), or colour None to keep colours."""
  warp: np.ndarray
  colour: np.ndarray | None
  gray_weight: float = 0.0


def _box_warp(box: tuple[float, float, float, float], size: int, angle: float = 0.0,
              flip: bool = False) -> np.ndarray:
  """Affine [2, 3] taking the box (x0, y0, w, h) of a frame onto a size x size output, rotated by
  `angle` degrees about the box centre and mirrored if `flip`."""
  x0, y0, w, h = box
  centre = np.array([x0 + w / 2 - 0.5, y0 + h / 2 - 0.5])
  theta = math.radians(angle)
  rotate = np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])
  scale = np.diag([size / w * (-1 if flip else 1), size / h])
  linear = scale @ rotate
  offset = np.array([size / 2 - 0.5, size / 2 - 0.5]) - linear @ centre
  return np.concatenate([linear, offset[:, None]], axis=1).astype(np.float32)


def centre_crop(height: int, width: int, resize: int, size: int) -> ClipTransform:
  """Eval: resize the short side to `resize`, then the centre size x size."""
  side = size * min(height, width) / resize
  box = ((width - side) / 2, (height - side) / 2, side, side)
  return ClipTransform(warp=_box_warp(box, size), colour=None)


EVAL_CROPS = ('centre', 'squash')


def eval_transform(height: int, width: int, config) -> ClipTransform:
  """Eval: config.eval_crop 'centre' (centre_crop) or 'squash' (the whole frame onto
  crop_size x crop_size)."""
  crop = config.get('eval_crop', 'centre')  # absent from configs saved before it existed
  if crop not in EVAL_CROPS:
    raise ValueError(f'data.eval_crop={crop!r}; expected one of {EVAL_CROPS}.')
  if crop == 'squash':
    return ClipTransform(warp=_box_warp((0.0, 0.0, width, height), config.crop_size),
                         colour=None)
  return centre_crop(height, width, config.eval_resize, config.crop_size)


def random_resized_box(height, width, rng, scale, ratio):
  """torchvision's RandomResizedCrop box: an area fraction in `scale` and an aspect ratio
  log-uniform in `ratio`; 10 tries, then the largest centred box of an allowed ratio."""
  area = height * width
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
    if 0 < w <= width and 0 < h <= height:
      return rng.uniform(0, width - w), rng.uniform(0, height - h), w, h
  aspect = min(max(width / height, ratio[0]), ratio[1])
  w, h = (width, width / aspect) if width / height < aspect else (height * aspect, height)
  return (width - w) / 2, (height - h) / 2, w, h


def _colour_matrix(config, rng) -> tuple[np.ndarray | None, float]:
  """(matrix [3, 3], gray weight) of torchvision's ColorJitter order (brightness, contrast,
  saturation, hue) then grayscale, or (None, 0) when colour is left alone. All are linear in the
  pixel except contrast's pull towards the frame's mean gray, which saturation, hue and grayscale
  leave unchanged, hence one matrix plus one gray offset. Hue rotates the YIQ chroma plane."""
  matrix, gray_weight = np.eye(3, dtype=np.float32), 0.0
  jitter = config.colour_jitter_prob and rng.random() < config.colour_jitter_prob
  if jitter:
    brightness = rng.uniform(1 - config.brightness, 1 + config.brightness)
    contrast = rng.uniform(1 - config.contrast, 1 + config.contrast)
    saturation = rng.uniform(1 - config.saturation, 1 + config.saturation)
    hue = rng.uniform(-config.hue, config.hue) * 2 * math.pi
    gray = np.outer(np.ones(3), _LUMA)
    matrix = saturation * np.eye(3) + (1 - saturation) * gray
    rotation = np.array([[1, 0, 0], [0, math.cos(hue), -math.sin(hue)],
                         [0, math.sin(hue), math.cos(hue)]])
    matrix = brightness * contrast * (_YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ) @ matrix
    gray_weight = (1 - contrast) * brightness
  grayscale = config.grayscale_prob and rng.random() < config.grayscale_prob
  if grayscale:
    matrix = np.outer(np.ones(3), _LUMA) @ matrix
  if not (jitter or grayscale):
    return None, 0.0
  return matrix.astype(np.float32), float(gray_weight)


def draw_clip_transform(height: int, width: int, rng: np.random.Generator, config,
                        train: bool) -> ClipTransform:
  """The one draw of augmentation (train) or the centre crop (eval) for an h x w clip.

  config (sltjax.data.video.default_config): crop_size, eval_resize, eval_crop; for training
  random_crop ('resized': RandomResizedCrop with random_crop_scale/ratio; 'fixed': a crop_size
  window of the clip resized to eval_resize, at a random place; 'centre': the centre crop),
  rotation_degrees (in rotation_prob of the clips), hflip_prob, colour_jitter_prob (brightness,
  contrast, saturation, hue), grayscale_prob.
  """
  if not train:
    return eval_transform(height, width, config)
  modes = ('resized', 'fixed', 'centre')
  if config.random_crop not in modes:
    raise ValueError(f'random_crop={config.random_crop!r}; expected one of {modes}.')
  side = config.crop_size * min(height, width) / config.eval_resize
  if config.random_crop == 'resized':
    box = random_resized_box(height, width, rng, config.random_crop_scale,
                             config.random_crop_ratio)
  elif config.random_crop == 'fixed':
    box = (rng.uniform(0, width - side), rng.uniform(0, height - side), side, side)
  else:
    box = ((width - side) / 2, (height - side) / 2, side, side)
  rotate = config.get('rotation_prob', 1.0)  # absent from configs saved before it existed
  angle = (rng.uniform(-config.rotation_degrees, config.rotation_degrees)
           if rotate >= 1.0 or rng.random() < rotate else 0.0)
  flip = bool(config.hflip_prob and rng.random() < config.hflip_prob)
  colour, gray_weight = _colour_matrix(config, rng)
  return ClipTransform(warp=_box_warp(box, config.crop_size, angle, flip), colour=colour,
                       gray_weight=gray_weight)


def apply(frame: np.ndarray, transform: ClipTransform, size: int) -> np.ndarray:
  """[h, w, 3] uint8 -> [size, size, 3] uint8, warped (bilinear, black outside) and coloured."""
  out = cv2.warpAffine(frame, transform.warp, (size, size), flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
  if transform.colour is None:
    return out
  offset = transform.gray_weight * float(out.reshape(-1, 3).mean(0) @ _LUMA)
  matrix = np.concatenate([transform.colour, np.full((3, 1), offset, np.float32)], axis=1)
  return cv2.transform(out, matrix)  # saturates to [0, 255]


NORMALIZATIONS = ('none', 'imagenet', 'minus_one_one', 'zero_one')


def _scale_offset(kind: str) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel (scale, offset) [3] with normalised = pixel * scale - offset (RGB order)."""
  if kind == 'imagenet':
    return 1 / IMAGENET_STD, IMAGENET_MEAN / IMAGENET_STD
  if kind == 'minus_one_one':
    return np.full(3, 1 / 127.5, np.float32), np.ones(3, np.float32)
  return np.full(3, 1 / 255, np.float32), np.zeros(3, np.float32)


def normalize(frames, kind: str, channel_order: str = 'rgb', xp=np, reorder: bool = True):
  """uint8 RGB frames [..., 3] -> the model's input: float32 ImageNet-standardised, in [-1, 1]
  or [0, 1], RGB or BGR; 'none' keeps uint8. `xp` is numpy or jax.numpy.

  reorder=False: the frames are already in `channel_order` (uint8 batches leave the host
  reordered; the device then only scales them)."""
  if kind not in NORMALIZATIONS:
    raise ValueError(f'normalization={kind!r}; expected one of {NORMALIZATIONS}.')
  if channel_order not in ('rgb', 'bgr'):
    raise ValueError(f'channel_order={channel_order!r}; expected "rgb" or "bgr".')
  if channel_order == 'bgr' and reorder:
    frames = frames[..., ::-1]
  if kind == 'none':
    return frames
  scale, offset = (v[::-1] if channel_order == 'bgr' else v for v in _scale_offset(kind))
  if xp is np:  # two passes over the frames, no temporaries
    out = np.multiply(frames, scale.astype(np.float32), dtype=np.float32)
    out -= offset.astype(np.float32)
    return out
  return frames.astype(xp.float32) * xp.asarray(scale, xp.float32) - xp.asarray(offset, xp.float32)
