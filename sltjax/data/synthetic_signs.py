"""Procedurally rendered sign language: the embedded default dataset (no download needed).

A sentence comes from a small weather-report grammar whose gloss order differs from the spoken
sentence (the time and region come first in glosses, STRONG/NOT after the sign they modify, and
the spoken side adds function words and context-dependent words: "heavy rain" but "strong wind").
Each gloss is a distinct, learnable motion of a hand-like shape: a trajectory at a body location,
a hand shape and a marker colour, some signs two-handed. Each video varies the signer's
appearance, the background, the signing speed, the position and the pixel noise. Everything is
deterministic from the seed.
"""
import dataclasses

import numpy as np

from sltjax.data import clips

TIMES = {'TODAY': 'today', 'TOMORROW': 'tomorrow', 'NIGHT': 'tonight'}
REGIONS = {'NORTH': 'in the north', 'SOUTH': 'in the south', 'EAST': 'in the east',
           'WEST': 'in the west', 'COAST': 'on the coast', 'MOUNTAIN': 'in the mountains'}
WEATHER = {'RAIN': ('rain', 'heavy'), 'SNOW': ('snow', 'heavy'), 'SUN': ('sunshine', 'bright'),
           'WIND': ('wind', 'strong'), 'FOG': ('fog', 'dense')}
GLOSSES = (*TIMES, *REGIONS, *WEATHER, 'STRONG', 'NOT')
FPS = 25.0
RENDER_VERSION = 3  # bump when the rendering changes, so cached encodings are redone


def sample_sentence(rng: np.random.Generator) -> tuple[list[str], str]:
  """A random (glosses, spoken sentence) pair of the grammar."""
  time = rng.choice(list(TIMES)) if rng.random() < 0.7 else None
  region = rng.choice(list(REGIONS))
  weather = rng.choice(list(WEATHER))
  noun, adjective = WEATHER[weather]
  glosses = ([time] if time else []) + [region, weather]
  words = [TIMES[time]] if time else []
  if rng.random() < 0.25:
    glosses.append('NOT')
    words += ['no', noun, REGIONS[region]]
  elif rng.random() < 0.4:
    glosses.append('STRONG')
    words += ['there will be', adjective, noun, REGIONS[region]]
  else:
    words += ['there will be', noun, REGIONS[region]]
  return [str(g) for g in glosses], ' '.join(words)


# --- how each gloss is signed ------------------------------------------------------------------
def _trajectory(kind: int, phase: np.ndarray) -> np.ndarray:
  """Offsets [n, 2] (x, y) in body units of trajectory `kind` at phases in [0, 1]."""
  angle = 2 * np.pi * phase
  shapes = [
      np.stack([np.cos(angle), np.sin(angle)], -1),  # circle
      np.stack([np.cos(-angle), np.sin(-angle)], -1),  # circle, the other way
      np.stack([2 * phase - 1, 0 * phase], -1),  # sideways stroke
      np.stack([0 * phase, 2 * phase - 1], -1),  # downward stroke
      np.stack([2 * phase - 1, 1 - 2 * phase], -1),  # diagonal
      np.stack([2 * phase - 1, np.sign(np.sin(3 * angle)) * 0.6], -1),  # zigzag
      np.stack([np.sin(angle), np.sin(2 * angle) / 2], -1),  # figure eight
      np.stack([0.3 * np.cos(2 * angle), -np.abs(np.sin(2 * angle))], -1),  # two taps
  ]
  return shapes[kind]


@dataclasses.dataclass(frozen=True)
class SignStyle:
  trajectory: int
  hand_shape: int  # 0 disc, 1 square, 2 diamond
  colour: tuple[int, int, int]
  location: tuple[float, float]  # (x, y) centre, image fractions
  two_handed: bool


_COLOURS = ((230, 40, 40), (40, 200, 60), (40, 90, 230), (240, 200, 30), (200, 50, 220),
            (30, 210, 220))
_LOCATIONS = ((0.62, 0.28), (0.6, 0.55), (0.72, 0.45))


def sign_style(gloss: str) -> SignStyle:
  """The fixed appearance of one gloss: no two glosses share both hand shape and colour, so a
  single frame in the middle of a sign identifies it; the motion and location add redundancy."""
  i = GLOSSES.index(gloss)
  return SignStyle(trajectory=i % 8, hand_shape=i // 6 % 3, colour=_COLOURS[i % 6],
                   location=_LOCATIONS[i % 3], two_handed=i % 4 == 0)


# --- rendering -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Appearance:
  """What varies per video: the signer, the background, speed, position and noise."""
  skin: np.ndarray  # [3]
  clothes: np.ndarray  # [3]
  background: np.ndarray  # [2, 3] top and bottom colours of a vertical gradient
  offset: np.ndarray  # [2] body shift, image fractions
  scale: float
  hand_radius: float
  frames_per_sign: int
  noise: float


def signer_appearance(signer: int) -> tuple[np.ndarray, np.ndarray]:
  """(skin, clothes) colours of signer `signer` (a fixed identity): dark, muted clothes, as
  interpreters wear so that the hands stand out."""
  rng = np.random.default_rng([7, signer])
  skin = np.array([(224, 172, 105), (198, 134, 66), (141, 85, 36), (241, 194, 125),
                   (255, 219, 172), (110, 70, 40)][signer % 6], np.float32)
  return skin, (rng.uniform(20, 70) + rng.uniform(-12, 12, 3)).astype(np.float32)


