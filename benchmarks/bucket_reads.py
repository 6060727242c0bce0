r"""What a pod reads from its bucket while training on PHOENIX-2014T: bytes per step and per epoch.

  .venv/bin/python benchmarks/bucket_reads.py

A training step reads its global batch of records whole (every JPEG frame of each video: the
temporal sampling happens after the read), so per step it reads batch_size x the mean record
size, and each evaluation reads the dev split once. The mean record is the mean frame count of
../shared/data/phoenix2014t/train.jsonl (the real videos) x the bytes of one frame as the builder
stores it: the real PHOENIX frames of ../shared/data/videos/phoenix_frames resized and
JPEG-encoded with the builder's own functions at PHOENIX's default frame size and quality.
Prints one row per default video recipe (the configs' variants with dataset=phoenix2014t).
Gloss2Text reads its text files once; checkpoints are written, not read, except on resume.
"""
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/ of this checkout
from configs import c2rl, mmtlb, sign2gpt  # pylint: disable=wrong-import-position
from sltjax.data import frames  # pylint: disable=wrong-import-position
from tfds_builders.phoenix2014t.phoenix2014t_dataset_builder import Builder  # pylint: disable=wrong-import-position

SHARED = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data'
RECIPES = (('mmtlb', mmtlb, 'sign2gloss'), ('mmtlb', mmtlb, 'sign2text'),
           ('c2rl', c2rl, 'pretrain'), ('c2rl', c2rl, 'slt'), ('c2rl', c2rl, 'slret'),
           ('sign2gpt', sign2gpt, 'pseudo_gloss'), ('sign2gpt', sign2gpt, 'translation'))


def frame_bytes() -> float:
  """Mean bytes of one stored PHOENIX frame (JPEG at the builder's default size and quality)."""
  size = frames.FrameSize.parse(Builder.DEFAULT_FRAME_SIZE)
  return float(np.mean([
      len(frames.encode_jpeg(frames.resize(frames.read_image_file(str(path)), size),
                             Builder.DEFAULT_JPEG_QUALITY))
      for path in sorted((SHARED / 'videos' / 'phoenix_frames').glob('*.png'))]))


def frame_counts(split: str) -> np.ndarray:
  """[videos] real frame counts of a PHOENIX-2014T split."""
  lines = (SHARED / 'phoenix2014t' / f'{split}.jsonl').read_text().splitlines()
  return np.array([json.loads(line)['num_frames'] for line in lines])


def main():
  per_frame = frame_bytes()
  train, dev = frame_counts('train'), frame_counts('dev')
  train_record = train.mean() * per_frame
  dev_bytes = dev.sum() * per_frame
  print(f'PHOENIX-2014T records: {per_frame / 1024:.1f} KiB per frame '
        f'({Builder.DEFAULT_FRAME_SIZE}, JPEG quality {Builder.DEFAULT_JPEG_QUALITY}), '
        f'{train.mean():.0f} frames and {train_record / 2**20:.2f} MiB per train video; '
        f'one epoch {train.sum() * per_frame / 2**30:.2f} GiB, the dev split '
        f'{dev_bytes / 2**30:.2f} GiB.')
  print(f'{"recipe":<26}{"batch":>6}{"MiB/step":>10}{"steps":>8}{"evals":>7}'
        f'{"GiB read in all":>17}')
  for name, module, variant in RECIPES:
    config = module.get_config(f'{variant},dataset=phoenix2014t')
    evaluations = config.total_steps // config.eval_every_steps if config.eval_every_steps else 0
    total = config.total_steps * config.batch_size * train_record + evaluations * dev_bytes
    print(f'{name + ":" + variant:<26}{config.batch_size:>6}'
          f'{config.batch_size * train_record / 2**20:>10.2f}{config.total_steps:>8}'
          f'{evaluations:>7}{total / 2**30:>17.1f}')


if __name__ == '__main__':
  main()
