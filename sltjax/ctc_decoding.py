"""CTC decoding of gloss logits into gloss id sequences (blank 0, repeats collapsed).

Greedy: the best class per frame, repeats merged, blanks dropped. Beam: CTC prefix beam search
(probability of a prefix summed over all its alignments, tracked separately for paths ending in
blank and in a label, so "a a" needs a blank between the two a's), keeping `beam_size` prefixes
and extending them, at each frame, with the `beam_size` most probable labels. Runs on the host
in numpy: the work is tiny next to the network and the prefix sets are ragged.
"""
from collections import defaultdict

import numpy as np

BLANK_ID = 0


def ctc_greedy_decode(log_probs: np.ndarray, length: int) -> list[int]:
  """log_probs [T, K] (the first `length` frames are valid) -> label ids."""
  best = np.argmax(log_probs[:length], axis=-1)
  collapsed = [int(c) for i, c in enumerate(best) if i == 0 or c != best[i - 1]]
  return [c for c in collapsed if c != BLANK_ID]


def ctc_beam_decode(log_probs: np.ndarray, length: int, beam_size: int) -> list[int]:
  """log_probs [T, K] normalised (log-softmax) -> the most probable label sequence found."""
  if beam_size <= 1:
    return ctc_greedy_decode(log_probs, length)
  log_probs = np.asarray(log_probs, np.float64)
  # prefix -> (log p of alignments ending in blank, ... ending in the prefix's last label)
  beams = {(): (0.0, -np.inf)}
  for t in range(length):
    frame = log_probs[t]
    labels = [int(c) for c in np.argsort(-frame)[:beam_size + 1] if c != BLANK_ID][:beam_size]
    grown = defaultdict(lambda: [-np.inf, -np.inf])
    for prefix, (p_blank, p_label) in beams.items():
      total = np.logaddexp(p_blank, p_label)
      entry = grown[prefix]
      entry[0] = np.logaddexp(entry[0], total + frame[BLANK_ID])  # stay, emitting a blank
      if prefix:  # stay, repeating the last label (merged by CTC)
        entry[1] = np.logaddexp(entry[1], p_label + frame[prefix[-1]])
      for c in labels:
        # A repeated label starts a new symbol only after a blank.
        source = p_blank if prefix and c == prefix[-1] else total
        extended = grown[prefix + (c,)]
        extended[1] = np.logaddexp(extended[1], source + frame[c])
    beams = dict(sorted(grown.items(), key=lambda kv: -np.logaddexp(*kv[1]))[:beam_size])
  best = max(beams.items(), key=lambda kv: np.logaddexp(*kv[1]))[0]
  return list(best)


def ctc_decode_batch(log_probs: np.ndarray, lengths: np.ndarray, beam_size: int) -> list[list[int]]:
  """log_probs [B, T, K], lengths [B] -> one label id list per row."""
  return [ctc_beam_decode(lp, int(n), beam_size) for lp, n in zip(log_probs, lengths)]
