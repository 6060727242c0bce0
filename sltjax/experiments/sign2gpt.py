"""Sign2GPT's two stages on a built video dataset (configs/sign2gpt.py):

  pseudo_gloss  frames -> DINOv2 (frozen, LoRA) -> sign encoder -> prototype head: which
                pseudo-glosses (content words of the sentence) the video shows, BCE x 10; scored
                by pseudo-gloss F1 (micro and per class) at 0.5
  translation   the stage-1 frame and sign encoders (init.pretraining; the head dropped) give
                visual tokens that a frozen XGLM with LoRA and zero-gated cross-attention
                attends to while writing `</s> sentence </s>`; scored by BLEU of beam search

The pretrained networks are Hugging Face directories a user downloaded (model.backbone_weights:
facebook/dinov2-small or Meta's dinov2_vits14_pretrain.pth; model.lm_weights: facebook/xglm-*);
their architectures are copied into the workdir (architectures.json), so that `translate` and
`--mode=eval` need only the workdir. The pseudo-gloss vocabulary (pseudo_glosses.json) and the
word vectors of its prototypes (word_vectors.npy) are written into the stage-1 workdir.
"""
import functools
import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from sltjax import experiments, storage
from sltjax.convert.dinov2 import ARCHITECTURE_FIELDS as DINOV2_FIELDS
from sltjax.convert.dinov2 import hf_config as dinov2_hf_config
from sltjax.convert.dinov2 import meta_config as dinov2_meta_config
from sltjax.convert.hf_checkpoint import read_config, read_state_dict
from sltjax.convert.state_dict import read_torch_weights
from sltjax.convert.xglm import xglm_config_from_hf, xglm_state_from_hf
from sltjax.data import sampling, word_vectors
from sltjax.decoding import decoder_only_search
from sltjax.data.pseudo_glosses import PseudoGlosser, Vocabulary
from sltjax.errors import UserError
from sltjax.experiments.base import TRANSLATE_VIDEOS, log
from sltjax.experiments.video import VideoExperiment
from sltjax.experiments.warm_start import WarmStart
from sltjax.losses import mean_cross_entropy
from sltjax.metrics import METRIC_NAMES, register_metric
from sltjax.models.backbones import registry as backbones
from sltjax.models.systems.sign2gpt import (AdaptorConfig, FrameEncoderConfig,
                                            SignEncoderConfig, Sign2GPTPretraining,
                                            Sign2GPTTranslator, pseudo_gloss_loss)
from sltjax.models.xglm import XGLM, XGLMConfig

PSEUDO_GLOSS_FILE = 'pseudo_glosses.json'
WORD_VECTORS_FILE = 'word_vectors.npy'
ARCHITECTURES_FILE = 'architectures.json'
FIGURES_DIR_SUFFIX = '.pseudo_gloss_time'  # predictions/<prefix>.pseudo_gloss_time/<video>.png
PSEUDO_GLOSS_METRIC_NAMES = ('pseudo_gloss_f1', 'pseudo_gloss_class_f1')
for _name in PSEUDO_GLOSS_METRIC_NAMES:
  register_metric(_name, higher_is_better=True)


# The release's data recipe (../shared/docs/REFERENCE.md), which configs/sign2gpt.py sets
# over sltjax/data/video.py's defaults.
# The release's frames: albumentations' Rotate(5, p 0.3), RandomResizedCrop(scale 0.875-1, ratio
# 0.9-1.1), HorizontalFlip(0.5), ColorJitter(0.8 x strength 0.2 = 0.16 for brightness, contrast
# and saturation, 0.2 x 0.2 = 0.04 for hue; p 0.3), ToGray(0.2); evaluation squashes the whole
# frame to 224 x 224.
DATA_RECIPE = dict(sampling='sign2gpt', random_crop='resized', random_crop_scale=(0.875, 1.0),
                   random_crop_ratio=(0.9, 1.1), rotation_degrees=5.0, rotation_prob=0.3,
                   hflip_prob=0.5, colour_jitter_prob=0.3, brightness=0.16, contrast=0.16,
                   saturation=0.16, hue=0.04, grayscale_prob=0.2, eval_crop='squash',
                   normalization='imagenet')


