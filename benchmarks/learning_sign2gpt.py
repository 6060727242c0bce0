r"""Does Sign2GPT learn, and does pseudo-gloss pretraining help? On synthetic_signs, 2 seeds.

  .venv/bin/python benchmarks/learning_sign2gpt.py --workdir=/tmp/sign2gpt_learning \
      [--data_dir=data] [--pretrained=pretrained/synthetic_signs]

First the stand-in DINOv2 and XGLM (python -m sltjax.stand_ins) where missing; then for each seed,
one run after another (a rerun on the same WORKDIR resumes: finished runs are only scored again):
  pseudo_gloss         configs/sign2gpt.py:runlocal: stage 1, scored by pseudo-gloss F1
  translation          runlocal_translation from it: stage 2 (the paper, PHOENIX-2014T BLEU-4
                       22.52 with pseudo-gloss pretraining)
  translation_scratch  runlocal_scratch: stage 2 without stage 1, for as many steps (19.42)
Every best checkpoint (chosen on dev) is scored on the test split. Chance rows: the training
split's most frequent sentence for every test video; the frozen LM alone (what stage 2 computes
before training: its beam search from `</s>` without the video); each pseudo-gloss predicted
at random with its training frequency (mean over 100 draws). Prints a table of means and
per-seed values; rows are also written to WORKDIR/results.json.
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

COLUMNS = ('bleu4', 'rougeL_signjoey', 'pseudo_gloss_f1', 'pseudo_gloss_class_f1')


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='Runs go to WORKDIR/seed<N>/<run>.')
  parser.add_argument('--data_dir', default='data', help='Where synthetic_signs is (or is built).')
  parser.add_argument('--pretrained', default='pretrained/synthetic_signs',
                      help='The stand-in networks (built there when missing).')
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
  return parser.parse_args()


def configure(variant: str, args, seed: int, overrides: dict):
  from configs import common, sign2gpt  # pylint: disable=import-outside-toplevel
  config = sign2gpt.get_config(variant)
  config.data.data_dir = args.data_dir
  config.seed = seed
  config.model.backbone_weights = os.path.join(args.pretrained, 'dinov2')
  config.model.lm_weights = config.tokenizer.path = os.path.join(args.pretrained, 'xglm')
  return common.apply_overrides(config, overrides)


def runs(args, seed: int, root: str):
  """(name, config, workdir) of one seed's runs, in the order they must train."""
  stage1 = os.path.join(root, 'pseudo_gloss')
  return [('pseudo_gloss', configure('runlocal', args, seed, {}), stage1),
          ('translation', configure('translation,runlocal', args, seed,
                                    {'init.pretraining': stage1}),
           os.path.join(root, 'translation')),
          ('translation_scratch', configure('scratch,runlocal', args, seed, {}),
           os.path.join(root, 'translation_scratch'))]


def chance_rows(args):
  """The rows that need no training, and the test split's size."""
  from sltjax.convert.xglm import load_xglm  # pylint: disable=import-outside-toplevel
  from sltjax.data.pseudo_glosses import PseudoGlosser, Vocabulary  # pylint: disable=import-outside-toplevel
  from sltjax.data.tokenizers import XGLMTokenizer  # pylint: disable=import-outside-toplevel
  from sltjax.decoding import generate  # pylint: disable=import-outside-toplevel
  from sltjax.experiments.video import open_dataset_split  # pylint: disable=import-outside-toplevel
  from sltjax.experiments.sign2gpt import pseudo_gloss_f1  # pylint: disable=import-outside-toplevel
  from sltjax.metrics import translation_metrics  # pylint: disable=import-outside-toplevel
  config = configure('translation,runlocal', args, 0, {})
  train_split, test = (open_dataset_split(config.data, s) for s in ('train', 'test'))
  common = collections.Counter(train_split.texts).most_common(1)[0][0]
  tokenizer = XGLMTokenizer(config.model.lm_weights)
  prior = tokenizer.decode(generate(
      load_xglm(config.model.lm_weights), np.array([[tokenizer.eos_id]]),
      num_beams=config.eval.num_beams, max_new_tokens=config.eval.max_new_tokens)[0, 1:])
  glosser = PseudoGlosser(config.pseudo_glosses.language)
  vocabulary = Vocabulary.build(train_split.texts, glosser,
                                config.pseudo_glosses.max_sentence_fraction)
  frequency = np.mean([vocabulary.targets(glosser(t)) for t in train_split.texts], axis=0)
  targets = np.stack([vocabulary.targets(glosser(t)) for t in test.texts])
  rng = np.random.default_rng(0)
  draws = [pseudo_gloss_f1((rng.random(targets.shape) < frequency).astype(np.float32), targets)
           for _ in range(100)]
  return [{'run': 'chance: most frequent training sentence', 'seed': '-',
           **translation_metrics([common] * len(test), test.texts)},
          {'run': f'chance: the frozen LM alone ("{prior}")', 'seed': '-',
           **translation_metrics([prior] * len(test), test.texts)},
          {'run': 'chance: pseudo-glosses drawn with their training frequency', 'seed': '-',
           **{k: float(np.mean([d[k] for d in draws])) for k in draws[0]}}], len(test)


def main():
  args = parse_args()
  flags.FLAGS.mark_as_parsed()  # grain reads absl flags
  from sltjax import stand_ins  # pylint: disable=import-outside-toplevel
  print(stand_ins.build(args.pretrained))
  rows, test_size = chance_rows(args)
  train_every_seed(rows, lambda seed, root: runs(args, seed, root), args.seeds, args.workdir)
  print_table(rows, COLUMNS, f'synthetic_signs test split ({test_size} videos), best dev '
              f'checkpoints; mean over seeds {args.seeds} [per seed]:')


if __name__ == '__main__':
  main()
