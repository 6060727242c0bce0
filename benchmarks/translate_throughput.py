r"""Videos per second of `python -m sltjax.translate`'s decoding path, one input and 100 inputs,
one at a time (batch 1, what translate did before batching) and in batches.

  .venv/bin/python benchmarks/translate_throughput.py --workdir=workdirs/mmtlb_runlocal_staged_synthetic_signs \
      [--videos=../shared/data/videos] [--batch_sizes=1,8,32]

The inputs are the real videos in --videos, repeated to 100. Each batch size runs once on a few
inputs first, so compilation is not timed; reading and preparing the videos is (it is part of
translating a folder). Run it on an idle machine.
"""
import argparse
import glob
import os
import time

from absl import flags

from sltjax import translate


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--videos', default='../shared/data/videos')
  parser.add_argument('--batch_sizes', default='1,8,32')
  parser.add_argument('--count', type=int, default=100)
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()
  videos = sorted(glob.glob(os.path.join(args.videos, '*.mp4')))
  if not videos:
    raise SystemExit(f'No .mp4 videos in {args.videos}.')
  inputs = [videos[i % len(videos)] for i in range(args.count)]
  exp = translate.load_experiment(args.workdir)
  params, rest, _ = exp.eval_variables()
  print(f'{args.workdir} ({exp.describe()}); inputs: {len(videos)} real videos repeated')
  print('| inputs | batch size | videos/s |')
  print('|---|---|---|')
  for batch_size in map(int, args.batch_sizes.split(',')):
    translate.translate_all(exp, params, rest, inputs[:batch_size], None, batch_size)  # compile
    for paths in ([inputs[0]], inputs) if batch_size == 1 else (inputs,):
      start = time.perf_counter()
      results = translate.translate_all(exp, params, rest, paths, None, batch_size)
      seconds = time.perf_counter() - start
      assert not any('error' in r for r in results)
      print(f'| {len(paths)} | {batch_size} | {len(paths) / seconds:.2f} |', flush=True)


if __name__ == '__main__':
  main()
