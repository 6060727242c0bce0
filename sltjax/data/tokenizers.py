"""Text tokenizers with mBART's id conventions.

Every tokenizer shares fairseq's special ids (<s>=0, <pad>=1, </s>=2, <unk>=3) and ends its
vocabulary with language-code tokens (XGLM's: </s> for every language), so the same sequence
formats apply everywhere:
source `X </s> src_lang`, target labels `X </s> tgt_lang` (the language-code label is ignored in
the loss), decoder input `tgt_lang X </s>` (decoding starts from the language code).
"""
import io
import json
from collections import Counter
from collections.abc import Iterable, Sequence

import sentencepiece as spm

from sltjax import storage
from sltjax.errors import MissingInputError, UserError

BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ('<s>', '<pad>', '</s>', '<unk>')
# What a pretrained tokenizer directory holds that sltjax reads (id_map.json: a trimmed mBART's;
# PRUNED_IDS_FILE: the id map of an SLT release's pruned mBART, PrunedMBartTokenizer).
SENTENCEPIECE_FILE = 'sentencepiece.bpe.model'
PRUNED_IDS_FILE = 'pruned_ids.json'
TOKENIZER_FILES = (SENTENCEPIECE_FILE, 'tokenizer_config.json', 'id_map.json', PRUNED_IDS_FILE)

# mBART-large-cc25's language codes, in the order their ids follow the SentencePiece pieces.
MBART_CC25_LANGUAGE_CODES = (
    'ar_AR', 'cs_CZ', 'de_DE', 'en_XX', 'es_XX', 'et_EE', 'fi_FI', 'fr_XX', 'gu_IN', 'hi_IN',
    'it_IT', 'ja_XX', 'kk_KZ', 'ko_KR', 'lt_LT', 'lv_LV', 'my_MM', 'ne_NP', 'nl_XX', 'ro_RO',
    'ru_RU', 'si_LK', 'tr_TR', 'vi_VN', 'zh_CN')


class Tokenizer:
  """Base: subclasses provide `_piece_ids`, `_piece_text`, `vocab_size` and `lang_code_to_id`."""
  bos_id, pad_id, eos_id, unk_id = BOS_ID, PAD_ID, EOS_ID, UNK_ID
  vocab_size: int
  lang_code_to_id: dict[str, int]

  def lang_id(self, code: str) -> int:
    if code not in self.lang_code_to_id:
      raise ValueError(f'Unknown language code {code!r}; this tokenizer has '
                       f'{sorted(self.lang_code_to_id)}.')
    return self.lang_code_to_id[code]

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without specials."""
    return self._piece_ids(text)

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids` up to the first </s>, skipping specials and language codes."""
    pieces = []
    for i in ids:
      i = int(i)
      if i == self.eos_id:
        break
      if i < len(SPECIAL_TOKENS) and i != self.unk_id or i in self._lang_ids:
        continue
      pieces.append(i)
    return self._piece_text(pieces)

  @property
  def _lang_ids(self) -> frozenset[int]:
    return frozenset(self.lang_code_to_id.values())


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model (directory/sentencepiece.bpe.model) with fairseq's ids: the 4 specials,
  then every piece but SentencePiece's own <unk>, <s>, </s> (id + 1)."""
  FAIRSEQ_OFFSET = 1

  def __init__(self, directory: str, what: str):
    model_file = storage.path(directory) / SENTENCEPIECE_FILE
    if not model_file.is_file():
      raise MissingInputError(f'{model_file} not found: {what} tokenizer directory holds '
                              f'{SENTENCEPIECE_FILE} (as saved by transformers).')
    self.directory = directory
    self.sp = spm.SentencePieceProcessor(model_proto=model_file.read_bytes())
    self.first_added_id = self.sp.get_piece_size() + self.FAIRSEQ_OFFSET  # after the pieces

  def _piece_ids(self, text: str) -> list[int]:
    # SentencePiece's <unk> is 0; every other piece id shifts by the fairseq offset.
    return [UNK_ID if i == self.sp.unk_id() else i + self.FAIRSEQ_OFFSET
            for i in self.sp.encode(text)]

  def _piece_text(self, ids: Sequence[int]) -> str:
    sp_ids = [self.sp.unk_id() if i == UNK_ID else i - self.FAIRSEQ_OFFSET
              for i in ids if i < self.first_added_id]
    return self.sp.decode(sp_ids)


class MBartTokenizer(SentencePieceTokenizer):
  """The pieces, then the 25 cc25 language codes, then <mask>.

  Gives the same ids as `transformers.MBartTokenizer.from_pretrained(directory)`.
  """

  def __init__(self, directory: str):
    super().__init__(directory, 'an mBART')
    self.lang_code_to_id = {code: self.first_added_id + i
                            for i, code in enumerate(MBART_CC25_LANGUAGE_CODES)}
    self.mask_id = self.first_added_id + len(MBART_CC25_LANGUAGE_CODES)
    self.vocab_size = self.mask_id + 1


