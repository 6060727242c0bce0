"""Initial embeddings for glosses from a (trimmed) mBART vocabulary (MMTLB's CSL-Daily mapper)."""
from collections.abc import Sequence

import numpy as np

from sltjax.data.tokenizers import Tokenizer


def gloss_embeddings(token_embeddings: np.ndarray, tokenizer: Tokenizer,
                     glosses: Sequence[str]) -> np.ndarray:
  """Per gloss, the mean of its lowercased subword embeddings: [num_glosses, d_model].

  token_embeddings: the model's shared embedding [vocab, d_model] (unscaled, as stored).
  A gloss that tokenizes to nothing (an empty string) is an error naming it.
  """
  rows = []
  for gloss in glosses:
    ids = tokenizer.encode(gloss.lower())
    if not ids:
      raise ValueError(f'Gloss {gloss!r} has no subword tokens; remove it from the gloss list.')
    rows.append(np.asarray(token_embeddings)[ids].mean(axis=0))
  return np.stack(rows).astype(np.float32)
