"""Pseudo-glosses of fixed German, English and Chinese sentences, the universal tag mappings,
and the vocabulary: training sentences only, sorted, frequent ones dropped, saved and loaded."""
import numpy as np
import pytest

from sltjax.data.pseudo_glosses import (PseudoGlosser, Vocabulary, claws5_to_universal,
                                        jieba_to_universal, stts_to_universal, words)


@pytest.fixture(scope='module')
def glossers():
  return {language: PseudoGlosser(language) for language in ('de', 'en', 'zh')}


@pytest.mark.parametrize('language,sentence,expected', [
    # PHOENIX-2014T sentences are lowercased: nouns are still recognised, lemmatised.
    ('de', 'am tag wechselhaft mit sonne und wolken im süden zum teil kräftige gewitter',
     ['tag', 'wechselhaft', 'sonne', 'wolke', 'süden', 'teil', 'kräftig', 'gewitter']),
    ('de', 'und nun die wettervorhersage für morgen donnerstag den zwölften august',
     ['nun', 'wettervorhersage', 'morgen', 'donnerstag', 'zwölft', 'august']),
    ('de', 'morgen regnet es im norden bei temperaturen von sieben grad',
     ['morgen', 'regnen', 'es', 'norden', 'temperatur', 'sieben', 'grad']),
    ('de', 'Ich sehe ihn dort mit meinem Bruder, er lacht.',
     ['ich', 'sehen', 'ihn', 'dort', 'bruder', 'er', 'lachen']),
    ('en', 'the weather is nice in the north tomorrow', ['weather', 'nice', 'north', 'tomorrow']),
    ('en', 'She gave me two red apples yesterday.',
     ['she', 'give', 'i', 'two', 'red', 'apple', 'yesterday']),
    ('zh', '我们三个人一起去北京看朋友。', ['我们', '三个', '人', '一起', '去', '北京', '看', '朋友']),
    ('zh', '他很高兴地说谢谢。', ['他', '很', '高兴', '说', '谢谢']),
])
def test_pseudo_glosses_of_fixed_sentences(glossers, language, sentence, expected):
  assert list(glossers[language](sentence)) == expected


def test_tag_mappings_keep_content_words_only():
  assert [stts_to_universal(t) for t in ('NN', 'NE', 'VV(FIN)', 'VA(FIN)', 'ADJ(A)', 'CARD',
                                          'PPER', 'PPOSAT', 'ART', 'APPRART', '$.')] == [
      'NOUN', 'PROPN', 'VERB', 'AUX', 'ADJ', 'NUM', 'PRON', 'DET', 'DET', 'ADP', 'PUNCT']
  assert [claws5_to_universal(t) for t in ('NN1', 'NP0', 'VVD', 'VBZ', 'AJ0', 'AV0', 'AVP',
                                           'CRD', 'PNP', 'AT0')] == [
      'NOUN', 'PROPN', 'VERB', 'AUX', 'ADJ', 'ADV', 'ADP', 'NUM', 'PRON', 'DET']
  assert [jieba_to_universal(t) for t in ('n', 'nr', 'ns', 'v', 'vn', 'a', 'd', 'm', 'r', 'x',
                                          'u')] == [
      'NOUN', 'PROPN', 'PROPN', 'VERB', 'NOUN', 'ADJ', 'ADV', 'NUM', 'PRON', 'PUNCT', 'PART']
  assert words('Norden. Es regnet, oder?') == ['Norden', '.', 'Es', 'regnet', ',', 'oder', '?']
  with pytest.raises(ValueError, match='Pseudo-gloss language'):
    PseudoGlosser('fr')


def test_vocabulary_is_sorted_from_training_sentences_without_frequent_glosses(glossers,
                                                                             tmp_path):
  train = ['morgen regnet es im norden', 'morgen scheint die sonne im süden',
           'im norden gewitter', 'morgen wolken']
  vocabulary = Vocabulary.build(train, glossers['de'])
  # 'morgen' is in 3 of 4 sentences (>= 40%): dropped; 'norden' in 2 of 4 (50%): dropped too.
  assert vocabulary.glosses == ['es', 'gewitter', 'regnen', 'scheinen', 'sonne', 'süden',
                                'wolke']
  assert Vocabulary.build(list(reversed(train)), glossers['de']).glosses == vocabulary.glosses
  targets = vocabulary.targets(glossers['de']('es regnet mit gewitter in berlin'))
  np.testing.assert_array_equal(targets, [1, 1, 1, 0, 0, 0, 0])
  vocabulary.save(str(tmp_path / 'pseudo_glosses.json'))
  loaded = Vocabulary.load(str(tmp_path / 'pseudo_glosses.json'))
  assert (loaded.glosses, loaded.language) == (vocabulary.glosses, 'de')


def test_word_vectors_from_a_fasttext_file_and_trained_deterministically(tmp_path):
  from gensim.models import FastText  # pylint: disable=import-outside-toplevel
  from gensim.models.fasttext import save_facebook_model  # pylint: disable=import-outside-toplevel
  from sltjax.data.word_vectors import (  # pylint: disable=import-outside-toplevel
      BUCKETS_PER_NGRAM, MAX_BUCKETS, fasttext_vectors, ngram_buckets, trained_vectors)
  sentences = [['morgen', 'regnen', 'norden'], ['sonne', 'süden'], ['gewitter', 'norden']] * 20
  words = ['norden', 'sonne', 'unbekannt']
  first = trained_vectors(sentences, words, dim=8)
  # '<ab>' has 3 n-grams of 3-6 characters ('<ab', 'ab>', '<ab>'); a large vocabulary gets
  # FastText's 2M buckets.
  assert ngram_buckets({'ab'}) == 3 * BUCKETS_PER_NGRAM
  assert ngram_buckets({f'w{i:06d}' for i in range(100_000)}) == MAX_BUCKETS
  assert first.shape == (3, 8) and first.dtype == np.float32
  np.testing.assert_array_equal(trained_vectors(sentences, words, dim=8), first)
  assert not np.array_equal(trained_vectors(sentences, words, dim=8, seed=1), first)
  model = FastText(vector_size=8, min_count=1, workers=1, seed=0, epochs=2)
  model.build_vocab(corpus_iterable=sentences)
  model.train(corpus_iterable=sentences, total_examples=len(sentences), epochs=2)
  save_facebook_model(model, str(tmp_path / 'cc.de.8.bin'))
  loaded = fasttext_vectors(str(tmp_path / 'cc.de.8.bin'), words)
  np.testing.assert_allclose(loaded, np.stack([model.wv[w] for w in words]), rtol=1e-6)
