"""CTC loss and decoding on hand-computable cases; WER and the PHOENIX-2014T clean-up."""
import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from sltjax.ctc_decoding import ctc_beam_decode, ctc_greedy_decode
from sltjax.losses import ctc_loss_sum, frame_gloss_cross_entropy, sign_translation_loss
from sltjax.metrics import clean_phoenix_2014t, gloss_metrics


def _log(probs):
  return np.log(np.asarray(probs, np.float64))


def test_beam_search_sums_alignments_where_greedy_takes_the_best_path():
  # Greedy: blank blank (0.36). Beam: "a" = a a + a - + - a = 0.16 + 0.24 + 0.24 = 0.64.
  log_probs = _log([[0.6, 0.4], [0.6, 0.4]])
  assert ctc_greedy_decode(log_probs, 2) == []
  assert ctc_beam_decode(log_probs, 2, beam_size=3) == [1]


def test_repeats_collapse_unless_a_blank_separates_them():
  one_hot = lambda ids: _log(np.eye(3)[ids] * 0.98 + 0.01)
  assert ctc_greedy_decode(one_hot([1, 1, 2, 2, 2]), 5) == [1, 2]
  assert ctc_greedy_decode(one_hot([1, 0, 1, 2]), 4) == [1, 1, 2]
  assert ctc_beam_decode(one_hot([1, 1, 0, 1, 2, 2]), 6, beam_size=4) == [1, 1, 2]
  assert ctc_greedy_decode(one_hot([1, 2, 2, 1]), 2) == [1, 2]  # only the valid frames count


def test_beam_decode_finds_the_most_probable_labelling_of_a_random_case():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 3)) * 2
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  totals = {}
  for path in itertools.product(range(3), repeat=5):  # every alignment, collapsed
    labels = tuple(c for i, c in enumerate(path) if (i == 0 or c != path[i - 1]) and c != 0)
    totals[labels] = totals.get(labels, 0.0) + np.exp(sum(log_probs[t, c]
                                                           for t, c in enumerate(path)))
  assert tuple(ctc_beam_decode(log_probs, 5, beam_size=8)) == max(totals, key=totals.get)


def test_ctc_loss_is_the_negative_log_of_all_alignments():
  probs = np.array([[0.6, 0.3, 0.1], [0.5, 0.2, 0.3], [0.1, 0.1, 0.8]])  # [T, K]
  # Label [1] over 3 frames: alignments with one run of 1 and blanks elsewhere.
  p = (probs[0, 1] * probs[1, 0] * probs[2, 0] + probs[0, 0] * probs[1, 1] * probs[2, 0]
       + probs[0, 0] * probs[1, 0] * probs[2, 1] + probs[0, 1] * probs[1, 1] * probs[2, 0]
       + probs[0, 0] * probs[1, 1] * probs[2, 1] + probs[0, 1] * probs[1, 1] * probs[2, 1])
  logits = jnp.log(jnp.asarray(probs, jnp.float32))[None].repeat(2, axis=0)  # [2, 3, 3]
  loss = ctc_loss_sum(logits, jnp.ones((2, 3)), jnp.array([[1, 0], [0, 0]]),
                      jnp.array([[1, 0], [0, 0]]))  # row 2 has no glosses (a filler row)
  np.testing.assert_allclose(float(loss), -np.log(p), rtol=1e-5)


def test_wer_counts_substitutions_deletions_and_insertions():
  metrics = gloss_metrics(['A X C', 'D E F G', ''], ['A B C', 'D E', 'H'])
  # 1 substitution, 2 insertions, 1 deletion over 6 reference glosses.
  assert metrics == pytest.approx({'wer': 400 / 6, 'sub_rate': 100 / 6, 'del_rate': 100 / 6,
                                   'ins_rate': 200 / 6})
  with pytest.raises(ValueError, match=r'References \[0\] are empty'):
    gloss_metrics(['A'], [''])


def test_phoenix_cleanup_applies_the_standard_rules():
  assert clean_phoenix_2014t('__ON__ loc-REGION REGEN-PLUSPLUS __EMOTION__ __OFF__') == 'REGION REGEN'
  assert clean_phoenix_2014t('WIE AUSSEHEN MORGEN MORGEN') == 'WIE-AUSSEHEN MORGEN'
  assert clean_phoenix_2014t('cl-KOMMEN NORDRAUM') == 'KOMMEN NORD'
  assert clean_phoenix_2014t('WETTER S C H') == 'WETTER S+C+H'  # spelled letters joined
  assert clean_phoenix_2014t('WETTER A B WETTER') == 'WETTER A+B WETTER'
  # Rule order as in the reference script: its quirk on a sentence-initial triple is kept.
  assert clean_phoenix_2014t('A B C WETTER') == 'A B+C WETTER'
  # The clean-up changes the score: a spelled word against its joined form.
  assert gloss_metrics(['WETTER S C H'], ['WETTER S+C+H'], 'phoenix2014t')['wer'] == 0
  assert gloss_metrics(['WETTER S C H'], ['WETTER S+C+H'])['wer'] == 150  # 1 sub + 2 ins


def test_frame_gloss_cross_entropy_takes_each_window_middle_frame_and_sums_per_video():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 5)).astype(np.float32)  # 3 positions of 4 frames each
  frame_ids = rng.integers(0, 5, size=(2, 12)).astype(np.int32)
  mask = np.array([[1, 1, 1], [1, 1, 0]], np.int32)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -sum(log_probs[b, t, frame_ids[b, 4 * t + 2]] for b in range(2) for t in range(3)
                  if mask[b, t]) / 2
  np.testing.assert_allclose(frame_gloss_cross_entropy(jnp.asarray(logits), jnp.asarray(mask),
                                                       jnp.asarray(frame_ids)), expected,
                             rtol=1e-5)
  out = {'gloss_logits': jnp.asarray(logits), 'gloss_mask': jnp.asarray(mask)}
  batch = {'gloss_ids': jnp.array([[1, 2], [3, 0]]), 'gloss_mask': jnp.array([[1, 1], [1, 0]]),
           'frame_gloss_ids': jnp.asarray(frame_ids)}
  ctc_only, metrics = sign_translation_loss(out, batch, ctc_weight=1.0, translation_weight=1.0)
  both, both_metrics = sign_translation_loss(out, batch, ctc_weight=1.0, translation_weight=1.0,
                                             frame_gloss_weight=0.5)
  assert 'frame_gloss' not in metrics
  np.testing.assert_allclose(both, ctc_only + 0.5 * expected, rtol=1e-5)
  np.testing.assert_allclose(both_metrics['frame_gloss'], expected, rtol=1e-5)
