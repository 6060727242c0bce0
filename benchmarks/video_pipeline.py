r"""Video input throughput: sltjax's build + grain pipeline vs the PyTorch releases' PNG loading.

  .venv/bin/python benchmarks/video_pipeline.py [--clips=48] [--workdir=/tmp/sltjax_video_bench]

PHOENIX-2014T-shaped data: 260x210 frames (the two real PHOENIX frames of ../shared/data/videos,
shifted by a few pixels per frame, so PNG and JPEG sizes are those of real frames) and clip
lengths drawn from the real frame counts of ../shared/data/phoenix2014t/train.jsonl. The clips are
written as a PHOENIX release (one PNG per frame), then:
  * build: `sltjax.data.build` on them (all cores): frames/s and bytes on disk per frame;
  * baseline (one core): what the PyTorch releases do per clip: PIL opens every PNG of the frame
    folder, Resize(224) + CenterCrop(224), ToTensor, Normalize (torch, 1 thread);
  * sltjax (one core, in-process): the grain pipeline on the built records, decode + sample +
    crop to 224: MMTLB eval (all frames, centre crop, uint8 out and float normalised out) and
    MMTLB train (random length, RandomResizedCrop, colour jitter).
Prints frames/s per core of each and the ratio against the baseline, measured in the same run.
"""
import argparse
import json
import os
import pathlib
import shutil
import time

import cv2
import numpy as np
import torch
from absl import flags
from PIL import Image

from sltjax.data import batching, build, video
from sltjax.data.tokenizers import GlossVocabulary, WordTokenizer
from sltjax.experiments import mmtlb

SHARED = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data'


def clip_lengths(num_clips: int, seed: int) -> list[int]:
  """Frame counts drawn from PHOENIX-2014T train (or its mean/std if the corpus is absent)."""
  rng = np.random.default_rng(seed)
  jsonl = SHARED / 'phoenix2014t' / 'train.jsonl'
  if jsonl.exists():
    counts = [json.loads(l)['num_frames'] for l in jsonl.read_text().splitlines()]
    print(f'clip lengths from {jsonl}: mean {np.mean(counts):.1f}, median {np.median(counts)}')
    return [int(c) for c in rng.choice(counts, num_clips)]
  print('PHOENIX corpus absent: clip lengths ~ normal(116, 42), at least 16')
  return [max(16, int(v)) for v in rng.normal(116, 42, num_clips)]


def base_frames() -> list[np.ndarray]:
  folder = SHARED / 'videos' / 'phoenix_frames'
  if folder.exists():
    return [np.asarray(Image.open(p).convert('RGB')) for p in sorted(folder.glob('*.png'))]
  y, x = np.mgrid[0:260, 0:210]
  return [np.stack([(x * 1.2) % 255, (y * 0.9) % 255, (x + y) % 255], -1).astype(np.uint8)]


