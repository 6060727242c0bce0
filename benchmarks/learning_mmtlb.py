r"""Does MMTLB learn? Sign2Gloss, Gloss2Text and Sign2Text on synthetic_signs, against chance.

  .venv/bin/python benchmarks/learning_mmtlb.py --workdir=/tmp/mmtlb_learning [--data_dir=data]

On one build of synthetic_signs (built on first use), trains one after another, each for the
steps its config gives (about ten minutes each on a 2-core CPU; a rerun on the same WORKDIR
resumes finished runs instead of repeating them):
  sign2gloss  configs/mmtlb.py:runlocal_sign2gloss (video -> glosses, CTC)
  gloss2text  the same 1+1-layer translation network on the dataset's ground-truth (gloss, text)
              pairs: the score Sign2Text should approach, since its glosses are perfect
  sign2text   configs/mmtlb.py:runlocal, the README's main job (video -> text, CTC + CE)
              from scratch
  sign2gloss2text  evaluation only: sign2gloss's decoded glosses -> gloss2text
  sign2text_from_stages  runlocal started as MMTLB starts Sign2Text: backbone + head from
              sign2gloss (init.visual), the translation network from gloss2text
              (init.translation)
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


def write_text_corpus(splits, directory: str) -> str:
  """{split}.gloss / {split}.en of the video dataset's splits, for configs/gloss2text.py."""
  from sltjax.data import text  # pylint: disable=import-outside-toplevel
  for split, data in splits.items():
    text.write_parallel(directory, split, data.glosses, data.texts, target_suffix='en')
  return directory


def gloss2text_config(mmtlb_config, corpus: str):
  """configs/gloss2text.py:runlocal with runlocal MMTLB's translation network, batch and steps."""
  from configs import gloss2text  # pylint: disable=import-outside-toplevel
  c = gloss2text.get_config('runlocal')
  c.data.path, c.data.target_suffix = corpus, 'en'
  c.data.length_buckets = mmtlb_config.data.length_buckets
  c.tokenizer.src_lang = c.tokenizer.tgt_lang = 'en_XX'
  network = mmtlb_config.model.translation
  for key in ('d_model', 'encoder_layers', 'decoder_layers', 'encoder_attention_heads',
              'decoder_attention_heads', 'encoder_ffn_dim', 'decoder_ffn_dim',
              'max_position_embeddings', 'dropout', 'attention_dropout'):
    c.model[key] = network[key]
  for key in ('total_steps', 'batch_size', 'eval_every_steps', 'checkpoint_every_steps'):
    c[key] = mmtlb_config[key]
  c.optimizer.learning_rate = mmtlb_config.optimizer.learning_rate
  c.schedule.warmup_steps = mmtlb_config.schedule.warmup_steps
  c.eval.num_beams = mmtlb_config.eval.num_beams
  c.eval.max_new_tokens = mmtlb_config.eval.max_new_tokens
  return c


def most_frequent(lines: list[str]) -> str:
  return collections.Counter(lines).most_common(1)[0][0]


def main():
  args = parse_args()
  flags.FLAGS.mark_as_parsed()  # grain reads absl flags
  from configs import mmtlb  # pylint: disable=import-outside-toplevel
  from sltjax import train  # pylint: disable=import-outside-toplevel
  from sltjax.experiments.mmtlb import open_dataset_split  # pylint: disable=import-outside-toplevel
  from sltjax.metrics import gloss_metrics, translation_metrics  # pylint: disable=import-outside-toplevel

  configs = {}
  for stage, variant in (('sign2gloss', 'runlocal_sign2gloss'), ('sign2text', 'runlocal')):
    configs[stage] = mmtlb.get_config(variant)
    configs[stage].data.data_dir = args.data_dir
    if args.steps:
      configs[stage].total_steps = args.steps
      configs[stage].eval_every_steps = configs[stage].checkpoint_every_steps = args.steps
  splits = {s: open_dataset_split(configs['sign2text'].data, s) for s in ('train', 'dev', 'test')}
  configs['gloss2text'] = gloss2text_config(
      configs['sign2text'], write_text_corpus(splits, os.path.join(args.workdir, 'corpus')))
  workdirs = {stage: os.path.join(args.workdir, stage) for stage in STAGES}
  for stage in ('sign2gloss2text', 'sign2text_from_stages'):  # started from the two stages
    configs[stage] = configs['sign2text'].copy_and_resolve_references()
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
