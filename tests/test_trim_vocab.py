"""Vocabulary trimming: the trimmed model + tokenizer reproduce the original on the kept corpus,
in sltjax and in transformers; gloss-embedding initialisation."""
import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from sltjax.convert.gloss_embeddings import gloss_embeddings
from sltjax.convert.hf import load_mbart
from sltjax.convert.trim_vocab import trim_mbart
from sltjax.data.tokenizers import EOS_ID, MBartTokenizer, train_sentencepiece
from tests.conftest import MBART_DIR, SHARED_DATA, save_mbart_with_tokenizer

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')


@pytest.fixture(scope='module')
def bpe_model(tmp_path_factory, toy_corpus):
  """An 'original' model with a BPE tokenizer trained on the toy corpus."""
  directory = tmp_path_factory.mktemp('original')
  texts = (toy_corpus / 'train.de').read_text().splitlines()
  glosses = (toy_corpus / 'train.gloss').read_text().splitlines()
  train_sentencepiece(texts + [g.lower() for g in glosses], str(directory), vocab_size=150)
  hf = save_mbart_with_tokenizer(directory, MBartTokenizer(str(directory)).vocab_size)
  return directory, hf, texts, glosses


def assert_trimmed_reproduces_original(original_dir, trimmed_dir, id_map, sentences, hf,
                                       compare_transformers_tokenizer=True):
  """sltjax's tokenizer (SentencePiece itself) segments exactly as before trimming; transformers'
  matches it on unigram models such as mBART's. (On BPE-type SentencePiece models transformers'
  converted tokenizer already disagrees with SentencePiece before any trimming.)"""
  old, new = MBartTokenizer(str(original_dir)), MBartTokenizer(str(trimmed_dir))
  reference = transformers.MBartTokenizer.from_pretrained(str(trimmed_dir), src_lang='de_DE')
  assert new.vocab_size == len(reference) == len(id_map)
  assert id_map[new.lang_id('de_DE')] == old.lang_id('de_DE')
  assert id_map[new.mask_id] == old.mask_id
  for sentence in sentences:
    ids = new.encode(sentence)
    assert id_map[ids].tolist() == old.encode(sentence), sentence
    if compare_transformers_tokenizer:
      assert reference(sentence)['input_ids'] == ids + [EOS_ID, new.lang_id('de_DE')], sentence
  # Logits over the kept ids are the original model's, in sltjax and in transformers.
  source = [new.encode(s) + [EOS_ID, new.lang_id('de_DE')] for s in sentences[:2]]
  width = max(map(len, source))
  ids = np.array([s + [1] * (width - len(s)) for s in source])
  mask = (ids != 1).astype(np.int64)
  decoder_ids = ids[:, :3]
  with torch.no_grad():
    expected = hf(input_ids=torch.tensor(id_map[ids]), attention_mask=torch.tensor(mask),
                  decoder_input_ids=torch.tensor(id_map[decoder_ids])).logits.numpy()[..., id_map]
    trimmed_hf = transformers.MBartForConditionalGeneration.from_pretrained(str(trimmed_dir))
    got_hf = trimmed_hf.eval()(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                               decoder_input_ids=torch.tensor(decoder_ids)).logits.numpy()
  got = load_mbart(str(trimmed_dir))(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(decoder_ids))
  np.testing.assert_allclose(got_hf, expected, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4)


def test_trimmed_bpe_model_reproduces_the_original(bpe_model, tmp_path):
  original, hf, texts, glosses = bpe_model
  texts, glosses = texts[:15], glosses[:15]
  id_map = trim_mbart(str(original), str(tmp_path / 'trimmed'), texts, glosses)
  assert id_map[:4].tolist() == [0, 1, 2, 3]
  assert np.all(np.diff(id_map) > 0)  # the original order is kept
  assert len(id_map) < MBartTokenizer(str(original)).vocab_size
  saved = json.loads((tmp_path / 'trimmed' / 'id_map.json').read_text())['new_to_old']
  assert saved == id_map.tolist()
  assert not (tmp_path / 'trimmed.partial').exists()
  assert_trimmed_reproduces_original(original, tmp_path / 'trimmed', id_map,
                                     texts + [g.lower() for g in glosses], hf,
                                     compare_transformers_tokenizer=False)


@pytest.mark.skipif(not MBART_DIR.exists(), reason=f'shared mBART tokenizer not found at {MBART_DIR}')
def test_trimming_the_real_cc25_tokenizer_to_phoenix_dev(tmp_path):
  """The real mBART SentencePiece model (unigram) trimmed to PHOENIX-2014T dev sentences."""
  original = tmp_path / 'original'
  shutil.copytree(MBART_DIR, original)
  hf = save_mbart_with_tokenizer(original, MBartTokenizer(str(original)).vocab_size)
  texts = (SHARED_DATA / 'phoenix2014t' / 'dev.de').read_text(encoding='utf-8').splitlines()
  glosses = (SHARED_DATA / 'phoenix2014t' / 'dev.gloss').read_text(encoding='utf-8').splitlines()
  id_map = trim_mbart(str(original), str(tmp_path / 'trimmed'), texts, glosses)
  assert 500 < len(id_map) < 2454
  assert_trimmed_reproduces_original(original, tmp_path / 'trimmed', id_map,
                                     texts + [g.lower() for g in glosses], hf)
  # Sentences the trimming never saw (here: train's, as test's are when trimming on train +
  # dev) still tokenize: into smaller kept pieces, <unk> only for what no kept piece spells.
  trimmed = MBartTokenizer(str(tmp_path / 'trimmed'))
  unseen = (SHARED_DATA / 'phoenix2014t' / 'train.de').read_text(encoding='utf-8').splitlines()
  ids = [i for sentence in unseen[:1000] for i in trimmed.encode(sentence)]
  assert max(ids) < trimmed.vocab_size
  assert 0 < ids.count(trimmed.unk_id) < 0.02 * len(ids)


def test_tokenizer_and_model_of_different_vocabularies_are_refused(bpe_model, tmp_path):
  original, _, texts, _ = bpe_model
  other = tmp_path / 'other'
  shutil.copytree(original, other)
  config = json.loads((other / 'config.json').read_text())
  (other / 'config.json').write_text(json.dumps({**config, 'vocab_size': 99}))
  with pytest.raises(ValueError, match='vocab_size 99 but the tokenizer'):
    trim_mbart(str(other), str(tmp_path / 'out'), texts[:3])
  assert not (tmp_path / 'out').exists()


def test_gloss_embeddings_average_the_subword_rows(bpe_model):
  original, _, _, glosses = bpe_model
  tokenizer = MBartTokenizer(str(original))
  table = np.random.default_rng(0).normal(size=(tokenizer.vocab_size, 8)).astype(np.float32)
  names = sorted({g for line in glosses[:20] for g in line.split()})[:6]
  result = gloss_embeddings(table, tokenizer, names)
  assert result.shape == (6, 8)
  for row, name in zip(result, names):
    np.testing.assert_allclose(row, table[tokenizer.encode(name.lower())].mean(0), rtol=1e-6)
  with pytest.raises(ValueError, match="Gloss '' has no subword tokens"):
    gloss_embeddings(table, tokenizer, [''])