class PrunedMBartTokenizer(Tokenizer):
  """An SLT release's pruned mBART vocabulary (MMTLB's mBart_de / mBart_zh): mBART's full
  SentencePiece model, then its ids mapped to the pruned model's rows by PRUNED_IDS_FILE
  (`{"old_to_new": {mBART id: row}, "separate_final_period": bool}`, written by
  `python -m sltjax.convert.release` from the release's map_ids.pkl). As the release's
  TextTokenizer: a piece without a row is <unk>, decoding leaves <unk> out (transformers'
  skip_special_tokens), and with separate_final_period (the release does it for German) a
  decoded sentence ending in a '.' glued to its last word gets ' .' instead.
  """

  def __init__(self, directory: str):
    self.full = MBartTokenizer(directory)
    saved = json.loads(storage.read_text(storage.join(directory, PRUNED_IDS_FILE)))
    self.old_to_new = {int(old): int(new) for old, new in saved['old_to_new'].items()}
    self.separate_final_period = bool(saved.get('separate_final_period', False))
    self.new_to_old = {new: old for old, new in self.old_to_new.items()}
    self.vocab_size = len(self.old_to_new)
    if sorted(self.new_to_old) != list(range(self.vocab_size)) or any(
        self.old_to_new.get(i) != i for i in range(len(SPECIAL_TOKENS))):
      raise UserError(f'{storage.join(directory, PRUNED_IDS_FILE)} is not a pruned mBART id map: '
                      f'its rows must be 0..{self.vocab_size - 1}, each once, with '
                      f'{", ".join(SPECIAL_TOKENS)} kept at 0-3. Write it again with '
                      'python -m sltjax.convert.release.')
    self.lang_code_to_id = {code: self.old_to_new[old]
                            for code, old in self.full.lang_code_to_id.items()
                            if old in self.old_to_new}

  def _piece_ids(self, text: str) -> list[int]:
    return [self.old_to_new.get(i, UNK_ID) for i in self.full.encode(text)]

  def _piece_text(self, ids: Sequence[int]) -> str:
    return self.full._piece_text([self.new_to_old[i] for i in ids])  # pylint: disable=protected-access

  def decode(self, ids: Iterable[int]) -> str:
    text = super().decode(i for i in ids if int(i) != UNK_ID)
    if self.separate_final_period and len(text) > 2 and text[-1] == '.' and text[-2] != ' ':
      text = text[:-1] + ' .'
    return text


def mbart_tokenizer(directory: str) -> Tokenizer:
  """The mBART tokenizer a directory holds: pruned (PrunedMBartTokenizer) when it has
  PRUNED_IDS_FILE, else MBartTokenizer."""
  if (storage.path(directory) / PRUNED_IDS_FILE).is_file():
    return PrunedMBartTokenizer(directory)
  return MBartTokenizer(directory)


class XGLMTokenizer(SentencePieceTokenizer):
  """The pieces, then XGLM's 7 <madeupwordN> tokens; no language codes: XGLM reads every text as
  `</s> X`, so </s> stands where mBART's sequences hold the language code (a target is
  `X </s> </s>`, decoding starts from </s>).

  Gives the same ids as transformers' XGLMTokenizer of facebook/xglm-* (tokenizer.json).
  """
  MADEUP_WORDS = 7

  def __init__(self, directory: str):
    super().__init__(directory, 'an XGLM')
    self.lang_code_to_id = {}
    self.vocab_size = self.first_added_id + self.MADEUP_WORDS

  def lang_id(self, code: str) -> int:
    return self.eos_id


class WordTokenizer(Tokenizer):
  """Whitespace-split words; ids: the 4 specials, the words, then the language codes."""

  def __init__(self, words: Sequence[str], language_codes: Sequence[str]):
    self.words = list(words)
    self.word_to_id = {w: i + len(SPECIAL_TOKENS) for i, w in enumerate(self.words)}
    first_lang = len(SPECIAL_TOKENS) + len(self.words)
    self.lang_code_to_id = {code: first_lang + i for i, code in enumerate(language_codes)}
    self.vocab_size = first_lang + len(language_codes)

  @classmethod
  def build(cls, texts: Iterable[str], language_codes: Sequence[str], min_count: int = 1):
    """Vocabulary of every word seen at least `min_count` times, most frequent first."""
    counts = Counter(word for text in texts for word in text.split())
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return cls(words, language_codes)

  def save(self, path: str) -> None:
    storage.write_text(path, json.dumps(
        {'words': self.words, 'language_codes': list(self.lang_code_to_id)}, ensure_ascii=False))

  @classmethod
  def load(cls, path: str) -> 'WordTokenizer':
    saved = json.loads(storage.read_text(path))
    return cls(saved['words'], saved['language_codes'])

  def _piece_ids(self, text: str) -> list[int]:
    return [self.word_to_id.get(w, UNK_ID) for w in text.split()]

  def _piece_text(self, ids: Sequence[int]) -> str:
    first_word = len(SPECIAL_TOKENS)
    return ' '.join('<unk>' if i == UNK_ID else self.words[i - first_word] for i in ids)


