"""Translation metrics under the SLT literature's protocol and the standard signatures.

- `bleu1`..`bleu4`: sacrebleu corpus BLEU with tokenize='none' on the already tokenized,
  lowercased text (the signjoey convention the SLT papers follow); cumulative n-gram orders 1..4.
- `bleu4_13a`: sacrebleu's default signature (13a tokenizer), comparable with MT papers; for
  Chinese `bleu4_zh`, sacrebleu's zh tokenizer.
- Chinese (CSL-Daily, `char_level`): BLEU-1..4 and ROUGE over characters, every character a
  token, punctuation included.
- `chrf`: sacrebleu chrF (character 6-grams, beta 2).
- `rougeL_signjoey`: sentence ROUGE-L F with beta=1.2 (signjoey/COCO), averaged, x100.
- `rougeL_f`: rouge-score's ROUGE-L F1 (beta=1, whitespace tokens), averaged, x100.

Retrieval (`retrieval_metrics`, `sign_retrieval_metrics`): R@1/5/10 in percent and the median
and mean rank (1-based) of each query's match, ties counted against the model, on CiCo's fused
score with the videos of one sentence grouped (REFERENCE.md).

Gloss recognition (`gloss_metrics`): corpus WER = (substitutions + deletions + insertions) /
reference glosses (jiwer), x100, with PHOENIX-2014T's standard clean-up applied to hypotheses and
references first when asked.
"""
import itertools
import re
from collections.abc import Sequence

import jiwer

import numpy as np
import sacrebleu

METRIC_NAMES = ('bleu1', 'bleu2', 'bleu3', 'bleu4', 'bleu4_13a', 'bleu4_zh', 'chrf',
                'rougeL_signjoey', 'rougeL_f')
GLOSS_METRIC_NAMES = ('wer', 'sub_rate', 'del_rate', 'ins_rate')
RETRIEVAL_METRIC_NAMES = tuple(f'{direction}_{name}' for direction in ('t2v', 'v2t')
                               for name in ('r1', 'r5', 'r10', 'medr', 'mnr'))
# Every metric an evaluation may report, with its direction: True where higher is better.
# Best-checkpoint selection and config validation read it. Here the metric families computed
# below; a system adds its own with register_metric when its module is imported.
HIGHER_IS_BETTER: dict[str, bool] = {**{name: True for name in METRIC_NAMES},
                                     **{name: False for name in GLOSS_METRIC_NAMES},
                                     **{name: not name.endswith(('medr', 'mnr'))
                                        for name in RETRIEVAL_METRIC_NAMES}}


def register_metric(name: str, higher_is_better: bool) -> None:
  """Declares a metric's direction (e.g. 'r1' True, 'median_rank' False)."""
  if HIGHER_IS_BETTER.get(name, higher_is_better) != higher_is_better:
    raise ValueError(f'Metric {name!r} is already registered with the other direction.')
  HIGHER_IS_BETTER[name] = higher_is_better


def selection_score(metrics: dict[str, float], name: str) -> float:
  """metrics[name] as a higher-is-better number, for choosing the best checkpoint."""
  return metrics[name] if HIGHER_IS_BETTER[name] else -metrics[name]


def _bleu(hypotheses, references, max_order: int, tokenize: str) -> float:
  # force: the SLT references are tokenized by design; sacrebleu would warn on every call.
  bleu = sacrebleu.metrics.BLEU(tokenize=tokenize, max_ngram_order=max_order, force=True)
  return bleu.corpus_score(hypotheses, [references]).score


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
  previous = [0] * (len(b) + 1)
  for x in a:
    current = [0]
    for j, y in enumerate(b):
      current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
    previous = current
  return previous[-1]


def rouge_l_signjoey(hypothesis: str, reference: str, beta: float = 1.2) -> float:
  """Sentence ROUGE-L F-measure with recall weighted by beta (signjoey's rouge.py formula)."""
  hyp, ref = hypothesis.split(), reference.split()
  lcs = _lcs_length(hyp, ref)
  if lcs == 0:
    return 0.0
  precision, recall = lcs / len(hyp), lcs / len(ref)
  return (1 + beta ** 2) * precision * recall / (recall + beta ** 2 * precision)


def characters(text: str) -> str:
  """Every non-space character as a token: '今天 下雨。' -> '今 天 下 雨 。'."""
  return ' '.join(ch for ch in text if not ch.isspace())


