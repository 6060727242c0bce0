"""Pseudo-glosses (Wong et al., ICLR 2024): the content words of a spoken sentence, in spoken
order, as weak labels of what a signer signs; and their vocabulary.

A word is kept when its universal part of speech is one of KEPT_TAGS; German and English keep
its lowercased lemma, Chinese the word itself (as the release, which uses spaCy's
de_core_news_lg and zh_core_web_sm). Here the taggers install from the package registry:

  de  HanTa's German model (lemmas + STTS tags, mapped to universal tags)
  en  HanTa's English model (lemmas + BNC CLAWS5 tags), for synthetic_signs
  zh  jieba's POS tagger (ICTCLAS tags)
  spacy:<model>  a spaCy pipeline the user has installed (its lemmas and universal tags)

The vocabulary comes from the training sentences alone, sorted (the release builds it from every
split through an unordered set, so its order changes from run to run), without the pseudo-glosses
of >= 40% of the sentences; `Vocabulary.save` writes it into the workdir.
"""
import collections
import functools
import json
import logging
import re
from collections.abc import Iterable, Sequence

import numpy as np

from sltjax import storage

KEPT_TAGS = frozenset({'NOUN', 'NUM', 'ADV', 'PRON', 'PROPN', 'ADJ', 'VERB'})
LANGUAGES = ('de', 'en', 'zh')

# STTS (HanTa writes verb and adjective subtypes in brackets: 'VV(FIN)', 'ADJ(A)'), by the
# part before the bracket. Determiner-like pronouns (PPOSAT, PDAT, ...) are DET in UD.
_STTS = {'NN': 'NOUN', 'NE': 'PROPN', 'ADJ': 'ADJ', 'ADJA': 'ADJ', 'ADJD': 'ADJ', 'ADV': 'ADV',
         'PAV': 'ADV', 'PROAV': 'ADV', 'PWAV': 'ADV', 'CARD': 'NUM', 'VV': 'VERB', 'VA': 'AUX',
         'VM': 'AUX', 'PPER': 'PRON', 'PRF': 'PRON', 'PDS': 'PRON', 'PIS': 'PRON',
         'PPOSS': 'PRON', 'PRELS': 'PRON', 'PWS': 'PRON', 'PPOSAT': 'DET', 'PDAT': 'DET',
         'PIAT': 'DET', 'PIDAT': 'DET', 'PRELAT': 'DET', 'PWAT': 'DET', 'ART': 'DET',
         'APPR': 'ADP', 'APPRART': 'ADP', 'APPO': 'ADP', 'APZR': 'ADP', 'PTKVZ': 'ADP',
         'KON': 'CCONJ', 'KOKOM': 'CCONJ', 'KOUS': 'SCONJ', 'KOUI': 'SCONJ', 'PTKNEG': 'PART',
         'PTKZU': 'PART', 'PTKA': 'PART', 'PTKANT': 'PART', 'ITJ': 'INTJ', 'FM': 'X', 'XY': 'X',
         'TRUNC': 'X'}
# BNC CLAWS5 (HanTa's English model), by prefix; the first match wins.
_CLAWS5 = (('NP', 'PROPN'), ('NN', 'NOUN'), ('AJ', 'ADJ'), ('AVP', 'ADP'), ('AV', 'ADV'),
           ('CRD', 'NUM'), ('ORD', 'ADJ'), ('PN', 'PRON'), ('VV', 'VERB'), ('VB', 'AUX'),
           ('VD', 'AUX'), ('VH', 'AUX'), ('VM', 'AUX'), ('DPS', 'PRON'), ('AT', 'DET'),
           ('DT', 'DET'), ('PR', 'ADP'), ('CJ', 'CCONJ'), ('XX', 'PART'), ('TO', 'PART'),
           ('ITJ', 'INTJ'))
# jieba (ICTCLAS), by the first letter unless listed whole.
_JIEBA = {'nr': 'PROPN', 'ns': 'PROPN', 'nt': 'PROPN', 'nz': 'PROPN', 'nrt': 'PROPN',
          'nrfg': 'PROPN', 'vn': 'NOUN', 'an': 'NOUN', 'ad': 'ADV', 'eng': 'X',
          'n': 'NOUN', 't': 'NOUN', 's': 'NOUN', 'f': 'NOUN', 'v': 'VERB', 'a': 'ADJ',
          'b': 'ADJ', 'd': 'ADV', 'm': 'NUM', 'q': 'NUM', 'r': 'PRON', 'p': 'ADP', 'c': 'CCONJ',
          'u': 'PART', 'y': 'PART', 'e': 'INTJ', 'o': 'X', 'x': 'PUNCT', 'w': 'PUNCT',
          'z': 'ADJ', 'h': 'X', 'k': 'X', 'g': 'X', 'i': 'X', 'j': 'PROPN', 'l': 'X'}


