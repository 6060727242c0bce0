r"""Golden outputs of torchvision's own S3D, for the S3D parity test.

torchvision cannot be installed next to the CPU torch of the test machines, so its outputs were
computed once where it can be (a GPU machine's image, on its CPU in float64):

  python3 tests/s3d_golden.py   # rewrites tests/s3d_golden.npz

The weights and the clip are drawn from fixed seeds by the functions below, so the fixture holds
only torchvision's full state-dict layout (names and shapes), its version and the [2, 4, 832]
features; the test regenerates the same weights from that layout.
"""
import json
import pathlib
import zlib

import numpy as np

GOLDEN_FILE = pathlib.Path(__file__).with_name('s3d_golden.npz')
CLIP_SHAPE = (2, 3, 16, 64, 64)  # [batch, channels, frames, height, width], torch layout


def seeded_weights(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
  """One tensor per state-dict key, drawn from a generator seeded by the key's name: He-scaled
  convolutions, BatchNorm scales and running variances in [0.5, 1.5], small biases and means."""
  weights = {}
  for key, shape in shapes.items():
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    if key.endswith('num_batches_tracked'):
      weights[key] = np.zeros(shape, np.int64)
    elif key.endswith(('running_var', '.weight')) and len(shape) == 1:
      weights[key] = rng.uniform(0.5, 1.5, shape)
    elif len(shape) == 1:  # biases, running means
      weights[key] = rng.normal(0.0, 0.1, shape)
    else:
      weights[key] = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
  return {k: v if v.dtype == np.int64 else v.astype(np.float32) for k, v in weights.items()}


def seeded_clip() -> np.ndarray:
  """[2, 3, 16, 64, 64] float32 standard normal."""
  return np.random.default_rng(1).standard_normal(CLIP_SHAPE).astype(np.float32)


def load_golden() -> dict:
  """{'shapes': {key: shape} of torchvision's s3d(), 'features' [2, 4, 832], 'torchvision'}."""
  with np.load(GOLDEN_FILE) as data:
    return {'shapes': {k: tuple(v) for k, v in json.loads(str(data['shapes'])).items()},
            'features': data['features'], 'torchvision': str(data['torchvision'])}


def main():
  import torch  # pylint: disable=import-outside-toplevel
  import torchvision  # pylint: disable=import-outside-toplevel

  model = torchvision.models.video.s3d(weights=None).eval()
  shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
  model.load_state_dict({k: torch.from_numpy(v) for k, v in seeded_weights(shapes).items()})
  model = model.double()
  with torch.no_grad():
    features = model.features[:13](torch.from_numpy(seeded_clip()).double())
  features = features.mean(dim=(3, 4)).transpose(1, 2).float().numpy()  # [2, T/4, 832]
  np.savez_compressed(GOLDEN_FILE, shapes=json.dumps(shapes), features=features,
           torchvision=torchvision.__version__)
  print(f'{GOLDEN_FILE}: features {features.shape}, |mean| {np.abs(features).mean():.4f}, '
        f'torchvision {torchvision.__version__}, {len(shapes)} state-dict entries')


if __name__ == '__main__':
  main()