def translation_metrics(hypotheses: Sequence[str], references: Sequence[str], *,
                        char_level: bool = False,
                        sacrebleu_tokenize: str = '13a') -> dict[str, float]:
  """All metrics above for parallel lists of hypothesis and reference sentences; `char_level`
  and `sacrebleu_tokenize` as the dataset's protocol says (config.eval, configs/common.py)."""
  if len(hypotheses) != len(references):
    raise ValueError(f'{len(hypotheses)} hypotheses for {len(references)} references.')
  raw_hypotheses, raw_references = list(hypotheses), list(references)
  tokens = characters if char_level else (lambda text: text)
  hypotheses, references = map(tokens, raw_hypotheses), map(tokens, raw_references)
  hypotheses, references = list(hypotheses), list(references)
  scores = {f'bleu{n}': _bleu(hypotheses, references, n, 'none') for n in range(1, 5)}
  scores[f'bleu4_{sacrebleu_tokenize}'] = _bleu(raw_hypotheses, raw_references, 4,
                                                sacrebleu_tokenize)
  scores['chrf'] = sacrebleu.corpus_chrf(raw_hypotheses, [raw_references]).score
  scores['rougeL_signjoey'] = 100 * float(np.mean(
      [rouge_l_signjoey(h, r) for h, r in zip(hypotheses, references)]))
  # rouge-score imports nltk and with it scipy.stats (2 s): imported here, not by every process
  # that imports the metric names. Whitespace tokens keep the non-ASCII words (umlauts, Chinese)
  # that rouge-score's default tokenizer drops.
  from rouge_score import rouge_scorer  # pylint: disable=import-outside-toplevel
  scorer = rouge_scorer.RougeScorer(['rougeL'], tokenizer=_WhitespaceTokenizer())
  scores['rougeL_f'] = 100 * float(np.mean(
      [scorer.score(r, h)['rougeL'].fmeasure for h, r in zip(hypotheses, references)]))
  return scores


def protocol(eval_config) -> dict:
  """translation_metrics' keyword arguments from config.eval (older configs: word level, 13a)."""
  return {'char_level': eval_config.get('char_level', False),
          'sacrebleu_tokenize': eval_config.get('sacrebleu_tokenize', '13a')}


class _WhitespaceTokenizer:
  """rouge-score's tokenizer interface (rouge_score.tokenizers.Tokenizer), on whitespace."""

  def tokenize(self, text):
    return text.split()


# PHOENIX-2014T's gloss clean-up (signjoey's phoenix_cleanup, the protocol every PHOENIX-2014T WER
# uses), as (pattern, replacement, times applied).
_SINGLE_LETTER_JOIN = (r'([ +][A-Z]) ([A-Z][ +])', r'\1+\2', 3)
_REPEATED_GLOSS = (r'(?<![\w-])(\b[A-Z]+(?![\w-])) \1(?![\w-])', r'\1', 4)
PHOENIX_2014T_CLEANUP = (
    (r'__LEFTHAND__', '', 1), (r'__EPENTHESIS__', '', 1), (r'__EMOTION__', '', 1),
    (r'\b__[^_ ]*__\b', '', 1),
    (r'\bloc-([^ ]*)\b', r'\1', 1), (r'\bcl-([^ ]*)\b', r'\1', 1),
    (r'\b([^ ]*)-PLUSPLUS\b', r'\1', 1), (r'\b([A-Z][A-Z]*)RAUM\b', r'\1', 1),
    (r'WIE AUSSEHEN', 'WIE-AUSSEHEN', 1),
    (r'^([A-Z]) ([A-Z][+ ])', r'\1+\2', 1), (r'[ +]([A-Z]) ([A-Z]) ', r' \1+\2 ', 1),
    _SINGLE_LETTER_JOIN,
    (r'([ +]SCH) ([A-Z][ +])', r'\1+\2', 1), (r'([ +]NN) ([A-Z][ +])', r'\1+\2', 1),
    (r'([ +][A-Z]) (NN[ +])', r'\1+\2', 1), (r'([ +][A-Z]) ([A-Z])$', r'\1+\2', 1),
    (r' +', ' ', 1), _REPEATED_GLOSS, (r' +', ' ', 1),
)