def stts_to_universal(tag: str) -> str:
  return _STTS.get(tag.split('(')[0], 'PUNCT' if tag.startswith('$') else 'X')


def claws5_to_universal(tag: str) -> str:
  return next((universal for prefix, universal in _CLAWS5 if tag.startswith(prefix)), 'X')


def jieba_to_universal(flag: str) -> str:
  return _JIEBA.get(flag, _JIEBA.get(flag[:1], 'X'))


def words(sentence: str) -> list[str]:
  """Whitespace tokens with punctuation split off ('Norden.' -> 'Norden', '.')."""
  return re.findall(r"\w+(?:[-']\w+)*|[^\w\s]", sentence)


class PseudoGlosser:
  """sentence -> its pseudo-glosses, for one language (LANGUAGES or 'spacy:<model>')."""

  def __init__(self, language: str):
    self.language = language
    if language.startswith('spacy:'):
      import spacy  # pylint: disable=import-outside-toplevel
      self._spacy = spacy.load(language.split(':', 1)[1])
    elif language in ('de', 'en'):
      from HanTa import HanoverTagger  # pylint: disable=import-outside-toplevel
      model = {'de': 'morphmodel_ger.pgz', 'en': 'morphmodel_en.pgz'}[language]
      self._hanta = HanoverTagger.HanoverTagger(model)
    elif language == 'zh':
      import jieba  # pylint: disable=import-outside-toplevel
      import jieba.posseg  # pylint: disable=import-outside-toplevel
      jieba.setLogLevel(logging.WARNING)
      self._jieba = jieba.posseg.POSTokenizer(jieba.Tokenizer())
    else:
      raise ValueError(f'Pseudo-gloss language {language!r}; expected one of {LANGUAGES} or '
                       '"spacy:<installed model>".')

  @functools.lru_cache(maxsize=None)
  def __call__(self, sentence: str) -> tuple[str, ...]:
    if self.language.startswith('spacy:'):
      chinese = self.language.split(':', 1)[1].startswith('zh')
      return tuple((t.text if chinese else t.lemma_.lower()) for t in self._spacy(sentence)
                   if t.pos_ in KEPT_TAGS)
    if self.language == 'zh':
      return tuple(w.word for w in self._jieba.cut(sentence)
                   if jieba_to_universal(w.flag) in KEPT_TAGS)
    tokens = words(sentence)
    if not tokens:
      return ()
    # Case-insensitive: PHOENIX-2014T's sentences are lowercased (German nouns included).
    tagged = self._hanta.tag_sent(tokens, taglevel=1, casesensitive=False)
    to_universal = stts_to_universal if self.language == 'de' else claws5_to_universal
    return tuple(lemma.lower() for _, lemma, tag in tagged if to_universal(tag) in KEPT_TAGS)


class Vocabulary:
  """The pseudo-glosses a model predicts, in a fixed order."""

  def __init__(self, glosses: Sequence[str], language: str):
    self.glosses, self.language = list(glosses), language
    self.index = {g: i for i, g in enumerate(self.glosses)}

  def __len__(self):
    return len(self.glosses)

  @classmethod
  def build(cls, sentences: Iterable[str], glosser: PseudoGlosser,
            max_sentence_fraction: float = 0.4) -> 'Vocabulary':
    """Sorted pseudo-glosses of `sentences` (the training split), without those found in
    max_sentence_fraction or more of them."""
    sentences = list(sentences)
    counts = collections.Counter(g for s in sentences for g in set(glosser(s)))
    limit = max_sentence_fraction * len(sentences)
    return cls(sorted(g for g, n in counts.items() if n < limit), glosser.language)

  def targets(self, sentence_glosses: Sequence[str]) -> np.ndarray:
    """[len(self)] float32 multi-hot of the pseudo-glosses of one sentence (unknown ignored)."""
    out = np.zeros(len(self), np.float32)
    out[[self.index[g] for g in sentence_glosses if g in self.index]] = 1.0
    return out

  def save(self, path: str) -> None:
    storage.write_text(path, json.dumps({'language': self.language,
                                         'pseudo_glosses': self.glosses},
                                        ensure_ascii=False, indent=0))

  @classmethod
  def load(cls, path: str) -> 'Vocabulary':
    data = json.loads(storage.read_text(path))
    return cls(data['pseudo_glosses'], data['language'])
