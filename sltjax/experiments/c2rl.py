"""C2RL's stages on a built video dataset (configs/c2rl.py):

  pretrain  visual encoder + text encoder/decoder: alpha * ICL (CLCL contrastive) + beta * ECL
            (captioning LM loss); scored by sign retrieval on the model's own similarities
  slt       Sign2Text: the pretrained visual encoder's features -> Linear -> mBART; scored by BLEU
  slret     sign retrieval: features -> Linear -> mBART encoder, text -> a second mBART encoder,
            the same contrastive loss; scored by retrieval (t2v_r1 ... v2t_mnr)

The downstream stages start from a pretraining workdir (init.visual: its visual encoder, frozen,
and its tokenizer) and optionally a converted mBART (init.mbart). They train on the features that
`--mode=extract_features` wrote from the pretraining workdir (data.features_dir), or on frames
through the frozen encoder; either way the encoder is part of the checkpoint, so `translate` and
`retrieve` go from videos end to end.
"""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np

from sltjax import experiments, storage
from sltjax.convert import pretrained
from sltjax.data import sampling
from sltjax.errors import UserError
from sltjax.experiments.base import EXTRACT_FEATURES, TRANSLATE_VIDEOS
from sltjax.experiments.retrieval import RetrievalExperiment, same_sentence
from sltjax.experiments.video import TOKENIZER_DIR, VideoExperiment
from sltjax.experiments.warm_start import WarmStart
from sltjax.losses import clcl_similarity, contrastive_loss, mean_cross_entropy
from sltjax.metrics import METRIC_NAMES
from sltjax.models.mbart import MBartConfig
from sltjax.models.systems.c2rl import (MAX_LOGIT_SCALE, C2RLPretraining, SignRetriever,
                                        SignTranslator, VisualEncoderConfig)


# The paper's data recipe (../shared/docs/REFERENCE.md), which configs/c2rl.py sets over
# sltjax/data/video.py's defaults.
DATA_RECIPE = dict(sampling='c2rl', eval_resize=256, random_crop='fixed', normalization='imagenet')


@sampling.register('c2rl')
def sample_one_per_segment(num_frames: int, rng: np.random.Generator, train: bool,
                           keep: float = 0.25):
  """C2RL: split the clip into round(keep * T) consecutive segments; one frame per segment,
  random at train, the first at test."""
  segments = np.array_split(np.arange(num_frames), max(1, int(round(keep * num_frames))))
  if train:
    return np.array([rng.choice(s) for s in segments])
  return np.array([s[0] for s in segments])