def train_sentencepiece(texts: Iterable[str], directory: str, vocab_size: int) -> None:
  """Trains a BPE SentencePiece model on `texts` into directory/sentencepiece.bpe.model."""
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(list(texts)), model_writer=model,
      vocab_size=vocab_size, model_type='bpe', character_coverage=1.0,
      unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
  storage.write_bytes(storage.join(directory, SENTENCEPIECE_FILE), model.getvalue())


def copy_tokenizer_files(source: str, target: str) -> None:
  """Copies the TOKENIZER_FILES that `source` (an mBART or XGLM directory) holds into `target`,
  the SentencePiece model last: a folder holding it is complete."""
  for name in sorted(TOKENIZER_FILES, key=lambda name: name == SENTENCEPIECE_FILE):
    if (storage.path(source) / name).is_file():
      storage.copy_file(storage.join(source, name), storage.join(target, name))


# tokenizer.kind -> the class reading a pretrained tokenizer directory (config.tokenizer.path);
# the other kinds build their vocabulary from the training texts.
PRETRAINED_TOKENIZERS = {'mbart': mbart_tokenizer, 'xglm': XGLMTokenizer}


def load_tokenizer(config, directory: str, train_texts: Iterable[str]) -> Tokenizer:
  """The tokenizer named by `config` (config.tokenizer), created once and kept under `directory`.

  kind='mbart' / 'xglm': a pretrained mBART / XGLM tokenizer directory at config.path (copied
    into `directory`, so the workdir holds what it decodes with).
  kind='word': a word vocabulary built from `train_texts` (saved as vocab.json).
  kind='sentencepiece': a BPE model of config.vocab_size trained on `train_texts`.
  An existing vocabulary under `directory` is reused, so resumed and eval runs see the same ids.
  """
  languages = sorted({config.src_lang, config.tgt_lang})
  if config.kind in PRETRAINED_TOKENIZERS:
    make = PRETRAINED_TOKENIZERS[config.kind]
    if not (storage.path(directory) / SENTENCEPIECE_FILE).is_file():
      if not config.path:
        raise UserError(f'config.tokenizer.path must point at an {config.kind} tokenizer '
                        f'directory (holding {SENTENCEPIECE_FILE}) when tokenizer.kind='
                        f'"{config.kind}".')
      try:
        make(config.path)  # a clear error when config.path holds no tokenizer
      except MissingInputError as e:
        raise MissingInputError(f'tokenizer.path={config.path}: {e}') from None
      copy_tokenizer_files(config.path, directory)
    return make(directory)
  if config.kind == 'word':
    vocab_file = storage.join(directory, 'vocab.json')
    if not storage.path(vocab_file).exists():
      WordTokenizer.build(train_texts, languages, config.min_count).save(vocab_file)
    return WordTokenizer.load(vocab_file)
  if config.kind == 'sentencepiece':
    if not (storage.path(directory) / SENTENCEPIECE_FILE).exists():
      train_sentencepiece(train_texts, directory, config.vocab_size)
    return MBartTokenizer(directory)
  raise ValueError(f'config.tokenizer.kind={config.kind!r}; expected "mbart", "xglm", "word" or '
                   '"sentencepiece".')


class GlossVocabulary:
  """Gloss ids for CTC: 0 is the blank, 1 <unk>, then the glosses, most frequent first."""
  BLANK_ID, UNK_ID = 0, 1
  SPECIALS = ('<blank>', '<unk>')

  def __init__(self, glosses: Sequence[str]):
    self.glosses = list(glosses)
    self.gloss_to_id = {g: i + len(self.SPECIALS) for i, g in enumerate(self.glosses)}
    self.size = len(self.SPECIALS) + len(self.glosses)

  @classmethod
  def build(cls, lines: Iterable[str], min_count: int = 1) -> 'GlossVocabulary':
    counts = Counter(g for line in lines for g in line.split())
    return cls(sorted((g for g, c in counts.items() if c >= min_count),
                      key=lambda g: (-counts[g], g)))

  def encode(self, line: str) -> list[int]:
    return [self.gloss_to_id.get(g, self.UNK_ID) for g in line.split()]

  def decode(self, ids: Iterable[int]) -> str:
    """Glosses of ids (already collapsed CTC output), skipping blanks."""
    names = (*self.SPECIALS, *self.glosses)
    return ' '.join(names[int(i)] for i in ids if int(i) != self.BLANK_ID)

  def save(self, path: str) -> None:
    storage.write_text(path, json.dumps({'glosses': self.glosses}, ensure_ascii=False))

  @classmethod
  def load(cls, path: str) -> 'GlossVocabulary':
    return cls(json.loads(storage.read_text(path))['glosses'])
