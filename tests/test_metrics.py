"""Metrics against hand-computed values and sacrebleu/rouge-score directly."""
import math

import numpy as np
import pytest
import sacrebleu

from sltjax.metrics import METRIC_NAMES, rouge_l_signjoey, translation_metrics


def test_perfect_and_disjoint():
  perfect = translation_metrics(['a b c d e'], ['a b c d e'])
  assert set(perfect) == set(METRIC_NAMES) - {'bleu4_zh'}
  for key in perfect:
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


def test_chinese_is_scored_over_characters_with_sacrebleus_zh_tokenizer():
  """CSL-Daily's protocol: every character a token (punctuation included), whatever spaces the
  model wrote; on Chinese text that equals sacrebleu's zh tokenizer."""
  rng = np.random.default_rng(0)
  characters = list('今天明天北方南方下雨下雪有风很大不会。，')
  refs = [''.join(rng.choice(characters, rng.integers(4, 12))) for _ in range(30)]
  hyps = [' '.join(r[:len(r) // 2]) + ''.join(rng.choice(characters, 3)) for r in refs]
  scores = translation_metrics(hyps, refs, char_level=True, sacrebleu_tokenize='zh')
  for n in (1, 4):
    assert scores[f'bleu{n}'] == pytest.approx(sacrebleu.metrics.BLEU(
        tokenize='zh', max_ngram_order=n).corpus_score(hyps, [refs]).score)
  assert scores['bleu4_zh'] == pytest.approx(scores['bleu4'])
  assert 'bleu4_13a' not in scores
  assert translation_metrics(['今天 下雨。'], ['今天下雨 。'], char_level=True)['bleu4'] == (
      pytest.approx(100))
  assert translation_metrics(['今天 下雨。'], ['今天下雨 。'])['bleu1'] == 0  # word level
  assert scores['rougeL_signjoey'] == pytest.approx(100 * np.mean([
      rouge_l_signjoey(' '.join(h.replace(' ', '')), ' '.join(r)) for h, r in zip(hyps, refs)]))
