r"""Does MMTLB learn? Sign2Gloss, Gloss2Text and Sign2Text on synthetic_signs, against chance.

  .venv/bin/python benchmarks/learning_mmtlb.py --workdir=/tmp/mmtlb_learning [--data_dir=data]

On one build of synthetic_signs (built on first use), trains one after another, each for the
steps its config gives (about ten minutes each on a 2-core CPU):
  sign2gloss  configs/mmtlb.py:runlocal_sign2gloss (video -> glosses, CTC)
  gloss2text  the same 1+1-layer translation network on the dataset's ground-truth (gloss, text)
              pairs: the score Sign2Text should approach, since its glosses are perfect
  sign2text   configs/mmtlb.py:runlocal, the README's main job (video -> text, CTC + CE)
and scores every best checkpoint on the test split (two signers unseen in training). Chance:
every test video gets the training split's most frequent gloss sequence and sentence. Prints one
table with the wall time of each run; its rows are also written to WORKDIR/results.json.
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


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='Runs go to WORKDIR/<stage>.')
  parser.add_argument('--data_dir', default='data', help='Where synthetic_signs is (or is built).')
  parser.add_argument('--steps', type=int, default=0,
                      help='Training steps of every run (0: each config\'s own).')
  return parser.parse_args()


def write_text_corpus(split_texts, directory: str) -> str:
  """{split}.gloss / {split}.en of the video dataset's splits, for configs/gloss2text.py."""
  os.makedirs(directory, exist_ok=True)
  for split, data in split_texts.items():
    for suffix, lines in (('gloss', data.glosses), ('en', data.texts)):
      with open(os.path.join(directory, f'{split}.{suffix}'), 'w', encoding='utf-8') as f:
        f.write(''.join(line + '\n' for line in lines))
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

  test = splits['test']
  rows = [{'run': 'chance (most frequent training sequence)', 'minutes': 0.0,
           **gloss_metrics([most_frequent(splits['train'].glosses)] * len(test), test.glosses),
           **translation_metrics([most_frequent(splits['train'].texts)] * len(test), test.texts)}]
  for stage in ('sign2gloss', 'gloss2text', 'sign2text'):
    config, workdir = configs[stage], os.path.join(args.workdir, stage)
    start = time.perf_counter()
    train.train_and_evaluate(config, workdir)
    minutes = (time.perf_counter() - start) / 60
    config.eval.split = 'test'
    rows.append({'run': f'{stage} ({config.total_steps} steps)', 'minutes': round(minutes, 1),
                 **train.evaluate_checkpoint(config, workdir)})
  with open(os.path.join(args.workdir, 'results.json'), 'w', encoding='utf-8') as f:
    json.dump(rows, f, indent=1)
  print(f'\nsynthetic_signs test split ({len(test)} videos), best dev checkpoints:')
  print('| run | WER | BLEU-4 | chrF | ROUGE-L | train + eval minutes |')
  print('|---|---|---|---|---|---|')
  for row in rows:
    cells = [f'{row[k]:.2f}' if k in row else '-' for k in ('wer', 'bleu4', 'chrf',
                                                          'rougeL_signjoey')]
    print(f'| {row["run"]} | ' + ' | '.join(cells) + f' | {row["minutes"]} |')


if __name__ == '__main__':
  main()