@experiments.register('c2rl')
class C2RLExperiment(VideoExperiment):
  """What the three stages share: the visual encoder's config, the CLCL contrastive loss and the
  logit scale's clamp. config.stage picks the class (STAGES, at the end of this module)."""

  REQUIRED_KEYS = VideoExperiment.REQUIRED_KEYS + ('stage',)

  def __init__(self, config, workdir: str):
    super().__init__(config, workdir)
    self.stage = config.stage
    self.visual_config = VisualEncoderConfig(**config.model.visual.to_dict())
    self.set_model(self.model_factory())

  def model_factory(self):
    """rngs -> the stage's model."""
    raise NotImplementedError

  def model_summary(self) -> str:
    return f'C2RL {self.stage} on {self.visual_config.backbone}'

  def constrain(self, params):
    """The logit scale clamped at ln 100 after every update (CLIP, CiCo)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, value: (jnp.minimum(value, MAX_LOGIT_SCALE)
                             if getattr(path[0], 'key', None) == 'logit_scale' else value), params)

  def encode_features(self, model, frames, frame_mask):
    return model.visual(frames, frame_mask)

  def clcl_scores(self, video, video_mask, text, text_mask):
    """(v2t, t2v) [Bv, Bt] CLCL similarities (config.loss's temperature and padding)."""
    loss_config = self.config.loss
    return clcl_similarity(video, video_mask, text, text_mask,
                           temperature=loss_config.temperature,
                           mask_padding=loss_config.mask_padding,
                           text_block=loss_config.get('text_block', 0))

  def contrastive(self, video, video_mask, text, text_mask, text_ids, logit_scale):
    """ICL: CLCL similarities of the global batch -> symmetric InfoNCE."""
    loss_config = self.config.loss
    v2t, t2v = self.clcl_scores(video, video_mask, text, text_mask)
    positives = (same_sentence(text_ids) if loss_config.same_sentence_positives
                 else jnp.eye(len(text_ids)))
    return contrastive_loss(v2t, t2v, positives, logit_scale,
                            label_smoothing=loss_config.contrastive_label_smoothing,
                            cico_mix=loss_config.cico_mix)


class Retrieving(C2RLExperiment, RetrievalExperiment):
  """The stages that retrieve: their models encode text, and CLCL scores the pairs."""

  def encode_text(self, model, text_ids, text_mask):
    return model.encode_text(text_ids, text_mask)

  def pair_scores(self, video, video_mask, text, text_mask):
    return self.clcl_scores(video, video_mask, text, text_mask)


class Pretraining(Retrieving):
  """Visual encoder + text encoder/decoder: alpha * ICL + beta * ECL; scored by retrieval."""

  BACKBONE_START = ("ImageNet weights (torchvision's resnet18-f37072fd.pth, "
                    'https://download.pytorch.org/models/resnet18-f37072fd.pth)')

  @classmethod
  def check_config(cls, config) -> list[str]:
    problems = super().check_config(config)
    if config.data.get('features_dir'):
      problems.append('stage pretrain trains the visual encoder on frames: leave '
                      'data.features_dir empty')
    return problems

  def capabilities(self) -> frozenset[str]:
    return super().capabilities() | {EXTRACT_FEATURES}

  def model_factory(self):
    text = MBartConfig.from_dict({**self.config.model.text.to_dict(),
                                  'vocab_size': self.tokenizer.vocab_size,
                                  'pad_token_id': self.tokenizer.pad_id})
    return lambda rngs: C2RLPretraining(self.visual_config, text, rngs=rngs)

  def converted_parts(self):
    """The backbone from model.backbone_weights (torchvision ResNet, ImageNet)."""
    return self.converted_backbone(('visual', 'backbone'), self.visual_config.backbone,
                                   self.visual_config.backbone_options)

  def loss(self, model, batch, rngs):
    cfg = self.config
    inputs, mask = self.model_inputs(batch)
    text_ids, text_mask = self.text_inputs(batch['labels'])
    out = model(inputs, mask, text_ids, text_mask, batch['decoder_input_ids'], rngs=rngs)
    ecl, tokens = mean_cross_entropy(out['logits'], batch['labels'], batch['label_weights'],
                                     cfg.label_smoothing)
    icl = self.contrastive(out['video'], out['video_mask'], out['text'], text_mask, text_ids,
                           model.logit_scale[...])
    loss = cfg.loss.alpha * icl + cfg.loss.beta * ecl
    return loss, {'frames': jnp.sum(batch['frame_mask']).astype(jnp.float32), 'tokens': tokens,
                  'icl': icl, 'ecl': ecl, 'logit_scale': model.logit_scale[...]}

  def encode_video(self, model, inputs, mask):
    return model.visual(inputs, mask)


class Downstream(C2RLExperiment):
  """What Sign2Text and retrieval share: the pretrained encoder (init.visual), read frozen from
  frames or as its extracted features (data.features_dir), and a network of mBART's shape."""

  @classmethod
  def warm_starts(cls, config) -> dict[str, WarmStart]:
    # init.mbart first: a converted mBART's own tokenizer is the one its vocabulary matches.
    return {'mbart': WarmStart(prefixes=cls.MBART_PREFIXES, files=(TOKENIZER_DIR,)),
            'visual': WarmStart(prefixes=(('visual',),), files=(TOKENIZER_DIR,))}

  MBART_PREFIXES: tuple[tuple[str, ...], ...] = ()  # where init.mbart's weights go

  @classmethod
  def check_config(cls, config) -> list[str]:
    problems = super().check_config(config)
    if (not config.init.get('visual')
        and re.search(config.optimizer.frozen or '$^', 'visual/')):
      problems.append(f'stage {config.stage} reads the pretrained visual encoder, frozen: set '
                      'init.visual to a C2RL pretraining workdir (configs/c2rl.py:pretrain), or '
                      'train the encoder from scratch with optimizer.frozen=""')
    if config.model.get('backbone_weights'):
      problems.append(f'stage {config.stage} takes its visual encoder from init.visual: leave '
                      'model.backbone_weights empty')
    return problems + cls.features_source_problems(config)

  def mbart_config(self) -> MBartConfig:
    """init.mbart's architecture when it is a converted mBART, else model.mbart's."""
    network = pretrained.mbart_config(self.config.init.get('mbart'),
                                      self.config.model.mbart.to_dict(),
                                      self.tokenizer.vocab_size, self.tokenizer.pad_id)
    if network.vocab_size != self.tokenizer.vocab_size:
      raise UserError(f'init.mbart has {network.vocab_size} ids but the tokenizer has '
                      f'{self.tokenizer.vocab_size}: pretrain with the tokenizer of the mBART '
                      'used downstream (config.tokenizer.path).')
    return network

  @property
  def train_visual(self) -> bool:
    """The encoder trains (dropout, batch statistics) only when the optimizer updates it."""
    return not re.search(self.config.optimizer.frozen or '$^', 'visual/')

  @property
  def on_features(self) -> bool:
    return bool(self.config.data.get('features_dir'))

  @property
  def feature_dim(self) -> int:
    return self.visual_config.d_model

  @staticmethod
  def features_source_problems(config) -> list[str]:
    """Features extracted by another workdir than init.visual are refused: their encoder would
    not be the one the checkpoint holds, so videos would be encoded differently."""
    if not config.data.get('features_dir'):
      return []
    index = storage.join(config.data.features_dir, f'{config.data.train_split}.json')
    if not storage.path(index).is_file():
      return []  # opening the split says what is missing
    source = json.loads(storage.read_text(index)).get('extracted_by', {}).get('workdir', '')
    if source and storage.absolute(source) != storage.absolute(config.init.visual):
      return [f'{config.data.features_dir} holds features of {source}, but '
              f'init.visual={config.init.visual}: start from the workdir that extracted them']
    return []


class Translation(Downstream):
  """slt: the encoder's features -> Linear -> mBART; scored by BLEU."""

  MBART_PREFIXES = (('translation',),)
  TRANSLATION_NETWORK = True
  METRICS = METRIC_NAMES

  def capabilities(self) -> frozenset[str]:
    return frozenset({TRANSLATE_VIDEOS})

  def model_factory(self):
    network = self.mbart_config()
    return lambda rngs: SignTranslator(self.visual_config, network, train_visual=self.train_visual,
                                       prototype=self.prototype, rngs=rngs)

  def loss(self, model, batch, rngs):
    inputs, mask = self.model_inputs(batch)
    embeds, mask = model.encoder_inputs(inputs, mask, rngs)
    loss, metrics = model.translation.translation_loss(
        mask, batch['decoder_input_ids'], batch['labels'], batch['label_weights'],
        inputs_embeds=embeds, label_smoothing=self.config.label_smoothing, rngs=rngs)
    return loss, {**metrics, 'frames': jnp.sum(batch['frame_mask']).astype(jnp.float32)}

  def translate_fn(self):
    """Jitted (params, rest, batch) -> best sequences [B, length]."""
    def run(params, rest, batch):
      model = self.merge(params, rest)
      embeds, mask = model.encoder_inputs(*self.model_inputs(batch))
      return self.beam_search(model.translation, None, mask, embeds)
    return self.jitted('translate', run)

  def evaluation_fn(self):
    return self.translate_fn()

  def predict(self, params, rest, local_batch) -> dict[str, list[str]]:
    """{'text': translations} of a global batch of clips (all processes call this)."""
    return {'text': self.translations(self.translate_fn(), params, rest, local_batch)}


class Retrieval(Downstream, Retrieving):
  """slret: features -> Linear -> mBART encoder, text -> a second one; CLCL, scored by
  retrieval."""

  MBART_PREFIXES = (('video_encoder',), ('text_encoder',))

  def model_factory(self):
    network = self.mbart_config()
    return lambda rngs: SignRetriever(self.visual_config, network, train_visual=self.train_visual,
                                      rngs=rngs)

  def loss(self, model, batch, rngs):
    inputs, mask = self.model_inputs(batch)
    text_ids, text_mask = self.text_inputs(batch['labels'])
    video, video_mask = model.encode_video(inputs, mask, rngs=rngs)
    text = model.encode_text(text_ids, text_mask, rngs)
    loss = self.contrastive(video, video_mask, text, text_mask, text_ids, model.logit_scale[...])
    return loss, {'frames': jnp.sum(batch['frame_mask']).astype(jnp.float32), 'icl': loss,
                  'logit_scale': model.logit_scale[...]}

  def encode_video(self, model, inputs, mask):
    return model.encode_video(inputs, mask)


C2RLExperiment.STAGES = {'pretrain': Pretraining, 'slt': Translation, 'slret': Retrieval}
