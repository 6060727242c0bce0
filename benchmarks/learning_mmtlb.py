r"""Does MMTLB learn? Sign2Gloss, Gloss2Text and Sign2Text on synthetic_signs, against chance.

  .venv/bin/python benchmarks/learning_mmtlb.py --workdir=/tmp/mmtlb_learning [--data_dir=data]

On one build of synthetic_signs (built on first use), trains one after another, each for the
steps its config gives (about ten minutes each on a 2-core CPU; a rerun on the same WORKDIR
resumes finished runs instead of repeating them):
  sign2gloss  configs/mmtlb.py:sign2gloss,runlocal (video -> glosses, CTC)
  gloss2text  configs/gloss2text.py:mmtlb,runlocal, the same 1+1-layer translation network on
              the dataset's ground-truth (gloss, text) pairs: the score Sign2Text should
              approach, since its glosses are perfect
  sign2text   configs/mmtlb.py:runlocal, the README's main job (video -> text, CTC + CE)
              from scratch
  sign2gloss2text  evaluation only: sign2gloss's decoded glosses -> gloss2text
  sign2text_from_stages  configs/mmtlb.py:staged,runlocal, runlocal started as MMTLB starts
              Sign2Text: backbone + head from sign2gloss (init.visual), the translation network
              from gloss2text (init.translation); the README's main job
and scores every best checkpoint on the test split (two signers unseen in training). Chance:
every test video gets the training split's most frequent gloss sequence and sentence. Prints one
table with the wall time of each run in this invocation (a resumed run only evaluates); its rows
are also written to WORKDIR/results.json.
"""
import argparse
import collections
import json
import os
import pathlib
import sys
import time

from absl import flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/ of this checkout


STAGES = ('sign2gloss', 'gloss2text', 'sign2text', 'sign2gloss2text', 'sign2text_from_stages')


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='Runs go to WORKDIR/<stage>.')
  parser.add_argument('--data_dir', default='data', help='Where synthetic_signs is (or is built).')
  parser.add_argument('--steps', type=int, default=0,
                      help='Training steps of every run (0: each config\'s own).')
  return parser.parse_args()


def most_frequent(lines: list[str]) -> str:
  return collections.Counter(lines).most_common(1)[0][0]


def main():
  args = parse_args()
  flags.FLAGS.mark_as_parsed()  # grain reads absl flags
  from configs import gloss2text, mmtlb  # pylint: disable=import-outside-toplevel
  from sltjax import train  # pylint: disable=import-outside-toplevel
  from sltjax.experiments.video import open_dataset_split  # pylint: disable=import-outside-toplevel
  from sltjax.metrics import gloss_metrics, translation_metrics  # pylint: disable=import-outside-toplevel

  configs = {}
  for stage, module, variant in (('sign2gloss', mmtlb, 'sign2gloss,runlocal'),
                                 ('sign2text', mmtlb, 'runlocal'),
                                 ('gloss2text', gloss2text, 'mmtlb,runlocal'),
                                 ('sign2gloss2text', mmtlb, 'staged,runlocal'),
                                 ('sign2text_from_stages', mmtlb, 'staged,runlocal')):
    configs[stage] = module.get_config(variant)
    configs[stage].data.data_dir = args.data_dir
    if args.steps:
      configs[stage].total_steps = args.steps
      configs[stage].eval_every_steps = configs[stage].checkpoint_every_steps = args.steps
  splits = {s: open_dataset_split(configs['sign2text'].data, s) for s in ('train', 'test')}
  workdirs = {stage: os.path.join(args.workdir, stage) for stage in STAGES}
  for stage in ('sign2gloss2text', 'sign2text_from_stages'):  # started from the two stages
    configs[stage].init.visual = workdirs['sign2gloss']
    configs[stage].init.translation = workdirs['gloss2text']
  configs['sign2gloss2text'].stage = 'sign2gloss2text'

  test = splits['test']
  rows = [{'run': 'chance (most frequent training sequence)', 'minutes': 0.0,
           **gloss_metrics([most_frequent(splits['train'].glosses)] * len(test), test.glosses),
           **translation_metrics([most_frequent(splits['train'].texts)] * len(test), test.texts)}]
  for stage in STAGES:
    config = configs[stage]
    start = time.perf_counter()
    if stage != 'sign2gloss2text':  # that one only evaluates the two stages it joins
      train.train_and_evaluate(config, workdirs[stage])  # best checkpoint chosen on dev
    test_config = config.copy_and_resolve_references()  # `config` stays on dev
    test_config.eval.split = 'test'
    scores = train.evaluate_checkpoint(test_config, workdirs[stage])
    steps = '' if stage == 'sign2gloss2text' else f' ({config.total_steps} steps)'
    rows.append({'run': stage + steps, 'minutes': round((time.perf_counter() - start) / 60, 1),
                 **scores})
  with open(os.path.join(args.workdir, 'results.json'), 'w', encoding='utf-8') as f:
    json.dump(rows, f, indent=1)
  print(f'\nsynthetic_signs test split ({len(test)} videos), best dev checkpoints:')
  print('| run | WER | BLEU-4 | chrF | ROUGE-L | minutes (this invocation: train + eval) |')
  print('|---|---|---|---|---|---|')
  for row in rows:
    cells = [f'{row[k]:.2f}' if k in row else '-' for k in ('wer', 'bleu4', 'chrf',
                                                          'rougeL_signjoey')]
    print(f'| {row["run"]} | ' + ' | '.join(cells) + f' | {row["minutes"]} |')


if __name__ == '__main__':
  main()
