"""Metrics against hand-computed values and sacrebleu/rouge-score directly."""
import math

import pytest
import sacrebleu

from sltjax.metrics import METRIC_NAMES, rouge_l_signjoey, translation_metrics


def test_perfect_and_disjoint():
  perfect = translation_metrics(['a b c d e'], ['a b c d e'])
  assert tuple(perfect) == METRIC_NAMES
  for key in METRIC_NAMES:
    assert perfect[key] == pytest.approx(100.0), key
  assert translation_metrics(['x y z w'], ['a b c d'])['bleu1'] == 0.0


def test_bleu_orders_by_hand():
  # hypothesis 'a b c d' vs reference 'a b c e': p1 = 3/4, p2 = 2/3, p3 = 1/2, p4 = 0 (+ brevity 1)
  scores = translation_metrics(['a b c d'], ['a b c e'])
  assert scores['bleu1'] == pytest.approx(75.0)
  assert scores['bleu2'] == pytest.approx(100 * math.sqrt(0.75 * 2 / 3))
  assert scores['bleu3'] == pytest.approx(100 * (0.75 * 2 / 3 * 0.5) ** (1 / 3))


def test_tokenize_none_keeps_tokenization():
  hyps, refs = ['das wetter , morgen .'], ['das wetter, morgen.']
  scores = translation_metrics(hyps, refs)
  assert scores['bleu4'] == pytest.approx(
      sacrebleu.corpus_bleu(hyps, [refs], tokenize='none').score)
  assert scores['bleu4_13a'] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
  assert scores['bleu4'] != pytest.approx(scores['bleu4_13a'])


def test_rouge_variants():
  # LCS('a b c', 'a c d e') = 2: P = 2/3, R = 1/2
  p, r = 2 / 3, 1 / 2
  assert rouge_l_signjoey('a b c', 'a c d e') == pytest.approx(
      (1 + 1.2 ** 2) * p * r / (r + 1.2 ** 2 * p))
  scores = translation_metrics(['a b c', 'x'], ['a c d e', 'y'])
  assert scores['rougeL_f'] == pytest.approx(100 * (2 * p * r / (p + r)) / 2)
  # non-ASCII words count (rouge-score's default tokenizer would drop them)
  assert translation_metrics(['schön grün'], ['schön grün'])['rougeL_f'] == pytest.approx(100)


def test_length_mismatch_is_an_error():
  with pytest.raises(ValueError, match='2 hypotheses for 1 references'):
    translation_metrics(['a', 'b'], ['a'])
