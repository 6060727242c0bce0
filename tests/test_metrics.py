"""Metrics against hand-computed values and sacrebleu/rouge-score directly."""
import math

import numpy as np
import pytest
import sacrebleu

from sltjax.metrics import (METRIC_NAMES, RETRIEVAL_METRIC_NAMES, retrieval_metrics,
                            rouge_l_signjoey, sign_retrieval_metrics, translation_metrics)


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


def test_retrieval_ranks_count_ties_against_the_model():
  scores = np.array([[0.9, 0.1, 0.2],   # match first: rank 1
                     [0.5, 0.5, 0.1],   # a tie with the match: rank 2, not 1
                     [0.7, 0.8, 0.3]])  # two items above the match: rank 3
  assert retrieval_metrics(scores) == {'r1': pytest.approx(100 / 3), 'r5': 100.0, 'r10': 100.0,
                                       'medr': 2.0, 'mnr': 2.0}
  ranks = retrieval_metrics(scores, matches=[1, 0, 1])  # ranks 3, 2 (a tie), 1
  assert ranks == {'r1': pytest.approx(100 / 3), 'r5': 100.0, 'r10': 100.0, 'medr': 2.0,
                   'mnr': 2.0}
  assert retrieval_metrics(scores, matches=[0, 1, 1])['mnr'] == pytest.approx(4 / 3)  # 1, 2, 1
  assert retrieval_metrics(np.zeros((12, 12)))['r10'] == 0.0  # all tied: every match last
  with pytest.raises(ValueError, match='one match per query'):
    retrieval_metrics(scores, matches=[0, 1])


def test_sign_retrieval_groups_the_videos_of_a_sentence():
  """Videos 0 and 2 show sentence 'a'; texts are the videos' sentences (column 2 repeats 'a')."""
  sentences = ['a', 'b', 'a', 'c']
  v2t = np.array([[0.9, 0.1, 0.9, 0.2],
                  [0.2, 0.8, 0.2, 0.7],
                  [0.1, 0.3, 0.1, 0.6],   # the second 'a' video prefers 'c'
                  [0.0, 0.6, 0.0, 0.5]])  # the 'c' video prefers 'b'
  scores = sign_retrieval_metrics(v2t, v2t, sentences)
  # V2T: each video ranks the 3 distinct sentences: ranks 1, 1, 3, 2.
  assert scores['v2t_r1'] == 50.0 and scores['v2t_medr'] == 1.5 and scores['v2t_mnr'] == 1.75
  # T2V: 'a' ranks groups {0, 2} (best 0.9), {1}, {3}: 1; 'b': group {1} 0.8 vs {3} 0.6: 1;
  # 'c': group {3} 0.5 against {1} 0.7 and {0, 2} 0.6: 3.
  assert scores['t2v_r1'] == pytest.approx(200 / 3) and scores['t2v_medr'] == 1.0
  assert scores['t2v_mnr'] == pytest.approx(5 / 3)
  assert set(scores) == set(RETRIEVAL_METRIC_NAMES)
  fused = sign_retrieval_metrics(v2t, np.zeros_like(v2t), sentences)  # 0.5 * v2t: same ranks
  assert fused == scores


def test_pseudo_gloss_f1_by_hand():
  from sltjax.experiments.sign2gpt import pseudo_gloss_f1  # pylint: disable=import-outside-toplevel
  scores = [[0.9, 0.2, 0.6, 0.0], [0.7, 0.8, 0.1, 0.5]]
  targets = [[1, 0, 0, 0], [1, 1, 1, 0]]
  # predictions (> 0.5): [1,0,1,0], [1,1,0,0]: tp 3 (class 0 twice, class 1), fp 1 (class 2 in
  # video 0), fn 1 (class 2 in video 1); class 3 never occurs and is left out of the mean.
  out = pseudo_gloss_f1(scores, targets)
  assert out['pseudo_gloss_f1'] == pytest.approx(100 * 3 / (3 + 0.5 * 2))
  assert out['pseudo_gloss_class_f1'] == pytest.approx(100 * (1.0 + 1.0 + 0.0) / 3)
