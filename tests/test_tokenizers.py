"""Tokenizers: ids identical to transformers' MBartTokenizer on the real trimmed mBART model."""
import pytest

from sltjax.data.tokenizers import (EOS_ID, MBartTokenizer, UNK_ID, WordTokenizer,
                                    train_sentencepiece)
from tests.conftest import MBART_DIR, SHARED_DATA

needs_mbart = pytest.mark.skipif(not MBART_DIR.exists(),
                                 reason=f'shared mBART tokenizer not found at {MBART_DIR}')
SENTENCES = ['liebe zuschauer guten abend .',
             'am tag elf bis siebzehn grad , im süden bis zu zweiundzwanzig grad .',
             'regen und schnee xyzq']


@needs_mbart
def test_mbart_ids_match_transformers():
  transformers = pytest.importorskip('transformers')
  reference = transformers.MBartTokenizer.from_pretrained(str(MBART_DIR), src_lang='de_DE',
                                                          tgt_lang='de_DE')
  ours = MBartTokenizer(str(MBART_DIR))
  assert ours.vocab_size == len(reference) == 2454
  assert ours.lang_id('de_DE') == reference.convert_tokens_to_ids('de_DE') == 2430
  assert ours.mask_id == reference.convert_tokens_to_ids('<mask>')
  for sentence in SENTENCES:
    expected = reference(sentence)['input_ids']  # X </s> de_DE
    assert ours.encode(sentence) + [EOS_ID, ours.lang_id('de_DE')] == expected


@needs_mbart
def test_mbart_round_trip_on_phoenix_dev():
  tokenizer = MBartTokenizer(str(MBART_DIR))
  lines = (SHARED_DATA / 'phoenix2014t' / 'dev.de').read_text(encoding='utf-8').splitlines()
  for line in lines:
    ids = tokenizer.encode(line)
    assert UNK_ID not in ids, line
    # decode stops at </s> and drops the language code, as decoding a model's output must.
    assert tokenizer.decode(ids + [EOS_ID, tokenizer.lang_id('de_DE'), 7, 8]) == line


def test_mbart_directory_without_model_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='sentencepiece.bpe.model'):
    MBartTokenizer(str(tmp_path))


def test_word_tokenizer_round_trip_and_save(tmp_path):
  tokenizer = WordTokenizer.build(['a b b c', 'c c c'], ['de_DE'])
  assert tokenizer.words == ['c', 'b', 'a']  # most frequent first
  assert tokenizer.encode('a c zzz') == [6, 4, UNK_ID]
  assert tokenizer.vocab_size == 4 + 3 + 1 and tokenizer.lang_id('de_DE') == 7
  assert tokenizer.decode([6, 4, UNK_ID, EOS_ID, 5]) == 'a c <unk>'
  tokenizer.save(str(tmp_path / 'vocab.json'))
  assert WordTokenizer.load(str(tmp_path / 'vocab.json')).encode('b a') == [5, 6]
  with pytest.raises(ValueError, match="Unknown language code 'en_XX'"):
    tokenizer.lang_id('en_XX')


def test_trained_sentencepiece_round_trip(tmp_path, toy_corpus):
  texts = (toy_corpus / 'train.de').read_text().splitlines()
  train_sentencepiece(texts, str(tmp_path), vocab_size=40)
  tokenizer = MBartTokenizer(str(tmp_path))
  assert tokenizer.vocab_size == 40 + 1 + 25 + 1
  for line in texts[:20]:
    assert tokenizer.decode(tokenizer.encode(line)) == line
