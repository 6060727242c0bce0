r"""Does C2RL learn, and does its pretraining ablation order hold? On synthetic_signs, 2 seeds.

  .venv/bin/python benchmarks/learning_c2rl.py --workdir=/tmp/c2rl_learning [--data_dir=data]

For each seed, one run after another (a rerun on the same WORKDIR resumes: finished runs are only
scored again):
  pretrain_{both,icl,ecl}  configs/c2rl.py:runlocal with alpha=beta=1, ECL off (beta=0), ICL off
                           (alpha=0): the paper's ablation (PHOENIX-2014T BLEU-4 26.75 / 24.83 /
                           25.72 for both / ICL only / ECL only)
  slt_<pretraining>        configs/c2rl.py:slt,runlocal from that pretraining workdir (encoder
                           frozen): Sign2Text
  slret_<pretraining>      configs/c2rl.py:slret,runlocal from it: retrieval
  slt_scratch              runlocal_slt without pretraining: the encoder trains from scratch with
                           the translation network, for as many steps
Every best checkpoint (chosen on dev) is scored on the test split. Chance rows: each test video
gets the training split's most frequent sentence (translation), and uniformly random scores
(retrieval, mean over 100 draws). Prints a table of means and per-seed values; rows are also
written to WORKDIR/results.json.
"""
import argparse
import collections
import os
import pathlib
import sys

import numpy as np
from absl import flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/ of this checkout
from benchmarks.learning_table import print_table, train_every_seed  # pylint: disable=wrong-import-position

PRETRAININGS = {'both': {}, 'icl': {'loss.beta': 0.0}, 'ecl': {'loss.alpha': 0.0}}
COLUMNS = ('bleu4', 'rougeL_signjoey', 't2v_r1', 'v2t_r1', 't2v_medr')


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='Runs go to WORKDIR/seed<N>/<run>.')
  parser.add_argument('--data_dir', default='data', help='Where synthetic_signs is (or is built).')
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
  return parser.parse_args()


def configure(variant: str, data_dir: str, seed: int, overrides: dict):
  from configs import c2rl, common  # pylint: disable=import-outside-toplevel
  config = c2rl.get_config(variant)
  config.data.data_dir = data_dir
  config.seed = seed
  return common.apply_overrides(config, overrides)


def runs(data_dir: str, seed: int, root: str):
  """(name, config, workdir) of one seed's runs, in the order they must train."""
  out = []
  for name, overrides in PRETRAININGS.items():
    out.append((f'pretrain_{name}', configure('runlocal', data_dir, seed, overrides),
                os.path.join(root, f'pretrain_{name}')))
  for name in PRETRAININGS:
    start = {'init.visual': os.path.join(root, f'pretrain_{name}')}
    for stage in ('slt', 'slret'):
      out.append((f'{stage}_{name}', configure(f'{stage},runlocal', data_dir, seed, start),
                  os.path.join(root, f'{stage}_{name}')))
  out.append(('slt_scratch', configure('slt,runlocal', data_dir, seed,
                                       {'init.visual': '', 'optimizer.frozen': ''}),
              os.path.join(root, 'slt_scratch')))
  return out


def chance_rows(data_dir: str):
  from sltjax.experiments.video import open_dataset_split  # pylint: disable=import-outside-toplevel
  from sltjax.metrics import sign_retrieval_metrics, translation_metrics  # pylint: disable=import-outside-toplevel
  data = configure('runlocal', data_dir, 0, {}).data
  train_split, test = (open_dataset_split(data, s) for s in ('train', 'test'))
  common = collections.Counter(train_split.texts).most_common(1)[0][0]
  rng = np.random.default_rng(0)
  draws = [sign_retrieval_metrics(rng.random((len(test), len(test))),
                                  rng.random((len(test), len(test))), test.texts)
           for _ in range(100)]
  return [{'run': 'chance: most frequent training sentence', 'seed': '-',
           **translation_metrics([common] * len(test), test.texts)},
          {'run': 'chance: random retrieval scores', 'seed': '-',
           **{k: float(np.mean([d[k] for d in draws])) for k in draws[0]}}], len(test)


def main():
  args = parse_args()
  flags.FLAGS.mark_as_parsed()  # grain reads absl flags
  rows, test_size = chance_rows(args.data_dir)
  train_every_seed(rows, lambda seed, root: runs(args.data_dir, seed, root), args.seeds,
                   args.workdir)
  print_table(rows, COLUMNS, f'synthetic_signs test split ({test_size} videos), best dev '
              f'checkpoints; mean over seeds {args.seeds} [per seed]:')


if __name__ == '__main__':
  main()
