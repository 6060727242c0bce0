"""MMTLB's stages on a built video dataset (configs/mmtlb.py):

  sign2gloss       video -> glosses, CTC; scored by WER
  sign2text        video -> sentence end to end, CTC + label-smoothed CE; scored by BLEU (and WER)
  sign2gloss2text  evaluation only: a Sign2Gloss model's decoded glosses -> a Gloss2Text model

Any stage with a backbone can write its features as a dataset (`extract_features`, with
sltjax/data/features.py); a model with backbone='features' then trains on them (the release's
Sign2Text recipe on frozen S3D features).

Stages start from earlier ones by config: init.visual (a Sign2Gloss or Sign2Text workdir: backbone
and head) and init.translation (a Gloss2Text or Sign2Text workdir, or a converted mBART). The gloss
vocabulary and tokenizer then come from those workdirs, and are copied into this one, so that
`python -m sltjax.translate --workdir=...` finds everything there.
"""
import collections
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from sltjax import experiments, sharding
from sltjax.checkpointing import read_best_variables
from sltjax.convert import pretrained
from sltjax.convert.backbones import resnet_state, s3d_state
from sltjax.convert.state_dict import read_torch_weights
from sltjax.ctc_decoding import ctc_decode_batch
from sltjax.data import augmentation, batching, features, video
from sltjax.data.tokenizers import GlossVocabulary, load_tokenizer
from sltjax.decoding import encoder_decoder_search
from sltjax.errors import UserError
from sltjax.experiments.base import (DECODE_GLOSSES, EXTRACT_FEATURES, TRANSLATE_VIDEOS, Experiment,
                                     log)
from sltjax.experiments.video import open_dataset_split, shared_file
from sltjax.losses import sign_translation_loss
from sltjax.metrics import GLOSS_METRIC_NAMES, gloss_metrics, translation_metrics
from sltjax.models.mbart import MBartConfig
from sltjax.models.systems.mmtlb import MMTLB, MMTLBConfig

STAGES = ('sign2gloss', 'sign2text', 'sign2gloss2text')
GLOSS_FILE = 'glosses.json'
TOKENIZER_DIR = 'tokenizer'


def translation_config(config, vocab_size: int, pad_id: int) -> MBartConfig:
  """The mBART of config.model.translation, or of the converted model at init.translation."""
  init_from = config.init.translation
  if init_from and os.path.isfile(os.path.join(init_from, pretrained.MODEL_CONFIG)):
    return pretrained.model_config(init_from, config.model.translation.to_dict())
  return MBartConfig.from_dict({**config.model.translation.to_dict(), 'vocab_size': vocab_size,
                                'pad_token_id': pad_id})


