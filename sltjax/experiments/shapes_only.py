"""A video system's experiment built from its config alone, over any devices: what --mode=compile
(sltjax/compile_check.py) lowers for a TPU slice on a machine that has neither the dataset nor
the pretrained weights nor the TPUs.

The dataset's sizes (gloss and text vocabularies, pseudo-glosses, the longest video) come from
config.shapes (configs/common.py), pretrained architectures from the config (mBART: the
model.translation / model.mbart blocks; Sign2GPT: model.frames_architecture and
model.lm_architecture), and nothing is read or written beyond a scratch workdir.
"""
import dataclasses

import jax
import numpy as np

from sltjax import experiments, sharding
from sltjax.data import batching, sampling, video
from sltjax.errors import UserError
from sltjax.experiments.video import VideoExperiment

WORD_VECTOR_DIM = 300  # FastText cc.*.300.bin, Sign2GPT's prototypes
# What config checks see in place of the files a real run reads (nothing is read).
GIVEN = '<given: --mode=compile reads no files>'
PRETRAINED_KEYS = ('lm_weights',)  # model.<key> a system requires to build its network


@dataclasses.dataclass(frozen=True)
class SizedGlosses:
  """A gloss vocabulary known only by its size (ids 0..size-1, CTC blank 0)."""
  size: int


@dataclasses.dataclass(frozen=True)
class SizedTokenizer:
  """A text tokenizer known only by its size; the special ids are fairseq's (mBART, XGLM)."""
  vocab_size: int
  pad_id: int = 1
  eos_id: int = 2

  def lang_id(self, language: str) -> int:
    del language
    return self.vocab_size - 1


def create(config, devices: list, workdir: str) -> VideoExperiment:
  """config.system's experiment, with the mesh of config.mesh over `devices`."""
  base = experiments.stage_class(config)
  if not issubclass(base, VideoExperiment) or 'shapes' not in config:
    raise UserError(f'--mode=compile builds video systems from config.shapes; '
                    f'{experiments.system_name(config)!r} configs have no such block (the video '
                    'systems: configs/mmtlb.py, c2rl.py, sign2gpt.py, ipslt.py).')

  class ShapesOnly(base):
    """`base` with the sizes of config.shapes in place of files."""

    @classmethod
    def check_config(cls, config):
      """The system's checks, with every start and pretrained network taken as given."""
      given = config.copy_and_resolve_references()
      with given.unlocked():
        for key in cls.warm_starts(config):  # the starts this variant takes
          if key in given.get('init', {}) and not given.init[key]:
            given.init[key] = GIVEN
        for key in PRETRAINED_KEYS:
          if key in given.model:
            given.model[key] = GIVEN
      return super().check_config(given)

    def mesh_devices(self):
      return devices

    @property
    def glosses(self):
      return SizedGlosses(config.shapes.num_glosses)

    @property
    def tokenizer(self):
      return SizedTokenizer(config.shapes.vocab_size)

    @property
    def word_vectors(self):  # Sign2GPT's prototypes
      return np.zeros((config.shapes.pseudo_glosses, WORD_VECTOR_DIM), np.float32)

    def architectures(self):  # Sign2GPT's pretrained networks
      m = config.model
      return {'frames': dict(m.frames_architecture),
              'lm': {**m.lm_architecture.to_dict(), 'dropout': m.lm_dropout,
                     'attention_dropout': m.lm_dropout}}

  ShapesOnly.__name__ = f'ShapesOnly{base.__name__}'
  return ShapesOnly(config, workdir)


def batch_shapes(exp: VideoExperiment, rows: int | None = None
                 ) -> dict[str, jax.ShapeDtypeStruct]:
  """One global training batch (of `rows`, else config.batch_size) of the longest shapes the
  config's data reach: the frame bucket of the longest video's sampled frames
  (config.shapes.longest_video) and the longest label bucket, sharded over the batch axes."""
  data = exp.config.data
  longest = max(len(sampling.sample_frames(data.sampling, exp.config.shapes.longest_video,
                                           np.random.default_rng(seed), True, data.max_frames))
                for seed in range(16))
  frames = batching.bucket_length(longest, data.frame_buckets)
  if exp.on_features:
    frame_dim, dtype = (exp.feature_dim,), np.float32
  else:
    frame_dim = (data.crop_size, data.crop_size, 3)
    dtype = np.uint8 if data.normalization == 'none' else np.float32
  shapes = video.batch_shapes(data, rows or exp.config.batch_size, frames,
                              data.length_buckets[-1], frame_dim, dtype, exp.record_label_dims())
  batch_sharding = sharding.batch_sharding(exp.mesh)
  return {name: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)
          for name, (shape, dtype) in shapes.items()}
