"""Word vectors for pseudo-gloss prototypes (one vector per pseudo-gloss).

With a FastText model the user downloaded (Facebook's `cc.de.300.bin`, `cc.zh.300.bin`), each
pseudo-gloss gets its vector from it (out-of-vocabulary words through their character n-grams),
as in the release. Without one, a substitute: FastText vectors trained by gensim on the training
split's pseudo-gloss sequences, deterministically (one worker, a fixed seed), to be saved in the
workdir. The substitute knows only the dataset's words, not the language, so prototypes of
related glosses are less alike than with the published vectors.
"""
from collections.abc import Sequence

import numpy as np

DIMENSION = 300  # FastText's cc.*.300 vectors
MIN_N, MAX_N = 3, 6  # FastText's (and gensim's) character n-gram lengths
MAX_BUCKETS = 2_000_000  # FastText's n-gram hash buckets, sized for a language's vocabulary
BUCKETS_PER_NGRAM = 16  # ~6% of the n-grams share their bucket with another


def fasttext_vectors(path: str, words: Sequence[str]) -> np.ndarray:
  """[len(words), dim] float32 vectors of a Facebook FastText .bin model."""
  from gensim.models.fasttext import load_facebook_vectors  # pylint: disable=import-outside-toplevel
  vectors = load_facebook_vectors(path)
  return np.stack([vectors[w] for w in words]).astype(np.float32)


def trained_vectors(gloss_sentences: Sequence[Sequence[str]], words: Sequence[str],
                    dim: int = DIMENSION, seed: int = 0, epochs: int = 10) -> np.ndarray:
  """[len(words), dim] float32 FastText (skip-gram) vectors trained on `gloss_sentences`, the
  same on every run and machine for the same inputs."""
  from gensim.models import FastText  # pylint: disable=import-outside-toplevel
  sentences = [list(s) for s in gloss_sentences if s]
  buckets = ngram_buckets({w for s in sentences for w in s} | set(words))
  model = FastText(vector_size=dim, window=5, min_count=1, sg=1, workers=1, seed=seed,
                   epochs=epochs, min_n=MIN_N, max_n=MAX_N, bucket=buckets)
  model.build_vocab(corpus_iterable=sentences)
  model.train(corpus_iterable=sentences, total_examples=len(sentences), epochs=epochs)
  return np.stack([model.wv[w] for w in words]).astype(np.float32)


def ngram_buckets(words: set[str]) -> int:
  """Hash buckets for the character n-grams of `words` (BUCKETS_PER_NGRAM per distinct one, at
  most MAX_BUCKETS). FastText's fixed 2M buckets x 300 dims are 2.4 GB that took 8 s to
  initialise for a dataset's few hundred pseudo-glosses."""
  ngrams = {f'<{w}>'[i:i + n] for w in words for n in range(MIN_N, MAX_N + 1)
            for i in range(len(w) + 3 - n)}
  return min(MAX_BUCKETS, BUCKETS_PER_NGRAM * max(1, len(ngrams)))