def _muted_colours(rng: np.random.Generator, n: int) -> np.ndarray:
  """[n, 3] greyish colours (a grey level with a slight tint), like studio backgrounds."""
  return (rng.uniform(70, 210, (n, 1)) + rng.uniform(-20, 20, (n, 3))).astype(np.float32)


def random_appearance(rng: np.random.Generator, signer: int) -> Appearance:
  skin, clothes = signer_appearance(signer)
  return Appearance(
      skin=skin, clothes=clothes, background=_muted_colours(rng, 2),
      offset=rng.uniform(-0.06, 0.06, 2), scale=float(rng.uniform(0.9, 1.1)),
      hand_radius=float(rng.uniform(0.08, 0.1)), frames_per_sign=int(rng.integers(6, 11)),
      noise=float(rng.uniform(2, 8)))


def _hand_path(glosses: list[str], look: Appearance, rng) -> list[tuple[np.ndarray, np.ndarray,
                                                                        SignStyle | None]]:
  """Per frame: dominant and other hand centres [2] (image fractions) and the active sign."""
  rest_dominant, rest_other = np.array([0.6, 0.9]), np.array([0.4, 0.9])
  frames, previous = [], rest_dominant
  for _ in range(int(rng.integers(2, 5))):
    frames.append((rest_dominant, rest_other, None))
  for gloss in glosses:
    style = sign_style(gloss)
    n = max(4, look.frames_per_sign + int(rng.integers(-1, 2)))
    path = np.array(style.location) + 0.12 * look.scale * _trajectory(style.trajectory,
                                                                      np.linspace(0, 1, n))
    for t in (1 / 3, 2 / 3):  # moving from the previous sign
      frames.append((previous + t * (path[0] - previous), rest_other, None))
    for point in path:
      other = np.array([1 - point[0], point[1]]) if style.two_handed else rest_other
      frames.append((point, other, style))
    previous = path[-1]
  for _ in range(int(rng.integers(2, 5))):
    frames.append((rest_dominant, rest_other, None))
  return frames


def render(glosses: list[str], seed: int, signer: int, size: int) -> list[np.ndarray]:
  """Frames [size, size, 3] uint8 of one video signing `glosses`."""
  return render_labelled(glosses, seed, signer, size)[0]


def _signing_plan(glosses: list[str], seed: int, signer: int):
  """(rng, appearance, per-frame hand path) of one video; the rng then draws its pixel noise."""
  rng = np.random.default_rng(seed)
  look = random_appearance(rng, signer)
  return rng, look, _hand_path(glosses, look, rng)


def frame_glosses(glosses: list[str], seed: int, signer: int) -> list[str | None]:
  """Per frame of the video `render` makes, the gloss being signed or None between signs
  (without rendering a pixel)."""
  styles = {sign_style(g): g for g in glosses}
  return [styles.get(style) for _, _, style in _signing_plan(glosses, seed, signer)[2]]


def render_labelled(glosses: list[str], seed: int, signer: int,
                    size: int) -> tuple[list[np.ndarray], list[str | None]]:
  """(frames [size, size, 3] uint8, per frame the gloss being signed or None between signs)."""
  rng, look, path = _signing_plan(glosses, seed, signer)
  grid = (np.arange(size, dtype=np.float32) + 0.5) / size
  y, x = np.meshgrid(grid, grid, indexing='ij')  # [size, size]
  base = look.background[0] + (look.background[1] - look.background[0]) * y[..., None]
  cx, cy = 0.5 + look.offset[0], look.offset[1]
  head = (x - cx) ** 2 + (y - cy - 0.25) ** 2 < (0.1 * look.scale) ** 2
  torso = (np.abs(x - cx) < 0.2 * look.scale) & (y > cy + 0.4)
  base[torso] = look.clothes
  base[head] = look.skin
  out, labels = [], []
  styles = {sign_style(g): g for g in glosses}
  for dominant, other, style in path:
    labels.append(styles.get(style))
    frame = base.copy()
    for centre, signing in ((other, style is not None and style.two_handed),
                            (dominant, style is not None)):
      shape, colour = (style.hand_shape, style.colour) if signing else (0, look.skin)
      dx, dy = x - centre[0] - look.offset[0], y - centre[1] - look.offset[1]
      r = look.hand_radius * look.scale
      mask = [dx ** 2 + dy ** 2 < r ** 2, np.maximum(abs(dx), abs(dy)) < 0.85 * r,
              abs(dx) + abs(dy) < 1.2 * r][shape]
      frame[mask] = colour
    frame += rng.normal(0, look.noise, frame.shape).astype(np.float32)
    out.append(np.clip(frame, 0, 255).astype(np.uint8))
  return out, labels


@dataclasses.dataclass(frozen=True)
class RenderedSentence:
  """A ClipSource (sltjax.data.clips) that renders one synthetic video."""
  glosses: tuple[str, ...]
  seed: int
  signer: int
  size: int

  def load(self):
    return render(list(self.glosses), self.seed, self.signer, self.size), FPS

  def frame_glosses(self) -> str:
    """Per frame, space-separated, the gloss being signed or clips.NO_SIGN (ClipSpec)."""
    return ' '.join(g or clips.NO_SIGN for g in frame_glosses(list(self.glosses), self.seed,
                                                        self.signer))

  def fingerprint(self):
    return f'synthetic-v{RENDER_VERSION}:{self.glosses}:{self.seed}:{self.signer}:{self.size}'