def write_release(root: pathlib.Path, lengths: list[int], seed: int) -> int:
  """A PHOENIX release of len(lengths) train clips (dev and test empty); returns #frames."""
  rng = np.random.default_rng(seed)
  bases = base_frames()
  rows, total = ['name|video|start|end|speaker|orth|translation'], 0
  for i, n in enumerate(lengths):
    name = f'clip{i:04d}'
    folder = root / 'features' / 'fullFrame-210x260px' / 'train' / name
    folder.mkdir(parents=True)
    for t in range(n):
      shift = rng.integers(-3, 4, 2)
      frame = np.roll(bases[(i + t // 20) % len(bases)], tuple(shift), axis=(0, 1))
      Image.fromarray(frame).save(folder / f'images{t + 1:04d}.png')
    rows.append(f'{name}|{name}/1/*.png|-1|-1|Signer01|REGEN SONNE|regen und sonne')
    total += n
  annotations = root / 'annotations' / 'manual'
  annotations.mkdir(parents=True)
  (annotations / 'PHOENIX-2014-T.train.corpus.csv').write_text('\n'.join(rows) + '\n')
  for split in ('dev', 'test'):  # empty splits
    (annotations / f'PHOENIX-2014-T.{split}.corpus.csv').write_text(rows[0] + '\n')
  return total


def baseline_frames_per_second(root: pathlib.Path) -> float:
  """PyTorch-release loading on one core: PIL per PNG, Resize+CenterCrop 224, ToTensor, Normalize."""
  torch.set_num_threads(1)
  mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
  std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
  folders = sorted((root / 'features' / 'fullFrame-210x260px' / 'train').iterdir())
  frames, start = 0, time.perf_counter()
  for folder in folders:
    clip = []
    for path in sorted(folder.glob('*.png')):
      image = Image.open(path).convert('RGB')
      w, h = image.size
      image = image.resize((224, round(h * 224 / w)), Image.BILINEAR)  # Resize(224): short side
      top = (image.size[1] - 224) // 2
      image = image.crop((0, top, 224, top + 224))  # CenterCrop(224)
      x = torch.from_numpy(np.asarray(image)).permute(2, 0, 1).float().div(255)  # ToTensor
      clip.append((x - mean) / std)  # Normalize
    torch.stack(clip)
    frames += len(clip)
  return frames / (time.perf_counter() - start)


def pipeline_frames_per_second(data_dir: pathlib.Path, train: bool, normalization: str) -> float:
  """sltjax's grain pipeline in this process (one core): frames delivered per second."""
  cv2.setNumThreads(1)
  config = video.default_config()
  config.update(name='phoenix2014t', data_dir=str(data_dir), crop_size=224, eval_resize=224,
                frame_buckets=tuple(range(32, 401, 32)))
  config.update(mmtlb.DATA_RECIPE)
  config.normalization = normalization
  split = video.open_split(config, 'train')
  loader = video.VideoBatchLoader(split, config, WordTokenizer.build(split.texts, ['de_DE']),
                                  GlossVocabulary.build(split.glosses), 'de_DE', train)
  plan = batching.eval_plan(len(split), 1)  # batch 1: no padding frames counted
  frames, start = 0, time.perf_counter()
  for batch in batching.make_dataset(plan, loader, 0, seed=0):
    frames += int(batch['frame_mask'].sum())
  return frames / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--clips', type=int, default=48)
  parser.add_argument('--workdir', default='/tmp/sltjax_video_bench')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()
  workdir = pathlib.Path(args.workdir)
  shutil.rmtree(workdir, ignore_errors=True)
  release = workdir / 'PHOENIX-2014-T'
  total = write_release(release, clip_lengths(args.clips, args.seed), args.seed)
  print(f'{args.clips} clips, {total} frames of 260x210 written as PNG')

  summary = build.build('phoenix2014t', workdir / 'data', str(release),
                        num_workers=os.cpu_count())
  train = summary['splits']['train']
  png_bytes = sum(p.stat().st_size for p in release.rglob('*.png')) / total
  print(f"build ({os.cpu_count()} workers): {summary['frames_per_second']:.0f} frames/s; "
        f"{train['bytes_per_frame']:.0f} B/frame on disk (JPEG q{summary['jpeg_quality']}) vs "
        f'{png_bytes:.0f} B/frame as PNG')

  results = {}
  for repeat in range(2):  # alternate sides; the shared machine drifts
    for name, measure in (
        ('baseline: PIL per PNG + torchvision-style transforms', lambda: baseline_frames_per_second(release)),
        ('sltjax eval (all frames, centre crop, uint8)', lambda: pipeline_frames_per_second(workdir / 'data', False, 'none')),
        ('sltjax eval, normalised float32 on host', lambda: pipeline_frames_per_second(workdir / 'data', False, 'minus_one_one')),
        ('sltjax MMTLB train (random length, crop, jitter), uint8', lambda: pipeline_frames_per_second(workdir / 'data', True, 'none')),
    ):
      results.setdefault(name, []).append(measure())
  base = max(results[next(iter(results))])
  print(f"\n{'frames/s per core (best of 2)':<60} {'frames/s':>9} {'vs baseline':>12}")
  for name, values in results.items():
    print(f'{name:<60} {max(values):9.0f} {max(values) / base:11.2f}x')


if __name__ == '__main__':
  main()
