r"""Does the main job learn for every seed? `make train`'s three stages for several seeds.

  .venv/bin/python benchmarks/main_job_seeds.py --workdir=/tmp/main_job_seeds [--seeds=0,1,2] \
      [--data_dir=data]

For each seed (`config.seed`: initialisation, data order, augmentation, dropout), trains the main
job's stages exactly as `make train` does, each in WORKDIR/seed<N>/<stage>:
  sign2gloss  configs/mmtlb.py:sign2gloss,runlocal
  gloss2text  configs/gloss2text.py:mmtlb,runlocal
  sign2text   configs/mmtlb.py:staged,runlocal, started from the two above
and scores every best dev checkpoint on the test split. Prints each seed's Sign2Gloss dev WER (its
best checkpoint's) and the main job's test BLEU-4 and WER, then the minimum and the spread over
seeds. A rerun on the same WORKDIR resumes unfinished runs and only rescores finished ones; rows
are saved to WORKDIR/results.json after each run.
"""
import argparse
import json
import os
import pathlib
import sys

from absl import flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/ of this checkout
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # learning_table

import learning_table  # pylint: disable=wrong-import-position

STAGES = (('sign2gloss', 'mmtlb', 'sign2gloss,runlocal'),
          ('gloss2text', 'gloss2text', 'mmtlb,runlocal'),
          ('sign2text', 'mmtlb', 'staged,runlocal'))  # (stage, configs/<file>.py, variant)


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='Runs go to WORKDIR/seed<N>/<stage>.')
  parser.add_argument('--seeds', default='0,1,2', help='Comma-separated config.seed values.')
  parser.add_argument('--data_dir', default='data', help='Where synthetic_signs is (or is built).')
  return parser.parse_args()


def stage_runs(data_dir: str):
  """runs(seed, root) -> [(stage, config, workdir)] for learning_table.train_every_seed."""
  import importlib  # pylint: disable=import-outside-toplevel

  def runs(seed: int, root: str):
    workdirs = {stage: os.path.join(root, stage) for stage, _, _ in STAGES}
    out = []
    for stage, config_file, variant in STAGES:
      config = importlib.import_module(f'configs.{config_file}').get_config(variant)
      config.seed = seed
      config.data.data_dir = data_dir
      if stage == 'sign2text':
        config.init.visual, config.init.translation = workdirs['sign2gloss'], workdirs['gloss2text']
      out.append((stage, config, workdirs[stage]))
    return out
  return runs


def best_dev(workdir: str, metric: str, lower_is_better: bool) -> float:
  """The best dev value of `metric` a run's metrics.jsonl holds (its best checkpoint's)."""
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    values = [m[metric] for m in map(json.loads, f) if m['split'] == 'dev' and metric in m]
  return min(values) if lower_is_better else max(values)


def seed_table(rows: list[dict], root: str) -> list[dict]:
  """Per seed: Sign2Gloss dev WER, the main job's test BLEU-4 and WER, minutes of the three."""
  table = []
  for seed in sorted({r['seed'] for r in rows}):
    runs = {r['run']: r for r in rows if r['seed'] == seed}
    if 'sign2text' not in runs:
      continue
    table.append({
        'seed': seed,
        'sign2gloss_dev_wer': best_dev(os.path.join(root, f'seed{seed}', 'sign2gloss'), 'wer',
                                       lower_is_better=True),
        'test_bleu4': runs['sign2text']['bleu4'], 'test_wer': runs['sign2text']['wer'],
        'minutes': round(sum(r['minutes'] for r in runs.values()), 1)})
  return table


def main():
  args = parse_args()
  flags.FLAGS.mark_as_parsed()  # grain reads absl flags
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update('jax_compilation_cache_dir', os.path.expanduser('~/.cache/sltjax/xla'))
  seeds = [int(s) for s in args.seeds.split(',')]
  os.makedirs(args.workdir, exist_ok=True)
  rows = [r for r in learning_table.load_rows(args.workdir) if r['seed'] not in seeds]
  learning_table.train_every_seed(rows, stage_runs(args.data_dir), seeds, args.workdir)
  table = seed_table(rows, args.workdir)
  print('\nThe main job per seed (synthetic_signs; Sign2Gloss on dev, Sign2Text on test):')
  print('| seed | Sign2Gloss dev WER | test BLEU-4 | test WER | minutes (this invocation) |')
  print('|---|---|---|---|---|')
  for row in table:
    print(f'| {row["seed"]} | {row["sign2gloss_dev_wer"]:.2f} | {row["test_bleu4"]:.2f} | '
          f'{row["test_wer"]:.2f} | {row["minutes"]} |')
  for key, name in (('test_bleu4', 'test BLEU-4'), ('sign2gloss_dev_wer', 'dev WER')):
    values = [row[key] for row in table]
    print(f'{name}: min {min(values):.2f}, max {max(values):.2f}, '
          f'spread {max(values) - min(values):.2f} over {len(values)} seeds')


if __name__ == '__main__':
  main()
