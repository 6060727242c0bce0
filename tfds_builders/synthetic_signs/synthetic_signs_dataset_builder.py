"""synthetic_signs: procedurally rendered sign language videos (sltjax.data.synthetic_signs).

Needs no download. Options (builder kwargs, or `--option KEY=VALUE` of the build command):
num_train / num_dev / num_test examples, seed, size (rendered frame side in pixels), num_signers.
Signers 0..num_signers-3 sign the training split; dev and test also see two unseen signers.
"""
import numpy as np
import tensorflow_datasets as tfds

from sltjax.data import synthetic_signs
from sltjax.data.clip_builder import SignVideoBuilder
from sltjax.data.clips import ClipSpec

_SPLIT_SEEDS = {'train': 0, 'dev': 1, 'test': 2}


class Builder(SignVideoBuilder):
  """Weather-report sentences signed by rendered hand shapes; glosses + English text, and the
  gloss each frame shows."""
  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.1.0': 'The index holds each frame\'s gloss (frame_glosses).'}
  DEFAULT_FRAME_SIZE = 'native'
  DESCRIPTION = __doc__

  def __init__(self, *, num_train=1200, num_dev=100, num_test=100, seed=0, size=112,
               num_signers=8, **kwargs):
    self.sizes = {'train': int(num_train), 'dev': int(num_dev), 'test': int(num_test)}
    self.seed, self.size, self.num_signers = int(seed), int(size), int(num_signers)
    if self.num_signers < 3:
      raise ValueError(f'num_signers={num_signers}: need at least 3 (2 are held out).')
    super().__init__(**kwargs)

  def list_clips(self, manual_dir):
    splits = {}
    for split, count in self.sizes.items():
      rng = np.random.default_rng([self.seed, _SPLIT_SEEDS[split]])
      train_signers = self.num_signers - 2
      specs = []
      for i in range(count):
        glosses, text = synthetic_signs.sample_sentence(rng)
        signer = int(rng.integers(train_signers if split == 'train' else self.num_signers))
        source = synthetic_signs.RenderedSentence(
            tuple(glosses), seed=int(rng.integers(2**31)), signer=signer, size=self.size)
        specs.append(ClipSpec(id=f'{split}-{i:05d}', source=source, gloss=' '.join(glosses),
                              text=text, signer=f'signer{signer}',
                              frame_glosses=source.frame_glosses()))
      splits[split] = specs
    return splits, []
