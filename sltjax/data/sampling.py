"""Temporal sampling: which frame indices of a T-frame clip a model sees.

One function per published recipe; each returns sorted int indices [n] into the clip's frames
(repeats allowed) and uses `rng` only when `train` is true, so evaluation is deterministic.
"""
import numpy as np


def all_frames(num_frames: int, rng: np.random.Generator, train: bool) -> np.ndarray:
  del rng, train
  return np.arange(num_frames)


def mmtlb(num_frames: int, rng: np.random.Generator, train: bool, max_frames: int = 400):
  """MMTLB: train on a random length in [0.5T, min(max_frames, 1.5T)] rounded to a multiple of 4
  (dropping or duplicating random frames, order kept); test on all frames (the centre
  max_frames if longer)."""
  if not train:
    start = max(0, (num_frames - max_frames) // 2)
    return np.arange(start, min(num_frames, start + max_frames))
  low, high = 0.5 * num_frames, min(max_frames, 1.5 * num_frames)
  length = max(4, int(round(rng.uniform(low, max(low, high)) / 4)) * 4)
  if length <= num_frames:
    return np.sort(rng.choice(num_frames, length, replace=False))
  extra = rng.choice(num_frames, length - num_frames, replace=True)
  return np.sort(np.concatenate([np.arange(num_frames), extra]))


def c2rl(num_frames: int, rng: np.random.Generator, train: bool, keep: float = 0.25):
  """C2RL: split the clip into round(keep * T) consecutive segments; one frame per segment,
  random at train, the first at test."""
  segments = np.array_split(np.arange(num_frames), max(1, int(round(keep * num_frames))))
  if train:
    return np.array([rng.choice(s) for s in segments])
  return np.array([s[0] for s in segments])


def sign2gpt(num_frames: int, rng: np.random.Generator, train: bool, stride: int = 2,
             max_frames: int = 256):
  """Sign2GPT: every `stride`-th frame from a random start offset at train (0 at test); a clip
  longer than max_frames keeps a random (train) or the centre (test) window of that many."""
  offset = int(rng.integers(stride)) if train and num_frames > stride else 0
  indices = np.arange(offset, num_frames, stride)
  if len(indices) > max_frames:
    start = (int(rng.integers(len(indices) - max_frames + 1)) if train
             else (len(indices) - max_frames) // 2)
    indices = indices[start:start + max_frames]
  return indices


STRATEGIES = {'all': all_frames, 'mmtlb': mmtlb, 'c2rl': c2rl, 'sign2gpt': sign2gpt}


def sample_frames(strategy: str, num_frames: int, rng: np.random.Generator, train: bool,
                  max_frames: int = 0) -> np.ndarray:
  """Indices [n] of the frames to use, then at most `max_frames` of them (evenly spaced)."""
  if strategy not in STRATEGIES:
    raise ValueError(f'data.sampling={strategy!r}; expected one of {sorted(STRATEGIES)}.')
  indices = STRATEGIES[strategy](num_frames, rng, train)
  if max_frames and len(indices) > max_frames:
    indices = indices[np.linspace(0, len(indices) - 1, max_frames).round().astype(int)]
  return indices
