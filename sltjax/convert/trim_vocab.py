r"""Vocabulary trimming of a Hugging Face mBART checkpoint to the pieces a corpus uses (MMTLB, GFSLT-VLP).

  python -m sltjax.convert.trim_vocab --model=mbart-large-cc25 --output=mbart-trimmed \
      --texts=train.de,dev.de --glosses=train.gloss,dev.gloss

Keeps the fairseq specials (<s> <pad> </s> <unk>), every SentencePiece piece used to tokenize the
texts and the lowercased glosses, then all language codes and <mask>; slices the tied embeddings
(and lm_head) and final_logits_bias to those rows. The output directory loads in sltjax
(`load_mbart`, `MBartTokenizer`) and in transformers (`from_pretrained`), and holds
`id_map.json` (new id -> old id). The trimmed tokenizer segments every given sentence exactly as
the original did (checked before anything is written); others it segments into the kept pieces,
<unk> only for characters none of them spells (~0.6% of PHOENIX-2014T train's tokens when
trimming on dev alone).

Trim on the training (and dev) texts: the test split's then stay unseen. MMTLB's and
GFSLT-VLP's releases also trimmed on the test split's texts; add test.de / test.gloss to
reproduce their vocabularies exactly.
"""
import json
import os
import shutil
from collections.abc import Iterable, Sequence

import numpy as np
from absl import app, flags
from sentencepiece import sentencepiece_model_pb2

from sltjax.convert.hf_checkpoint import read_config, read_state_dict, save_safetensors
from sltjax.data.tokenizers import MBartTokenizer, SPECIAL_TOKENS
from sltjax.errors import MissingInputError, UserError, exit_with_user_error

SPM_FILE = 'sentencepiece.bpe.model'
VOCAB_SLICED = ('model.shared.weight', 'model.encoder.embed_tokens.weight',
                'model.decoder.embed_tokens.weight', 'lm_head.weight')
COPIED_FILES = ('generation_config.json', 'tokenizer_config.json', 'special_tokens_map.json')
_BPE = sentencepiece_model_pb2.TrainerSpec.BPE


def read_lines(paths: Sequence[str]) -> list[str]:
  """The non-empty lines, stripped, of the text files (--texts, --glosses) in order."""
  lines = []
  for path in paths:
    if not os.path.isfile(path):
      raise MissingInputError(f'{path} not found: --texts and --glosses take text files, one '
                              'sentence or gloss sequence per line.')
    with open(path, encoding='utf-8') as f:
      lines += [line.strip() for line in f if line.strip()]
  return lines


def pieces_to_keep(model: sentencepiece_model_pb2.ModelProto, used: set[int]) -> list[int]:
  """SentencePiece ids to keep, in their original order: specials, `used`, and for BPE models
  every piece that is a substring of a used one (BPE reaches a piece only through merges of its
  substrings, so without them the trimmed model would segment differently)."""
  keep = set(used) | {i for i, p in enumerate(model.pieces)
                      if p.type != sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL}
  if model.trainer_spec.model_type == _BPE:
    piece_ids = {p.piece: i for i, p in enumerate(model.pieces)}
    for i in used:
      piece = model.pieces[i].piece
      substrings = {piece[a:b] for a in range(len(piece)) for b in range(a + 1, len(piece) + 1)}
      keep |= {piece_ids[s] for s in substrings if s in piece_ids}
  return sorted(keep)


def trimmed_id_map(tokenizer: MBartTokenizer, kept_pieces: list[int]) -> np.ndarray:
  """Old HF ids in new-id order: fairseq specials, kept pieces, language codes, <mask>."""
  offset = MBartTokenizer.FAIRSEQ_OFFSET
  unk, bos, eos = tokenizer.sp.unk_id(), tokenizer.sp.bos_id(), tokenizer.sp.eos_id()
  pieces = [i + offset for i in kept_pieces if i not in (unk, bos, eos)]
  return np.array(list(range(len(SPECIAL_TOKENS))) + pieces +
                  sorted(tokenizer.lang_code_to_id.values()) + [tokenizer.mask_id])


