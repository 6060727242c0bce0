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

from sltjax import experiments, sharding
from sltjax.convert import pretrained
from sltjax.convert.gloss_embeddings import gloss_embeddings
from sltjax.ctc_decoding import ctc_decode_batch
from sltjax.data import batching
from sltjax.errors import UserError
from sltjax.experiments.base import DECODE_GLOSSES, EXTRACT_FEATURES, TRANSLATE_VIDEOS, log
from sltjax.experiments.video import GLOSS_FILE, TOKENIZER_DIR, VideoExperiment
from sltjax.experiments.warm_start import WarmStart
from sltjax.losses import sign_translation_loss
from sltjax.metrics import GLOSS_METRIC_NAMES, gloss_metrics, protocol, translation_metrics
from sltjax.models.backbones import registry as backbones
from sltjax.models.systems import ipslt
from sltjax.models.systems.mmtlb import MMTLB, MMTLBConfig

STAGES = ('sign2gloss', 'sign2text', 'sign2gloss2text')


@experiments.register('mmtlb')
class MMTLBExperiment(VideoExperiment):
  REQUIRED_KEYS = VideoExperiment.REQUIRED_KEYS + ('stage',)

  @classmethod
  def warm_starts(cls, config) -> dict[str, WarmStart]:
    visual = (('head',),) if config.model.backbone == 'features' else (('backbone',), ('head',))
    table = {'visual': WarmStart(prefixes=visual, files=(GLOSS_FILE,))}
    if config.stage != 'sign2gloss':
      table['translation'] = WarmStart(prefixes=(('translation',),), files=(TOKENIZER_DIR,))
    return table

  @classmethod
  def check_config(cls, config) -> list[str]:
    if config.stage not in STAGES:
      return [f'stage={config.stage!r} must be one of {STAGES}']
    problems = super().check_config(config)
    problems += ipslt.config_problems(config.model, config.stage != 'sign2gloss',
                                      f'MMTLB stage {config.stage}')
    if config.model.get('mapper_init') == 'gloss_embeddings' and config.stage != 'sign2gloss':
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
    if config.stage == 'sign2gloss' and config.eval.best_metric not in GLOSS_METRIC_NAMES:
      problems.append(f'stage sign2gloss has no translation: eval.best_metric must be one of '
                      f'{list(GLOSS_METRIC_NAMES)}')
    return problems

  def capabilities(self) -> frozenset[str]:
    can = {DECODE_GLOSSES}
    if not self.on_features:
      can |= {TRANSLATE_VIDEOS, EXTRACT_FEATURES}
    return frozenset(can)

  def describe(self) -> str:
    return (f'MMTLB {self.stage} on {self.config.model.backbone}'
            + ipslt.describe(self.model_config.prototype))

  def __init__(self, config, workdir: str):
    super().__init__(config, workdir)
    self.stage = config.stage
    self.translates = config.stage != 'sign2gloss'
    m = config.model
    translation = None
    if self.translates:
      translation = pretrained.mbart_config(config.init.translation, m.translation.to_dict(),
                                            self.tokenizer.vocab_size, self.tokenizer.pad_id)
      if translation.vocab_size != self.tokenizer.vocab_size:
        raise UserError(f'The translation model has {translation.vocab_size} ids but the '
                        f'tokenizer has {self.tokenizer.vocab_size}: use the tokenizer saved '
                        'with init.translation.')
    self.model_config = MMTLBConfig(
        num_glosses=self.glosses.size, backbone=m.backbone, backbone_width=m.backbone_width,
        feature_dim=m.feature_dim, frozen_bn=m.frozen_bn,
        bn_momentum=m.get('bn_momentum', 0.0),  # absent from workdirs written before it existed
        head_dim=m.head_dim, head_ffn_dim=m.head_ffn_dim, head_kernel=m.head_kernel,
        head_dropout=m.head_dropout, mapper=m.mapper, mapper_hidden=m.mapper_hidden,
        translation=translation, prototype=ipslt.PrototypeConfig.from_model_config(m),
        dtype=m.dtype, param_dtype=m.param_dtype)
    self.set_model(lambda rngs: MMTLB(self.model_config, rngs=rngs))
    self._eval_fns = {}

  # ------------------------------------------------------------------ variables
  def converted_parts(self):
    """The backbone from model.backbone_weights (a torchvision / Hugging Face checkpoint)."""
    if not self.config.model.backbone_weights:
      return {}
    return {('backbone',): backbones.read_weights(self.model_config.backbone,
                                                   self.model_config.backbone_options,
                                                   self.pretrained_copy('backbone_weights'))}

  def init_variables(self):
    """config.init's starts; then, with model.mapper_init='gloss_embeddings' (CSL-Daily), the
    gloss-probability mapper's row of every gloss set to the mean embedding of its lowercased
    subwords in the started translation model (blank and <unk> rows zero)."""
    params, rest = super().init_variables()
    if not (self.translates and self.config.model.get('mapper_init') == 'gloss_embeddings'):
      return params, rest
    flat = dict(nnx.to_flat_state(params))
    kernel_path = ('mapper', 'linear', 'kernel')
    embeddings = gloss_embeddings(np.asarray(flat[('translation', 'shared', 'embedding')].value),
                                  self.tokenizer, self.glosses.glosses)  # [glosses, d]
    kernel = np.zeros(flat[kernel_path].shape, np.float32)  # [blank, <unk>, glosses..., d]
    kernel[len(self.glosses.SPECIALS):] = embeddings
    flat[kernel_path] = flat[kernel_path].replace(jnp.asarray(kernel, flat[kernel_path].dtype))
    log(f'init: mapper <- the mBART embeddings of {len(self.glosses.glosses)} glosses')
    return jax.device_put(nnx.from_flat_state(list(flat.items())), self.param_shardings), rest

  def eval_variables(self):
    if self.stage == 'sign2gloss2text':  # assembled from the two stages' best checkpoints
      params, rest = self.init_variables()
      return params, rest, 0
    return super().eval_variables()

  def train_dataset(self):
    if self.stage == 'sign2gloss2text':
      raise UserError('stage sign2gloss2text only evaluates: run it with --mode=eval, '
                      'init.visual=<Sign2Gloss workdir> and init.translation=<Gloss2Text workdir>.')
    return super().train_dataset()

  # ------------------------------------------------------------------ loss
  def loss(self, model, batch, rngs):
    cfg = self.config
    frames, frame_mask = self.model_inputs(batch)
    out = model(frames, frame_mask, rngs=rngs)
    translation = None if not self.translates else model.translation_loss(
        out, batch['decoder_input_ids'], batch['labels'], batch['label_weights'],
        eos_id=self.tokenizer.eos_id, sign_lang_id=self.tokenizer.lang_id(cfg.tokenizer.src_lang),
        label_smoothing=cfg.label_smoothing, rngs=rngs)
    loss, metrics = sign_translation_loss(
        out, batch, ctc_weight=cfg.loss.ctc_weight, translation_weight=cfg.loss.translation_weight,
        translation=translation, frame_gloss_weight=cfg.loss.get('frame_gloss_weight', 0.0))
    metrics['frames'] = jnp.sum(batch['frame_mask']).astype(jnp.float32)
    return loss, metrics

  # ------------------------------------------------------------------ evaluation
  def visual_fn(self):
    """Jitted (params, rest, batch) -> {'gloss_log_probs', 'gloss_lengths'[, 'sequences']}:
    for Sign2Text the translation is beam-searched from the visual encoder inputs."""
    if 'visual' not in self._eval_fns:
      shardings = sharding.batch_sharding(self.mesh)

      def run(params, rest, batch):
        model = self.merge(params, rest)
        frames, frame_mask = self.model_inputs(batch)
        out = model.visual(frames, frame_mask)
        result = {'gloss_log_probs': jax.nn.log_softmax(out['gloss_logits'], axis=-1),
                  'gloss_lengths': jnp.sum(out['gloss_mask'], axis=1).astype(jnp.int32)}
        if self.stage == 'sign2text':
          embeds, mask = model.encoder_inputs(
              out, self.tokenizer.eos_id, self.tokenizer.lang_id(self.config.tokenizer.src_lang))
          result['sequences'] = self.beam_search(model.translation, None, mask, embeds)
        return result

      self._eval_fns['visual'] = jax.jit(
          run, in_shardings=(self.param_shardings, self.rest_shardings, shardings),
          out_shardings=shardings)
    return self._eval_fns['visual']

  def gloss_translation_fn(self):
    """Jitted (params, rest, {'input_ids', 'attention_mask'}) -> best sequences (Sign2Gloss2Text)."""
    if 'gloss2text' not in self._eval_fns:
      shardings = sharding.batch_sharding(self.mesh)
      self._eval_fns['gloss2text'] = jax.jit(
          lambda params, rest, batch: self.beam_search(self.merge(params, rest).translation,
                                                       batch['input_ids'], batch['attention_mask']),
          in_shardings=(self.param_shardings, self.rest_shardings, shardings),
          out_shardings=shardings)
    return self._eval_fns['gloss2text']

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
    """{'gloss': lines[, 'text': translations]} for every row of a global batch (all processes
    call this)."""
    batch = self.global_batch(local_batch)
    out = multihost_utils.process_allgather(self.visual_fn()(params, rest, batch), tiled=True)
    glosses = [self.glosses.decode(ids) for ids in ctc_decode_batch(
        out['gloss_log_probs'], out['gloss_lengths'], self.config.eval.ctc_beam_size)]
    if self.stage == 'sign2gloss':
      return {'gloss': glosses}
    if self.stage == 'sign2gloss2text':
      sources = self.gloss_sources([g or '<unk>' for g in glosses])
      local = {k: batching.local_rows(v, jax.process_index(), jax.process_count())
               for k, v in sources.items()}
      out['sequences'] = multihost_utils.process_allgather(
          self.gloss_translation_fn()(params, rest, self.global_batch(local)), tiled=True)
    return {'gloss': glosses, 'text': [self.tokenizer.decode(s[1:]) for s in out['sequences']]}

  def evaluate(self, params, rest, split: str):
    data, predictions = self.predictions(params, rest, split)
    metrics = {}
    if all(data.glosses):
      metrics.update(gloss_metrics(predictions['gloss'], data.glosses,
                                   self.config.eval.gloss_cleanup))
    if self.translates:
      metrics.update(translation_metrics(predictions['text'], data.texts,
                                         **protocol(self.config.eval)))
    return metrics, predictions