def clean_phoenix_2014t(glosses: str) -> str:
  """A PHOENIX-2014T gloss line after the standard clean-up (then consecutive repeats merged)."""
  line = glosses.strip()
  for pattern, replacement, times in PHOENIX_2014T_CLEANUP:
    for _ in range(times):
      line = re.sub(pattern, replacement, line)
  return ' '.join(g for g, _ in itertools.groupby(line.split()))


def gloss_metrics(hypotheses: Sequence[str], references: Sequence[str],
                  cleanup: str = 'none') -> dict[str, float]:
  """Corpus WER and its substitution/deletion/insertion rates (x100).

  cleanup: 'none' or 'phoenix2014t' (applied to both sides). Empty references are refused.
  """
  if len(hypotheses) != len(references):
    raise ValueError(f'{len(hypotheses)} hypotheses for {len(references)} references.')
  if cleanup not in ('none', 'phoenix2014t'):
    raise ValueError(f'gloss clean-up {cleanup!r}; expected "none" or "phoenix2014t".')
  clean = clean_phoenix_2014t if cleanup == 'phoenix2014t' else str.strip
  hypotheses = [clean(h) for h in hypotheses]
  references = [clean(r) for r in references]
  empty = [i for i, r in enumerate(references) if not r]
  if empty:
    raise ValueError(f'References {empty[:5]} are empty: WER needs at least one gloss per '
                     'reference.')
  out = jiwer.process_words(references, hypotheses)
  words = out.hits + out.substitutions + out.deletions
  return {'wer': 100 * (out.substitutions + out.deletions + out.insertions) / words,
          'sub_rate': 100 * out.substitutions / words, 'del_rate': 100 * out.deletions / words,
          'ins_rate': 100 * out.insertions / words}


def retrieval_metrics(scores, matches=None) -> dict[str, float]:
  """{'r1', 'r5', 'r10', 'medr', 'mnr'} of scores [queries, items] (higher = better match),
  where matches[q] is the index of query q's correct item (default: q). An item scored equal
  to the match ranks before it (ties count against the model)."""
  scores = np.asarray(scores, np.float64)
  matches = np.arange(len(scores)) if matches is None else np.asarray(matches)
  if scores.ndim != 2 or len(matches) != len(scores):
    raise ValueError(f'scores {scores.shape} and {len(matches)} matches: expected [queries, '
                     'items] and one match per query.')
  correct = scores[np.arange(len(scores)), matches][:, None]
  others = np.ones(scores.shape, bool)
  others[np.arange(len(scores)), matches] = False
  ranks = 1 + np.sum((scores >= correct) & others, axis=1)  # [queries], 1 = first
  return {**{f'r{k}': 100.0 * float(np.mean(ranks <= k)) for k in (1, 5, 10)},
          'medr': float(np.median(ranks)), 'mnr': float(np.mean(ranks))}


def sign_retrieval_metrics(v2t, t2v, video_sentences: Sequence[str]) -> dict[str, float]:
  """t2v_* and v2t_* (RETRIEVAL_METRIC_NAMES) of video-to-text and text-to-video scores
  [videos, texts] of a split whose video i shows sentence video_sentences[i] and whose texts are
  the same list. Scores are fused, 0.5 * v2t + 0.5 * t2v, as CiCo does; a sentence shown by
  several videos is one text: each video ranks the distinct sentences, and each sentence ranks
  the sentence groups of videos, a group scoring as its best video."""
  fused = 0.5 * np.asarray(v2t, np.float64) + 0.5 * np.asarray(t2v, np.float64)
  sentences = sorted(set(video_sentences))
  sentence_index = {s: i for i, s in enumerate(sentences)}
  group = np.array([sentence_index[s] for s in video_sentences])  # [videos]
  first_text = np.array([video_sentences.index(s) for s in sentences])  # a column per sentence
  video_vs_sentence = fused[:, first_text]  # [videos, sentences]
  sentence_vs_group = np.stack([video_vs_sentence[group == g].max(axis=0)
                                for g in range(len(sentences))], axis=1)  # [sentences, groups]
  return {**{f'v2t_{k}': v for k, v in retrieval_metrics(video_vs_sentence, group).items()},
          **{f't2v_{k}': v for k, v in retrieval_metrics(sentence_vs_group).items()}}