@experiments.register('mmtlb')
class MMTLBExperiment(Experiment):
  REQUIRED_KEYS = ('stage', 'data.name', 'data.data_dir')

  @classmethod
  def check_config(cls, config) -> list[str]:
    problems = []
    if config.stage not in STAGES:
      problems.append(f'stage={config.stage!r} must be one of {STAGES}')
    if config.model.backbone == 'features':
      if not config.data.get('features_dir'):
        problems.append('model.backbone="features" trains on a features dataset: set '
                        'data.features_dir (written by --mode=extract_features into '
                        '<workdir>/features)')
      if config.model.backbone_weights:
        problems.append('model.backbone_weights needs a backbone (s3d or resnet18), not features')
    if config.stage == 'sign2gloss' and config.eval.best_metric not in GLOSS_METRIC_NAMES:
      problems.append(f'stage sign2gloss has no translation: eval.best_metric must be one of '
                      f'{list(GLOSS_METRIC_NAMES)}')
    return problems

  def capabilities(self) -> frozenset[str]:
    can = {DECODE_GLOSSES}
    if self.config.model.backbone != 'features':
      can |= {TRANSLATE_VIDEOS, EXTRACT_FEATURES}
    return frozenset(can)

  def describe(self) -> str:
    return f'MMTLB {self.stage} on {self.config.model.backbone}'

  def __init__(self, config, workdir: str):
    super().__init__(config, workdir)
    problems = self.check_config(config)
    if problems:
      raise UserError('Invalid config: ' + '; '.join(problems) + '.')
    self.stage = config.stage
    self.translates = config.stage != 'sign2gloss'
    os.makedirs(workdir, exist_ok=True)
    gloss_file = shared_file(GLOSS_FILE, workdir, config.init.visual)
    if not os.path.exists(gloss_file) and jax.process_index() == 0:
      GlossVocabulary.build(self.train_split.glosses).save(gloss_file)
    multihost_utils.sync_global_devices('gloss vocabulary')
    self.glosses = GlossVocabulary.load(gloss_file)
    tokenizer_config = config.tokenizer
    if tokenizer_config.kind == 'mbart' and not tokenizer_config.path:
      tokenizer_config = tokenizer_config.copy_and_resolve_references()
      tokenizer_config.path = config.init.translation
    tokenizer_dir = shared_file(TOKENIZER_DIR, workdir, config.init.translation)
    self.tokenizer = load_tokenizer(  # built from the training texts on first use only
        tokenizer_config, tokenizer_dir,
        train_texts=[] if os.path.exists(tokenizer_dir) else self.train_split.texts)
    m = config.model
    self.model_config = MMTLBConfig(
        num_glosses=self.glosses.size, backbone=m.backbone, backbone_width=m.backbone_width,
        feature_dim=m.feature_dim, frozen_bn=m.frozen_bn,
        bn_momentum=m.get('bn_momentum', 0.0),  # absent from workdirs written before it existed
        head_dim=m.head_dim, head_ffn_dim=m.head_ffn_dim, head_kernel=m.head_kernel,
        head_dropout=m.head_dropout,
        mapper=m.mapper, mapper_hidden=m.mapper_hidden,
        translation=(translation_config(config, self.tokenizer.vocab_size, self.tokenizer.pad_id)
                     if self.translates else None),
        dtype=m.dtype, param_dtype=m.param_dtype)
    if self.translates and self.model_config.translation.vocab_size != self.tokenizer.vocab_size:
      raise UserError(f'The translation model has {self.model_config.translation.vocab_size} '
                       f'ids but the tokenizer has {self.tokenizer.vocab_size}: use the tokenizer '
                       'saved with init.translation.')
    self.set_model(lambda rngs: MMTLB(self.model_config, rngs=rngs))
    self._eval_fns = {}
    self._splits = {}  # opened evaluation splits, reused across evaluations

  @functools.cached_property
  def train_split(self) -> video.VideoSplit | features.FeatureSplit:
    """Opened only when needed: translating from a workdir does not need the dataset."""
    return self.open_split(self.config.data.train_split)

  def open_split(self, split: str) -> video.VideoSplit | features.FeatureSplit:
    """A split of the video dataset, or of data.features_dir for backbone='features'."""
    if self.config.model.backbone == 'features':
      return features.open_split(self.config.data.features_dir, split,
                                 self.config.model.feature_dim)
    return open_dataset_split(self.config.data, split)

  # ------------------------------------------------------------------ variables
  def init_variables(self):
    """Fresh variables, with the backbone from model.backbone_weights and the parts config.init
    names taken from earlier stages."""
    params, rest = self.fresh_variables()
    cfg = self.config
    visual_parts = (('head',),) if self.model_config.backbone == 'features' else (
        ('backbone',), ('head',))
    sources = [(prefixes, directory) for prefixes, directory in (
        (visual_parts, cfg.init.visual),
        ((('translation',),), cfg.init.translation if self.translates else '')) if directory]
    if not (sources or cfg.model.backbone_weights):
      return params, rest
    flat = {'params': dict(nnx.to_flat_state(params)), 'rest': dict(nnx.to_flat_state(rest))}
    if cfg.model.backbone_weights:
      self._load_backbone_weights(flat, cfg.model.backbone_weights)
    for prefixes, directory in sources:
      source = read_best_variables(directory)
      for prefix in prefixes:
        copied = self._graft(flat, source, prefix, directory)
        log(f'init: {"/".join(prefix)} <- {directory} ({copied} tensors)')
    return (jax.device_put(nnx.from_flat_state(list(flat['params'].items())),
                           self.param_shardings),
            jax.device_put(nnx.from_flat_state(list(flat['rest'].items())), self.rest_shardings))

  def _load_backbone_weights(self, flat, path: str) -> None:
    """Replaces flat's fresh backbone by a torchvision / Hugging Face checkpoint's weights."""
    convert = s3d_state if self.model_config.backbone == 's3d' else resnet_state
    abstract = nnx.state(nnx.eval_shape(lambda: self.model_config.make_backbone(nnx.Rngs(0))))
    weights = nnx.to_flat_state(convert(read_torch_weights(path), abstract,
                                        jnp.dtype(self.model_config.param_dtype)))
    for sub_path, variable in weights:
      flat['params' if isinstance(variable, nnx.Param) else 'rest'][('backbone', *sub_path)] = variable
    log(f'init: backbone <- {path} ({len(weights)} tensors)')

  @staticmethod
  def _graft(flat, source, prefix: tuple[str, ...], directory: str) -> int:
    """Replaces flat[kind][prefix + p] by the source tensor at prefix + p (or at p, for a
    Gloss2Text or converted mBART, whose model is the translation network itself)."""
    has_prefix = any(path[1:1 + len(prefix)] == prefix for path in source)
    copied, problems = 0, []
    for kind in ('params', 'rest'):
      for path, variable in flat[kind].items():
        names = tuple(map(str, path))
        if names[:len(prefix)] != prefix:
          continue
        key = (kind, *names) if has_prefix else (kind, *names[len(prefix):])
        if key not in source:
          problems.append(f'missing {"/".join(key)}')
          continue
        value = np.asarray(source[key])
        if value.shape != variable.shape:
          problems.append(f'{"/".join(key)} has shape {value.shape}, expected {variable.shape}')
          continue
        flat[kind][path] = variable.replace(jnp.asarray(value, variable.dtype))
        copied += 1
    if problems:
      raise UserError(f'Cannot start {"/".join(prefix)} from {directory}: its architecture '
                       'differs from config.model:\n  ' + '\n  '.join(problems[:20]))
    return copied

  def eval_variables(self):
    if self.stage == 'sign2gloss2text':  # assembled from the two stages' best checkpoints
      params, rest = self.init_variables()
      return params, rest, 0
    return super().eval_variables()

  # ------------------------------------------------------------------ data
  def loader(self, split, train: bool):
    """The batch loader of a video split (augmented when `train`) or of a features split."""
    common = (self.config.data, self.tokenizer, self.glosses, self.config.tokenizer.tgt_lang)
    if isinstance(split, features.FeatureSplit):
      return features.FeatureBatchLoader(split, *common, jax.process_index(), jax.process_count())
    return video.VideoBatchLoader(split, *common, train, jax.process_index(), jax.process_count())

  def train_dataset(self):
    if self.stage == 'sign2gloss2text':
      raise UserError('stage sign2gloss2text only evaluates: run it with --mode=eval, '
                       'init.visual=<Sign2Gloss workdir> and init.translation=<Gloss2Text workdir>.')
    plan = batching.train_plan(len(self.train_split), self.config.batch_size, self.config.seed)
    return batching.make_dataset(plan, self.loader(self.train_split, train=True),
                                 self.config.data.num_workers, seed=self.config.seed)

  def model_inputs(self, batch):
    """(frames, frame_mask): uint8 frames (already in data.channel_order) are normalised on the
    device as model.input_normalization says; float frames were normalised on the host."""
    frames = batch['frames']
    if frames.dtype == jnp.uint8:
      frames = augmentation.normalize(frames, self.config.model.input_normalization,
                                      self.config.data.channel_order, xp=jnp, reorder=False)
    return frames, batch['frame_mask']

  # ------------------------------------------------------------------ loss
  def loss(self, model, batch, rngs):
    cfg = self.config
    frames, frame_mask = self.model_inputs(batch)
    out = model(frames, frame_mask, batch['decoder_input_ids'] if self.translates else None,
                eos_id=self.tokenizer.eos_id,
                sign_lang_id=self.tokenizer.lang_id(cfg.tokenizer.src_lang), rngs=rngs)
    loss, metrics = sign_translation_loss(
        out, batch, ctc_weight=cfg.loss.ctc_weight, translation_weight=cfg.loss.translation_weight,
        label_smoothing=cfg.label_smoothing)
    metrics['frames'] = jnp.sum(batch['frame_mask']).astype(jnp.float32)
    return loss, metrics

  # ------------------------------------------------------------------ evaluation
  def _search(self, model, input_ids, attention_mask, inputs_embeds=None):
    ev, tok = self.config.eval, self.tokenizer
    return encoder_decoder_search(
        model.translation, input_ids, attention_mask, inputs_embeds=inputs_embeds,
        decoder_start_token_id=tok.lang_id(self.config.tokenizer.tgt_lang),
        eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, num_beams=ev.num_beams,
        max_new_tokens=ev.max_new_tokens, length_penalty=ev.length_penalty,
        length_penalty_style=ev.length_penalty_style, early_stopping=ev.early_stopping)[:, 0]

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
          result['sequences'] = self._search(model, None, mask, embeds)
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
          lambda params, rest, batch: self._search(self.merge(params, rest), batch['input_ids'],
                                                   batch['attention_mask']),
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

  def predict(self, params, rest, local_batch) -> tuple[list[str], list[str]]:
    """(gloss lines, translations) for every row of a global batch (all processes call this)."""
    batch = self.global_batch(local_batch)
    out = multihost_utils.process_allgather(self.visual_fn()(params, rest, batch), tiled=True)
    glosses = [self.glosses.decode(ids) for ids in ctc_decode_batch(
        out['gloss_log_probs'], out['gloss_lengths'], self.config.eval.ctc_beam_size)]
    if self.stage == 'sign2gloss':
      return glosses, []
    if self.stage == 'sign2gloss2text':
      sources = self.gloss_sources([g or '<unk>' for g in glosses])
      local = {k: batching.local_rows(v, jax.process_index(), jax.process_count())
               for k, v in sources.items()}
      out['sequences'] = multihost_utils.process_allgather(
          self.gloss_translation_fn()(params, rest, self.global_batch(local)), tiled=True)
    return glosses, [self.tokenizer.decode(s[1:]) for s in out['sequences']]

  def evaluate(self, params, rest, split: str):
    cfg = self.config
    if split not in self._splits:
      self._splits[split] = self.open_split(split)
    data = self._splits[split]
    glosses, texts = [''] * len(data), [''] * len(data)
    plan = batching.eval_plan(len(data), cfg.eval.batch_size)
    for local_batch in batching.make_dataset(plan, self.loader(data, train=False), num_workers=0):
      indices = multihost_utils.process_allgather(local_batch['index'], tiled=True)
      gloss_lines, translations = self.predict(params, rest, local_batch)
      for row, index in enumerate(indices):
        if index != batching.PAD_INDEX:
          glosses[index] = gloss_lines[row]
          if translations:
            texts[index] = translations[row]
    metrics, predictions = {}, {'gloss': glosses}
    if all(data.glosses):
      metrics.update(gloss_metrics(glosses, data.glosses, cfg.eval.gloss_cleanup))
    if self.translates:
      metrics.update(translation_metrics(texts, data.texts))
      predictions['text'] = texts
    return metrics, predictions

  # ------------------------------------------------------------------ feature extraction
  def extraction_variables(self):
    """(params, rest): the workdir's best checkpoint, else the start that config.init.visual or
    model.backbone_weights gives; a fresh random backbone is refused."""
    if self.checkpointer.best.latest_step() is not None:
      params, rest, _ = self.eval_variables()
      return params, rest
    if not (self.config.init.visual or self.config.model.backbone_weights):
      raise UserError(f'{self.workdir} has no best checkpoint, and neither init.visual nor '
                       'model.backbone_weights is set: features of a random backbone are '
                       'meaningless. Train here first or name the weights to extract with.')
    return self.init_variables()

  def extract_features(self) -> dict[str, int]:
    """Writes the backbone's eval-mode features [T', C] of every split of the dataset into
    workdir/features (sltjax/data/features.py); returns {split: videos written}. Splits already
    complete there are kept as they are."""
    self.require(EXTRACT_FEATURES, 'extracting features')
    params, rest = self.extraction_variables()
    directory = os.path.join(self.workdir, 'features')
    shardings = sharding.batch_sharding(self.mesh)

    def run(params, rest, batch):
      model = self.merge(params, rest)
      frames, frame_mask = self.model_inputs(batch)
      values, mask = model.backbone(frames.astype(self.model_config.dtype), frame_mask,
                                    train=False)  # [B, T', C], [B, T']
      return {'features': values.astype(jnp.float32),
              'lengths': jnp.sum(mask, axis=1).astype(jnp.int32)}

    extract = jax.jit(run, in_shardings=(self.param_shardings, self.rest_shardings, shardings),
                      out_shardings=shardings)
    written = {}
    for split in video.split_names(self.config.data):
      if features.split_complete(directory, split):
        log(f'extract_features: {split} already complete in {directory}; kept.')
        continue
      data = open_dataset_split(self.config.data, split)
      plan = batching.eval_plan(len(data), self.config.eval.batch_size)

      def rows(data=data, plan=plan):  # [T', C] per video, in the split's order
        for local_batch in batching.make_dataset(plan, self.loader(data, train=False), 0):
          indices = multihost_utils.process_allgather(local_batch['index'], tiled=True)
          out = multihost_utils.process_allgather(
              extract(params, rest, self.global_batch(local_batch)), tiled=True)
          for row, index in enumerate(indices):
            if index != batching.PAD_INDEX:
              yield np.asarray(out['features'][row, :out['lengths'][row]])

      index = {'dataset': data.name, 'id': data.ids, 'gloss': data.glosses, 'text': data.texts,
               'extracted_by': {'workdir': os.path.abspath(self.workdir),
                                'backbone': self.model_config.backbone}}
      if jax.process_index() == 0:
        written[split] = features.write_split(directory, split, rows(), index)
      else:  # every process runs the collectives; only process 0 writes
        collections.deque(rows(), maxlen=0)
      multihost_utils.sync_global_devices(f'features {split}')
      log(f'extract_features: {split}: {len(data)} videos -> {directory}')
    return written