def trim_mbart(model_dir: str, output_dir: str, texts: Iterable[str],
               glosses: Iterable[str] = (), tokenizer_dir: str | None = None) -> np.ndarray:
  """Writes the trimmed model + tokenizer to `output_dir`; returns new id -> old id."""
  tokenizer_dir = tokenizer_dir or model_dir
  tokenizer = MBartTokenizer(tokenizer_dir)
  sentences = list(texts) + [g.lower() for g in glosses]
  if not sentences:
    raise ValueError('No sentences to trim to: give the corpus texts (and optionally glosses).')
  model = sentencepiece_model_pb2.ModelProto()
  with open(os.path.join(tokenizer_dir, SPM_FILE), 'rb') as f:
    model.ParseFromString(f.read())
  used = {i for s in sentences for i in tokenizer.sp.encode(s)}
  kept = pieces_to_keep(model, used)
  id_map = trimmed_id_map(tokenizer, kept)

  config = read_config(model_dir)
  if config['vocab_size'] != tokenizer.vocab_size:
    raise ValueError(f'{model_dir} has vocab_size {config["vocab_size"]} but the tokenizer in '
                     f'{tokenizer_dir} has {tokenizer.vocab_size} ids: they do not belong together.')
  tensors = read_state_dict(model_dir)
  for name in VOCAB_SLICED:
    if name in tensors:
      tensors[name] = tensors[name][id_map]
  tensors['final_logits_bias'] = tensors['final_logits_bias'][:, id_map]

  trimmed = sentencepiece_model_pb2.ModelProto()
  trimmed.CopyFrom(model)
  del trimmed.pieces[:]
  trimmed.pieces.extend(model.pieces[i] for i in kept)
  staging = output_dir.rstrip('/') + '.partial'
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  with open(os.path.join(staging, SPM_FILE), 'wb') as f:
    f.write(trimmed.SerializeToString())
  _check_same_segmentation(tokenizer, MBartTokenizer(staging), id_map, sentences)

  save_safetensors(tensors, os.path.join(staging, 'model.safetensors'))
  with open(os.path.join(staging, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump({**config, 'vocab_size': len(id_map)}, f, indent=2)
  for name in COPIED_FILES:
    if os.path.isfile(os.path.join(tokenizer_dir, name)):
      shutil.copy(os.path.join(tokenizer_dir, name), staging)
  if not os.path.isfile(os.path.join(staging, 'tokenizer_config.json')):
    with open(os.path.join(staging, 'tokenizer_config.json'), 'w', encoding='utf-8') as f:
      json.dump({'tokenizer_class': 'MBartTokenizer'}, f)
  with open(os.path.join(staging, 'id_map.json'), 'w', encoding='utf-8') as f:
    json.dump({'new_to_old': id_map.tolist()}, f)
  if os.path.exists(output_dir):
    shutil.rmtree(output_dir)
  os.replace(staging, output_dir)  # a half-written output never looks complete
  return id_map


def _check_same_segmentation(old: MBartTokenizer, new: MBartTokenizer, id_map: np.ndarray,
                             sentences: Sequence[str]) -> None:
  if new.vocab_size != len(id_map):
    raise AssertionError(f'Trimmed tokenizer has {new.vocab_size} ids, id map {len(id_map)}.')
  for sentence in sentences:
    if id_map[new.encode(sentence)].tolist() != old.encode(sentence):
      raise AssertionError(f'The trimmed tokenizer segments {sentence!r} differently; please '
                           'report this with the tokenizer you trimmed.')


FLAGS = flags.FLAGS


def main(argv):
  del argv
  try:
    id_map = trim_mbart(FLAGS.model, FLAGS.output, read_lines(FLAGS.texts),
                        read_lines(FLAGS.glosses), FLAGS.tokenizer)
  except UserError as e:
    exit_with_user_error(str(e))
  print(f'Wrote {FLAGS.output}: {len(id_map)} ids (id map in id_map.json).')


if __name__ == '__main__':
  # Defined only when run as a program: importing trim_mbart must not claim flag names.
  flags.DEFINE_string('model', None, 'Hugging Face mBART directory (config.json + weights).')
  flags.DEFINE_string('tokenizer', None, 'Directory with sentencepiece.bpe.model (default: --model).')
  flags.DEFINE_string('output', None, 'Directory to write the trimmed model and tokenizer to.')
  flags.DEFINE_list('texts', [], 'Text files (one sentence a line) whose pieces are kept.')
  flags.DEFINE_list('glosses', [], 'Gloss files, lowercased before tokenizing, also kept.')
  flags.mark_flags_as_required(['model', 'output'])
  app.run(main)
