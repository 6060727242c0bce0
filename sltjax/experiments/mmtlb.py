"""MMTLB's stages on a built video dataset (configs/mmtlb.py):

  sign2gloss       video -> glosses, CTC; scored by WER
  sign2text        video -> sentence end to end, CTC + label-smoothed CE; scored by BLEU (and WER)
  sign2gloss2text  evaluation only: a Sign2Gloss model's decoded glosses -> a Gloss2Text model

Any stage with a backbone can write its features as a dataset (`extract_features`, with
sltjax/data/features.py); a model with backbone='features' then trains on them (the release's
Sign2Text recipe on frozen S3D features).

Stages start from earlier ones by config (WARM_STARTS): init.visual (a Sign2Gloss or Sign2Text
workdir: backbone and head, with its gloss list) and init.translation (a Gloss2Text or Sign2Text
workdir, or a converted mBART, with its tokenizer), so that `python -m sltjax.translate
--workdir=...` finds everything in the new workdir.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from sltjax import experiments
from sltjax.convert import pretrained
from sltjax.convert.gloss_embeddings import gloss_embeddings
from sltjax.ctc_decoding import ctc_decode_batch
from sltjax.data import batching, sampling
from sltjax.errors import UserError
from sltjax.experiments.base import DECODE_GLOSSES, EXTRACT_FEATURES, TRANSLATE_VIDEOS, log
from sltjax.experiments.video import GLOSS_FILE, TOKENIZER_DIR, VideoExperiment
from sltjax.experiments.warm_start import WarmStart
from sltjax.losses import sign_translation_loss
from sltjax.metrics import GLOSS_METRIC_NAMES, METRIC_NAMES
from sltjax.models.systems.mmtlb import MMTLB, MMTLBConfig


# The release's data recipe (../shared/docs/REFERENCE.md), which configs/mmtlb.py sets over
# sltjax/data/video.py's defaults.
DATA_RECIPE = dict(sampling='mmtlb', max_frames=400, random_crop='resized',
                   random_crop_scale=(0.7, 1.0), random_crop_ratio=(0.75, 1.3),
                   colour_jitter_prob=0.3, normalization='minus_one_one', channel_order='bgr')


@sampling.register('mmtlb')
def sample_random_length(num_frames: int, rng: np.random.Generator, train: bool,
                         max_frames: int = 400):
  """MMTLB: train on a random length in [0.5T, min(max_frames, 1.5T)] rounded to a multiple of 4
  (dropping or duplicating random frames, order kept); test on all frames (the centre
  max_frames if longer)."""
  if not train:
    start = max(0, (num_frames - max_frames) // 2)
    return np.arange(start, min(num_frames, start + max_frames))
  low, high = 0.5 * num_frames, min(max_frames, 1.5 * num_frames)
  length = max(4, int(round(rng.uniform(low, max(low, high)) / 4)) * 4)
  if length <= num_frames:
    return np.sort(rng.choice(num_frames, length, replace=False))
  extra = rng.choice(num_frames, length - num_frames, replace=True)
  return np.sort(np.concatenate([np.arange(num_frames), extra]))


@experiments.register('mmtlb')
class MMTLBExperiment(VideoExperiment):
  """What the stages share: the visual network (backbone and gloss head), CTC and the frames'
  glosses, gloss decoding. config.stage picks the class (STAGES, at the end of this module)."""

  REQUIRED_KEYS = VideoExperiment.REQUIRED_KEYS + ('stage',)
  METRICS = GLOSS_METRIC_NAMES
  BACKBONE_START = ('S3D weights pretrained on Kinetics-400 and WLASL (the release\'s '
                    's3ds_glosscls_ckpt; Kinetics-400 only: s3ds_actioncls_ckpt), in its naming '
                    'or torchvision\'s')

  @classmethod
  def warm_starts(cls, config) -> dict[str, WarmStart]:
    visual = (('head',),) if config.model.backbone == 'features' else (('backbone',), ('head',))
    table = {'visual': WarmStart(prefixes=visual, files=(GLOSS_FILE,))}
    if cls.TRANSLATION_NETWORK:
      table['translation'] = WarmStart(prefixes=(('translation',),), files=(TOKENIZER_DIR,))
    return table

  @classmethod
  def check_config(cls, config) -> list[str]:
    problems = super().check_config(config)
    if config.model.get('mapper_init') == 'gloss_embeddings' and cls.TRANSLATION_NETWORK:
      if config.model.mapper != 'gloss_probs':
        problems.append('model.mapper_init="gloss_embeddings" starts the gloss_probs mapper: set '
                        'model.mapper="gloss_probs" or model.mapper_init=""')
      if not config.init.translation:
        problems.append('model.mapper_init="gloss_embeddings" reads the glosses\' embeddings from '
                        'the translation model: set init.translation (a converted mBART)')
    if config.loss.get('frame_gloss_weight'):
      if not config.data.get('frame_glosses'):
        problems.append('loss.frame_gloss_weight needs the frames\' glosses in every batch: set '
                        'data.frame_glosses=True (a dataset that records them: synthetic_signs)')
      if config.model.backbone == 'features':
        problems.append('loss.frame_gloss_weight labels video frames; pre-extracted features '
                        '(model.backbone="features") carry no frame glosses: set it to 0')
    return problems

  def capabilities(self) -> frozenset[str]:
    can = {DECODE_GLOSSES}
    if not self.on_features:
      can |= {TRANSLATE_VIDEOS, EXTRACT_FEATURES}
    return frozenset(can)

  def model_summary(self) -> str:
    return f'MMTLB {self.config.stage} on {self.config.model.backbone}'

  def __init__(self, config, workdir: str):
    super().__init__(config, workdir)
    m = config.model
    translation = None
    if self.TRANSLATION_NETWORK:
      translation = pretrained.mbart_config(config.init.translation, m.translation.to_dict(),
                                            self.tokenizer.vocab_size, self.tokenizer.pad_id)
      if translation.vocab_size != self.tokenizer.vocab_size:
        raise UserError(f'The translation model has {translation.vocab_size} ids but the '
                        f'tokenizer has {self.tokenizer.vocab_size}: use the tokenizer saved '
                        'with init.translation.')
    self.model_config = MMTLBConfig(
        num_glosses=self.glosses.size, backbone=m.backbone, backbone_width=m.backbone_width,
        feature_dim=m.feature_dim, frozen_bn=m.frozen_bn,
        # absent from workdirs written before they existed
        bn_momentum=m.get('bn_momentum', 0.0),
        backbone_frozen_layers=m.get('backbone_frozen_layers', 0),
        head_dim=m.head_dim, head_ffn_dim=m.head_ffn_dim, head_kernel=m.head_kernel,
        head_dropout=m.head_dropout, mapper=m.mapper, mapper_hidden=m.mapper_hidden,
        suffix=m.get('suffix', 'text'),
        translation=translation, prototype=self.prototype, dtype=m.dtype,
        param_dtype=m.param_dtype)
    self.set_model(lambda rngs: MMTLB(self.model_config, rngs=rngs))

  # ------------------------------------------------------------------ variables
  def converted_parts(self):
    """The backbone from model.backbone_weights (a torchvision / Hugging Face checkpoint)."""
    return self.converted_backbone(('backbone',), self.model_config.backbone,
                                   self.model_config.backbone_options)

  # ------------------------------------------------------------------ loss
  def loss(self, model, batch, rngs):
    cfg = self.config
    frames, frame_mask = self.model_inputs(batch)
    out = model(frames, frame_mask, rngs=rngs)
    translation = None if not self.TRANSLATION_NETWORK else model.translation_loss(
        out, batch['decoder_input_ids'], batch['labels'], batch['label_weights'],
        eos_id=self.tokenizer.eos_id, sign_lang_id=self.tokenizer.lang_id(cfg.tokenizer.src_lang),
        label_smoothing=cfg.label_smoothing, per=cfg.get('translation_loss_per', 'token'),
        rngs=rngs)
    loss, metrics = sign_translation_loss(
        out, batch, ctc_weight=cfg.loss.ctc_weight, translation_weight=cfg.loss.translation_weight,
        translation=translation, frame_gloss_weight=cfg.loss.get('frame_gloss_weight', 0.0))
    metrics['frames'] = jnp.sum(batch['frame_mask']).astype(jnp.float32)
    return loss, metrics

  # ------------------------------------------------------------------ evaluation
  def visual_outputs(self, model, batch) -> dict:
    """What evaluation reads from the visual network for a batch: {'gloss_log_probs',
    'gloss_lengths'} (a stage adds its own from `model` and the visual network's output)."""
    out = model.visual(*self.model_inputs(batch))
    return {'gloss_log_probs': jax.nn.log_softmax(out['gloss_logits'], axis=-1),
            'gloss_lengths': jnp.sum(out['gloss_mask'], axis=1).astype(jnp.int32),
            'visual': out}

  def visual_fn(self):
    """Jitted (params, rest, batch) -> `visual_outputs` without the visual network's own."""
    def run(params, rest, batch):
      out = self.visual_outputs(self.merge(params, rest), batch)
      out.pop('visual')
      return out
    return self.jitted('visual', run)

  def evaluation_fn(self):
    return self.visual_fn()

  def decoded(self, params, rest, local_batch) -> tuple[list[str], dict]:
    """(recognised gloss lines, the visual outputs) of every row of a global batch."""
    out = multihost_utils.process_allgather(
        self.visual_fn()(params, rest, self.global_batch(local_batch)), tiled=True)
    glosses = [self.glosses.decode(ids) for ids in ctc_decode_batch(
        out['gloss_log_probs'], out['gloss_lengths'], self.config.eval.ctc_beam_size)]
    return glosses, out

  def predict(self, params, rest, local_batch) -> dict[str, list[str]]:
    """{'gloss': lines} for every row of a global batch (all processes call this)."""
    return {'gloss': self.decoded(params, rest, local_batch)[0]}


class Sign2Gloss(MMTLBExperiment):
  """Video -> glosses, CTC; scored by WER."""


class Translating(MMTLBExperiment):
  """The stages with a translation network (init.translation: Gloss2Text or a converted mBART)."""

  TRANSLATION_NETWORK = True
  METRICS = METRIC_NAMES + GLOSS_METRIC_NAMES

  def init_variables(self):
    """config.init's starts; then the parts started from the translation model's embeddings:
    with model.mapper_init='gloss_embeddings' (CSL-Daily), the gloss-probability mapper's row of
    every gloss set to the mean embedding of its lowercased subwords (blank and <unk> rows zero);
    with model.suffix='own', the two suffix vectors set to the embeddings of `</s>` and
    tokenizer.src_lang (as the release starts its gloss-embedding rows from mBART's)."""
    params, rest = super().init_variables()
    m = self.config.model
    if m.get('mapper_init') != 'gloss_embeddings' and m.get('suffix', 'text') != 'own':
      return params, rest
    flat = dict(nnx.to_flat_state(params))
    embedding = np.asarray(flat[('translation', 'shared', 'embedding')].value)  # [vocab, d]

    def replace(path, value):
      flat[path] = flat[path].replace(jnp.asarray(value, flat[path].dtype))

    if m.get('mapper_init') == 'gloss_embeddings':
      kernel = np.zeros(flat[('mapper', 'linear', 'kernel')].shape, np.float32)  # [K, d]
      kernel[len(self.glosses.SPECIALS):] = gloss_embeddings(embedding, self.tokenizer,
                                                             self.glosses.glosses)
      replace(('mapper', 'linear', 'kernel'), kernel)  # blank and <unk> rows zero
      log(f'init: mapper <- the mBART embeddings of {len(self.glosses.glosses)} glosses')
    if m.get('suffix', 'text') == 'own':
      rows = [self.tokenizer.eos_id, self.tokenizer.lang_id(self.config.tokenizer.src_lang)]
      replace(('suffix',), embedding[rows])
      log('init: suffix <- the mBART embeddings of </s> and '
          f'{self.config.tokenizer.src_lang}')
    return jax.device_put(nnx.from_flat_state(list(flat.items())), self.param_shardings), rest


class Sign2Text(Translating):
  """Video -> sentence end to end, CTC + label-smoothed CE; scored by BLEU (and WER)."""

  def visual_outputs(self, model, batch) -> dict:
    """Also 'sequences': the translation beam-searched from the visual network's output."""
    out = super().visual_outputs(model, batch)
    embeds, mask = model.encoder_inputs(
        out['visual'], self.tokenizer.eos_id,
        self.tokenizer.lang_id(self.config.tokenizer.src_lang))
    out['sequences'] = self.beam_search(model.translation, None, mask, embeds)
    return out

  def predict(self, params, rest, local_batch) -> dict[str, list[str]]:
    """{'gloss': lines, 'text': translations} for every row of a global batch."""
    glosses, out = self.decoded(params, rest, local_batch)
    return {'gloss': glosses, 'text': [self.tokenizer.decode(s[1:]) for s in out['sequences']]}


class Sign2Gloss2Text(Translating):
  """Evaluation only: a Sign2Gloss model's decoded glosses -> a Gloss2Text model."""

  def eval_variables(self):
    """Assembled from the two stages' best checkpoints (config.init), not this workdir's."""
    params, rest = self.init_variables()
    return params, rest, 0

  def train_dataset(self):
    raise UserError('stage sign2gloss2text only evaluates: run it with --mode=eval, '
                    'init.visual=<Sign2Gloss workdir> and init.translation=<Gloss2Text workdir>.')

  def gloss_sources(self, gloss_lines: list[str]) -> dict[str, np.ndarray]:
    """Gloss2Text inputs `glosses </s> src_lang` [rows, bucket] for decoded gloss lines."""
    tok, cfg = self.tokenizer, self.config
    rows = [np.array(tok.encode(g.lower() if cfg.data.lowercase_source else g)
                     [:max(cfg.data.length_buckets) - 2]
                     + [tok.eos_id, tok.lang_id(cfg.tokenizer.src_lang)], np.int32)
            for g in gloss_lines]
    length = batching.bucket_length(max(len(r) for r in rows), cfg.data.length_buckets)
    ids = batching.pad_rows(rows, length, tok.pad_id)
    return {'input_ids': ids, 'attention_mask': (ids != tok.pad_id).astype(np.int32)}

  def predict(self, params, rest, local_batch) -> dict[str, list[str]]:
    """{'gloss': lines, 'text': their translations by the Gloss2Text network}."""
    glosses, _ = self.decoded(params, rest, local_batch)
    sources = self.gloss_sources([g or '<unk>' for g in glosses])
    local = {k: batching.local_rows(v, jax.process_index(), jax.process_count())
             for k, v in sources.items()}
    translate = self.jitted('gloss2text', lambda params, rest, batch: self.beam_search(
        self.merge(params, rest).translation, batch['input_ids'], batch['attention_mask']))
    sequences = multihost_utils.process_allgather(
        translate(params, rest, self.global_batch(local)), tiled=True)
    return {'gloss': glosses, 'text': [self.tokenizer.decode(s[1:]) for s in sequences]}


MMTLBExperiment.STAGES = {'sign2gloss': Sign2Gloss, 'sign2text': Sign2Text,
                          'sign2gloss2text': Sign2Gloss2Text}