@sampling.register('sign2gpt')
def sample_every_second_frame(num_frames: int, rng: np.random.Generator, train: bool,
                              stride: int = 2, max_frames: int = 256):
  """Sign2GPT: every `stride`-th frame from a random start offset at train (0 at test); a clip
  longer than max_frames keeps a random (train) or the centre (test) window of that many."""
  offset = int(rng.integers(stride)) if train and num_frames > stride else 0
  indices = np.arange(offset, num_frames, stride)
  if len(indices) > max_frames:
    start = (int(rng.integers(len(indices) - max_frames + 1)) if train
             else (len(indices) - max_frames) // 2)
    indices = indices[start:start + max_frames]
  return indices


def pseudo_gloss_f1(scores, targets, threshold: float = 0.5) -> dict[str, float]:
  """{'pseudo_gloss_f1': micro F1, 'pseudo_gloss_class_f1': mean F1 of the classes that occur in
  `targets`} (x100) of presence scores [videos, glosses] against multi-hot targets, a gloss
  predicted where its score > threshold (the release's 0.5); F1 = tp / (tp + (fp + fn) / 2)."""
  predicted = np.asarray(scores) > threshold
  actual = np.asarray(targets) > 0
  tp = np.sum(predicted & actual, axis=0).astype(np.float64)
  fp = np.sum(predicted & ~actual, axis=0).astype(np.float64)
  fn = np.sum(~predicted & actual, axis=0).astype(np.float64)
  micro = tp.sum() / max(tp.sum() + 0.5 * (fp.sum() + fn.sum()), 1e-12)
  present = (tp + fn) > 0
  per_class = tp[present] / (tp[present] + 0.5 * (fp[present] + fn[present]))
  return {'pseudo_gloss_f1': 100.0 * float(micro),
          'pseudo_gloss_class_f1': 100.0 * float(per_class.mean()) if present.any() else 0.0}


def backbone_architecture(path: str) -> dict:
  """DINOv2Config fields of a Hugging Face directory or a Meta checkpoint; each resizes its
  position embeddings as its own code does (Meta's, by a scale factor, is what the release
  runs)."""
  if os.path.isdir(path):
    cfg = dinov2_hf_config(read_config(path))
  else:
    cfg = dinov2_meta_config(read_torch_weights(path), interpolation='meta')
  return {k: getattr(cfg, k) for k in DINOV2_FIELDS}


def ordered_by_time(weights: np.ndarray, glosses: list[int]) -> list[int]:
  """`glosses` sorted by where in time their weights [T', V] put them (the weighted mean step)."""
  steps = np.arange(len(weights))
  centre = {g: float(steps @ weights[:, g] / max(weights[:, g].sum(), 1e-12)) for g in glosses}
  return sorted(glosses, key=lambda g: (centre[g], g))


@experiments.register('sign2gpt')
class Sign2GPTExperiment(VideoExperiment):
  """What the two stages share: DINOv2 with LoRA and the sign encoder, the pretrained networks'
  architectures, the pseudo-gloss vocabulary and its word vectors. config.stage picks the class
  (STAGES, at the end of this module)."""

  REQUIRED_KEYS = VideoExperiment.REQUIRED_KEYS + ('stage', 'model.lm_weights', 'pseudo_glosses')
  PRETRAINED_SOURCES = {
      key: f'a downloaded {network} ({released}), or make the runlocal variants\' synthetic '
           'stand-ins first: python -m sltjax.stand_ins --output_dir=pretrained/synthetic_signs'
      for key, network, released in (
          ('backbone_weights', 'DINOv2', "facebook/dinov2-small, or Meta's "
                                         'dinov2_vits14_pretrain.pth'),
          ('lm_weights', 'XGLM directory', 'facebook/xglm-564M, ...'))}

  @classmethod
  def check_config(cls, config) -> list[str]:
    problems = super().check_config(config)
    if config.model.backbone == 'features' or config.data.get('features_dir'):
      problems.append('Sign2GPT trains LoRA inside DINOv2, so it reads frames: set '
                      'model.backbone="dinov2" and leave data.features_dir empty')
    return problems

  def __init__(self, config, workdir: str):
    super().__init__(config, workdir)
    m = config.model
    self.precision = dict(dtype=m.dtype, param_dtype=m.param_dtype)
    options = backbones.BackboneOptions(
        architecture=tuple(sorted(self.architectures()['frames'].items())), **self.precision)
    self.frames_config = FrameEncoderConfig(backbone=m.backbone, backbone_options=options,
                                            **m.frames.to_dict(), **self.precision)
    self.signs_config = SignEncoderConfig(**m.signs.to_dict(), **self.precision)
    self.set_model(self.model_factory())

  def model_factory(self):
    """rngs -> the stage's model."""
    raise NotImplementedError

  def model_summary(self) -> str:
    return f'Sign2GPT {self.config.stage}'

  # ------------------------------------------------------------------ workdir files
  def pretrained_architectures(self) -> dict:
    """{'frames': DINOv2Config fields}, read from the pretrained directory (or
    model.frames_architecture without backbone weights); a stage adds its own networks'."""
    m = self.config.model
    return {'frames': (backbone_architecture(self.pretrained_copy('backbone_weights'))
                       if m.backbone_weights else dict(m.frames_architecture))}

  def architectures(self) -> dict:
    """`pretrained_architectures`: the workdir's copy, else read and written there."""
    path = storage.join(self.workdir, ARCHITECTURES_FILE)
    if not storage.path(path).is_file():
      found = self.pretrained_architectures()
      if jax.process_index() == 0:
        storage.write_text(path, json.dumps(found, indent=1))
      multihost_utils.sync_global_devices('architectures written')
    return json.loads(storage.read_text(path))

  @functools.cached_property
  def glosser(self) -> PseudoGlosser:
    return PseudoGlosser(self.config.pseudo_glosses.language)

  @functools.cached_property
  def pseudo_glosses(self) -> Vocabulary:
    """The workdir's pseudo-gloss vocabulary, built from the train split on first use."""
    path = storage.join(self.workdir, PSEUDO_GLOSS_FILE)
    if not storage.path(path).is_file():
      if jax.process_index() == 0:
        texts = self.train_split.texts
        vocabulary = Vocabulary.build(
            texts, self.glosser,
            max_sentence_fraction=self.config.pseudo_glosses.max_sentence_fraction)
        if not len(vocabulary):
          raise UserError(f'No pseudo-glosses in the {len(texts)} training sentences of '
                          f'{self.config.data.name} (language '
                          f'{self.config.pseudo_glosses.language!r}): check '
                          'pseudo_glosses.language.')
        vocabulary.save(path)
        log(f'Pseudo-gloss vocabulary: {len(vocabulary)} glosses -> {path}')
      multihost_utils.sync_global_devices('pseudo-gloss vocabulary')
    return Vocabulary.load(path)

  @functools.cached_property
  def word_vectors(self) -> np.ndarray:
    """[V, dim] prototypes' word vectors: the workdir's, else from pseudo_glosses.word_vectors
    (a FastText .bin; 'trained': trained on the train split's pseudo-glosses), saved there."""
    path = storage.join(self.workdir, WORD_VECTORS_FILE)
    glosses = self.pseudo_glosses.glosses
    if not storage.path(path).is_file():
      if jax.process_index() == 0:
        source = self.config.pseudo_glosses.word_vectors
        language = self.config.pseudo_glosses.language
        fasttext = (f'FastText cc.{language}.300.bin (https://dl.fbaipublicfiles.com/fasttext/'
                    f'vectors-crawl/cc.{language}.300.bin.gz, unzipped)')
        if not source:
          raise UserError(
              'pseudo_glosses.word_vectors is empty: Sign2GPT\'s prototypes are the language\'s '
              f'word vectors, {fasttext}; pass --config.pseudo_glosses.word_vectors=FILE, or '
              '=trained to train substitutes on the training sentences.')
        if source != 'trained':
          if not storage.path(source).is_file():
            raise UserError(f'pseudo_glosses.word_vectors={source} not found: give {fasttext}, '
                            'or "trained" to train substitutes on the training sentences.')
          vectors = word_vectors.fasttext_vectors(storage.local_copy(source), glosses)
        else:
          log('pseudo_glosses.word_vectors=trained: training FastText vectors on the training '
              'sentences\' pseudo-glosses (a substitute for cc.*.300.bin).')
          vectors = word_vectors.trained_vectors(
              [self.glosser(t) for t in self.train_split.texts], glosses,
              seed=self.config.seed)
        buffer = io.BytesIO()
        np.save(buffer, vectors)
        storage.write_bytes(path, buffer.getvalue())
      multihost_utils.sync_global_devices('word vectors')
    vectors = np.load(io.BytesIO(storage.path(path).read_bytes()))
    if len(vectors) != len(glosses):
      raise UserError(f'{path} holds {len(vectors)} vectors for {len(glosses)} pseudo-glosses '
                      f'in {PSEUDO_GLOSS_FILE}: delete it to have it made again.')
    return vectors

  # ------------------------------------------------------------------ variables
  def converted_parts(self):
    """The frozen DINOv2 (model.backbone_weights), read from its released files."""
    return self.converted_backbone(('frames', 'backbone'), self.config.model.backbone,
                                   self.frames_config.backbone_options)


class PseudoGlossPretraining(Sign2GPTExperiment):
  """Frames -> DINOv2 (frozen, LoRA) -> sign encoder -> prototype head: which pseudo-glosses the
  video shows, BCE x 10; scored by pseudo-gloss F1 (micro and per class) at 0.5."""

  METRICS = PSEUDO_GLOSS_METRIC_NAMES

  def __init__(self, config, workdir: str):
    self._figures = []
    super().__init__(config, workdir)

  def model_factory(self):
    vectors = self.word_vectors
    return lambda rngs: Sign2GPTPretraining(self.frames_config, self.signs_config, vectors,
                                            rngs=rngs)

  @functools.cached_property
  def split_targets(self) -> dict[str, np.ndarray]:
    """Multi-hot pseudo-gloss targets [videos, V] per opened split."""
    return {}

  def targets(self, split) -> np.ndarray:
    key = f'{split.name}/{split.split}'
    if key not in self.split_targets:
      self.split_targets[key] = np.stack(
          [self.pseudo_glosses.targets(self.glosser(t)) for t in split.texts])
    return self.split_targets[key]

  def record_labels(self, split) -> dict[str, np.ndarray]:
    return {'pseudo_glosses': self.targets(split)}

  def record_label_dims(self) -> dict[str, tuple[int, ...]]:
    return {'pseudo_glosses': (len(self.word_vectors),)}

  def loss(self, model, batch, rngs):
    out = model(*self.model_inputs(batch), rngs)
    bce = pseudo_gloss_loss(out['scores'], batch['pseudo_glosses'])
    return self.config.pseudo_glosses.loss_weight * bce, {
        'frames': jnp.sum(batch['frame_mask']).astype(jnp.float32), 'bce': bce}

  def presence_fn(self):
    """Jitted (params, rest, batch) -> {'scores' [B, V], 'weights' [B, T', V], 'lengths' [B]}."""
    def run(params, rest, batch):
      out = self.merge(params, rest)(*self.model_inputs(batch))
      return {'scores': out['scores'], 'weights': out['weights'],
              'lengths': jnp.sum(out['mask'], axis=1).astype(jnp.int32)}
    return self.jitted('presence', run)

  def evaluation_fn(self):
    return self.presence_fn()

  def presence(self, params, rest, local_batch) -> dict[str, list[np.ndarray]]:
    """{'scores': [V] per row, 'weights': [T'_i, V] per row} of a global batch of clips."""
    batch = {k: local_batch[k] for k in ('frames', 'frame_mask')}
    out = multihost_utils.process_allgather(
        self.presence_fn()(params, rest, self.global_batch(batch)), tiled=True)
    return {'scores': list(out['scores']),
            'weights': [w[:n] for w, n in zip(out['weights'], out['lengths'])]}

  def evaluate(self, params, rest, split: str):
    data, outputs = self.split_outputs(
        split, lambda local_batch: self.presence(params, rest, local_batch))
    scores = np.stack(outputs['scores'])
    threshold = self.config.pseudo_glosses.threshold
    metrics = pseudo_gloss_f1(scores, self.targets(data), threshold)
    names = self.pseudo_glosses.glosses
    found = [ordered_by_time(w, list(np.flatnonzero(s > threshold)))
             for s, w in zip(scores, outputs['weights'])]
    self._figures = [(data.ids[i], data.texts[i], outputs['weights'][i], found[i])
                     for i in range(min(self.config.eval.figures, len(data)))]
    return metrics, {'pseudo_gloss': [' '.join(names[g] for g in f) for f in found]}

  def write_figures(self, directory: str, prefix: str) -> list[str]:
    """For the first eval.figures videos of the last evaluation, a PNG of each predicted
    pseudo-gloss's weight over the sign encoder's time steps (where the model places it)."""
    if not self._figures:
      return []
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    from matplotlib import pyplot  # pylint: disable=import-outside-toplevel
    folder = storage.join(directory, prefix + FIGURES_DIR_SUFFIX)
    names = self.pseudo_glosses.glosses
    stride = 2 ** (len(self.signs_config.stage_depths) - 1)  # sampled frames per time step
    paths = []
    for video_id, sentence, weights, found in self._figures:
      figure, axes = pyplot.subplots(figsize=(8, 1.2 + 0.35 * max(len(found), 1)))
      for gloss in found:
        axes.plot(np.arange(len(weights)) * stride, weights[:, gloss], label=names[gloss])
      axes.set_xlabel('sampled frame')
      axes.set_ylabel('weight')
      axes.set_title(f'{video_id}: {sentence}'[:100], fontsize=8)
      if found:
        axes.legend(fontsize=7, loc='upper right')
      else:
        axes.text(0.5, 0.5, 'no pseudo-gloss above the threshold', ha='center',
                  transform=axes.transAxes)
      path = storage.join(folder, f'{video_id.replace(os.sep, "_")}.png')
      figure.tight_layout()
      image = io.BytesIO()
      figure.savefig(image, format='png', dpi=80)
      storage.write_bytes(path, image.getvalue())
      pyplot.close(figure)
      paths.append(path)
    return paths


class Translation(Sign2GPTExperiment):
  """The stage-1 frame and sign encoders (init.pretraining; the head dropped) give visual tokens
  that a frozen XGLM with LoRA and zero-gated cross-attention attends to while writing
  `</s> sentence </s>`; scored by BLEU of beam search."""

  METRICS = METRIC_NAMES

  @classmethod
  def warm_starts(cls, config) -> dict[str, WarmStart]:
    return {'pretraining': WarmStart(prefixes=(('frames',), ('sign_encoder',)))}

  @classmethod
  def check_config(cls, config) -> list[str]:
    problems = super().check_config(config)
    if not config.model.lm_weights:
      problems.append('stage translation needs the XGLM it adapts: set model.lm_weights to a '
                      'Hugging Face XGLM directory (facebook/xglm-564M, ...)')
    return problems

  def capabilities(self) -> frozenset[str]:
    return frozenset({TRANSLATE_VIDEOS})

  def pretrained_architectures(self) -> dict:
    """Also {'lm': XGLMConfig fields} of model.lm_weights."""
    m = self.config.model
    lm = xglm_config_from_hf(read_config(self.pretrained_copy('lm_weights')),
                             dropout=m.lm_dropout, attention_dropout=m.lm_dropout)
    return {**super().pretrained_architectures(),
            'lm': {k: v for k, v in vars(lm).items() if k not in ('dtype', 'param_dtype', 'remat')}}

  def model_factory(self):
    # model.remat is absent from the workdirs saved before it existed, which ran without.
    self.lm_config = XGLMConfig(**self.architectures()['lm'], **self.precision,
                                remat=self.config.model.get('remat', 'none'))
    if self.lm_config.vocab_size != self.tokenizer.vocab_size:
      raise UserError(f'The XGLM of {self.config.model.lm_weights} has '
                      f'{self.lm_config.vocab_size} token ids but its tokenizer '
                      f'({self.tokenizer.directory}) has {self.tokenizer.vocab_size}: '
                      'config.tokenizer.path must be the same directory as model.lm_weights.')
    adaptor = AdaptorConfig(**self.config.model.adaptor.to_dict())
    return lambda rngs: Sign2GPTTranslator(self.frames_config, self.signs_config, self.lm_config,
                                           adaptor, rngs=rngs)

  def converted_parts(self):
    """Also the frozen XGLM (model.lm_weights)."""
    abstract = nnx.state(nnx.eval_shape(lambda: XGLM(self.lm_config, rngs=nnx.Rngs(0))))
    return {**super().converted_parts(),
            ('lm',): xglm_state_from_hf(read_state_dict(self.pretrained_copy('lm_weights')),
                                        abstract, jnp.dtype(self.lm_config.param_dtype))}

  def loss(self, model, batch, rngs):
    inputs = batch['decoder_input_ids']
    logits = model(*self.model_inputs(batch), inputs,
                   (inputs != self.tokenizer.pad_id).astype(jnp.int32), rngs)
    ce, tokens = mean_cross_entropy(logits, batch['labels'], batch['label_weights'],
                                    self.config.label_smoothing)
    return ce, {'frames': jnp.sum(batch['frame_mask']).astype(jnp.float32), 'tokens': tokens,
                'ce': ce}

  def translate_fn(self):
    """Jitted (params, rest, batch) -> best sequences [B, 1 + max_new_tokens] (`</s>` first)."""
    tok = self.tokenizer

    def run(params, rest, batch):
      model = self.merge(params, rest)
      visual = model.visual_tokens(*self.model_inputs(batch))
      rows = batch['frames'].shape[0]
      prompt = jnp.full((rows, 1), tok.eos_id, jnp.int32)  # XGLM's start: the empty prompt
      return decoder_only_search(model.lm, prompt, jnp.ones_like(prompt), visual=visual,
                                 eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
                                 **self.search_options())[:, 0]
    return self.jitted('translate', run)

  def evaluation_fn(self):
    return self.translate_fn()

  def predict(self, params, rest, local_batch) -> dict[str, list[str]]:
    """{'text': translations} of a global batch of clips (all processes call this)."""
    return {'text': self.translations(self.translate_fn(), params, rest, local_batch)}


Sign2GPTExperiment.STAGES = {'pseudo_gloss': PseudoGlossPretraining, 'translation': Translation}
