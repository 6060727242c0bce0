"""Input data: tokenizers, grain pipelines, and (with the TFDS builders) video datasets."""
