"""What every video system shares (VideoExperiment): opening a built dataset (building
synthetic_signs on first use) or a features dataset, the gloss vocabulary and the tokenizer, the
train and evaluation loaders, the evaluation loop that returns predictions in dataset order, and
feature extraction. A system adds its model, its loss, `predict` and its metrics.

Config keys read here: data (sltjax/data/video.py's, plus data.features_dir), tokenizer,
model.backbone, model.input_normalization, eval.batch_size, batch_size, seed.
"""
import collections
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from sltjax import storage
from sltjax.data import augmentation, batching, features, video
from sltjax.decoding import encoder_decoder_search
from sltjax.data.tokenizers import (PRETRAINED_TOKENIZERS, GlossVocabulary, Tokenizer,
                                    load_tokenizer)
from sltjax.errors import MissingInputError, UserError
from sltjax.experiments import warm_start
from sltjax.experiments.base import EXTRACT_FEATURES, Experiment, log
from sltjax.metrics import gloss_metrics, protocol, translation_metrics
from sltjax.models.backbones import registry as backbones

GLOSS_FILE = 'glosses.json'  # the gloss vocabulary, in the workdir
TOKENIZER_DIR = 'tokenizer'  # the text tokenizer, in the workdir
FEATURES_DIR = 'features'  # --mode=extract_features writes workdir/features


def open_dataset_split(data_config, split: str) -> video.VideoSplit:
  """The split, building synthetic_signs on first use when config.data.build_if_missing."""
  try:
    return video.open_split(data_config, split)
  except MissingInputError:
    if not (data_config.get('build_if_missing') and data_config.name == 'synthetic_signs'):
      raise
  from sltjax.data.build import build  # pylint: disable=import-outside-toplevel
  log(f'Building synthetic_signs under {data_config.data_dir} (first use; about a minute).')
  if jax.process_index() == 0:
    build('synthetic_signs', data_config.data_dir, num_workers=os.cpu_count() or 1,
          show_progress=True)
  multihost_utils.sync_global_devices('synthetic_signs built')
  return video.open_split(data_config, split)


class VideoExperiment(Experiment):
  """A system trained on video clips (or on features extracted from them)."""

  REQUIRED_KEYS = ('data.name', 'data.data_dir')
  # Where to get a missing pretrained network, by model key (a system adds its own).
  PRETRAINED_SOURCES: dict[str, str] = {}
  # The released weights the paper starts the frame backbone from ('' : none); training from
  # nothing then needs model.backbone_weights, init.visual, or backbone_weights='scratch'.
  BACKBONE_START = ''

  @classmethod
  def check_config(cls, config) -> list[str]:
    problems = super().check_config(config)
    if config.model.get('backbone') == 'features':
      if not config.data.get('features_dir'):
        problems.append('model.backbone="features" trains on a features dataset: set '
                        'data.features_dir (written by --mode=extract_features into '
                        '<workdir>/features)')
      if config.model.get('backbone_weights') not in (None, '', 'scratch'):
        problems.append('model.backbone_weights needs a backbone network, not features')
    if config.data.get('eval_crop', 'centre') not in augmentation.EVAL_CROPS:
      problems.append(f'data.eval_crop={config.data.eval_crop!r}: set one of '
                      f'{augmentation.EVAL_CROPS}')
    return problems

  def pretrained_copy(self, key: str) -> str:
    """A local path of the downloaded network config.model.<key> names (a file or a Hugging
    Face directory; from gs://, a copy made once); MissingInputError naming the key when absent."""
    location = self.config.model[key]
    if not storage.path(location).exists():
      source = self.PRETRAINED_SOURCES.get(key, 'the downloaded checkpoint file or directory')
      raise MissingInputError(f'model.{key}={location} not found: set it to {source}.')
    return storage.local_copy(location)

  def converted_backbone(self, prefix: tuple[str, ...], name: str,
                         options: backbones.BackboneOptions) -> dict:
    """{prefix: the variables of backbone `name` read from model.backbone_weights} ({} for
    'scratch', or when it is unset and init.visual or no BACKBONE_START asks for none):
    `converted_parts` for a frame backbone that starts from released weights. Runs only when
    training starts from nothing."""
    weights = self.config.model.get('backbone_weights')
    if weights == 'scratch' or self.on_features:
      return {}
    if not weights:
      if self.BACKBONE_START and not self.config.get('init', {}).get('visual'):
        raise UserError(
            f'model.backbone_weights is empty: {self.describe()} starts its backbone from '
            f'{self.BACKBONE_START}. Pass --config.model.backbone_weights=FILE, or '
            '--config.model.backbone_weights=scratch to train it from random weights.')
      return {}
    return {prefix: backbones.read_weights(name, options, self.pretrained_copy('backbone_weights'))}

  @property
  def on_features(self) -> bool:
    """Whether the model reads a features dataset (data.features_dir) instead of frames."""
    return self.config.model.get('backbone') == 'features'

  @property
  def feature_dim(self) -> int:
    """The width of the features the model reads when `on_features`."""
    return self.config.model.feature_dim

  # ------------------------------------------------------------------ data
  @functools.cached_property
  def train_split(self) -> video.VideoSplit | features.FeatureSplit:
    """Opened only when needed: translating from a workdir does not need the dataset."""
    return self.open_split(self.config.data.train_split)

  def open_split(self, split: str) -> video.VideoSplit | features.FeatureSplit:
    """A split of the video dataset, or of data.features_dir for backbone='features'."""
    if self.on_features:
      return features.open_split(self.config.data.features_dir, split, self.feature_dim)
    return open_dataset_split(self.config.data, split)

  @functools.cached_property
  def eval_splits(self) -> dict[str, video.VideoSplit | features.FeatureSplit]:
    """Evaluation splits opened so far, reused by later evaluations."""
    return {}

  @functools.cached_property
  def glosses(self) -> GlossVocabulary:
    """The workdir's gloss vocabulary: brought from a start, else built from the train split."""
    gloss_file = storage.join(self.workdir, GLOSS_FILE)
    if not storage.path(gloss_file).exists() and jax.process_index() == 0:
      GlossVocabulary.build(self.train_split.glosses).save(gloss_file)
    multihost_utils.sync_global_devices('gloss vocabulary')
    return GlossVocabulary.load(gloss_file)

  @functools.cached_property
  def tokenizer(self) -> Tokenizer:
    """The workdir's tokenizer: brought from a start (a workdir's tokenizer/, or the one a
    converted mBART holds), else built from the train split's sentences."""
    directory = storage.join(self.workdir, TOKENIZER_DIR)
    config = warm_start.tokenizer_config(self.config.tokenizer, self.start_directory(TOKENIZER_DIR))
    trains_on_texts = (config.kind not in PRETRAINED_TOKENIZERS
                       and not storage.path(directory).exists())
    return load_tokenizer(config, directory,
                          train_texts=self.train_split.texts if trains_on_texts else [])

  def record_labels(self, split) -> dict[str, np.ndarray]:
    """Labels the system adds to every batch of `split`: {name: [records, ...] array}."""
    return {}

  def record_label_dims(self) -> dict[str, tuple[int, ...]]:
    """{name: per-record shape} of `record_labels`, known without a split."""
    return {}

  def loader(self, split, train: bool):
    """The batch loader of a video split (augmented when `train`) or of a features split."""
    common = (self.config.data, self.tokenizer, self.glosses, self.config.tokenizer.tgt_lang)
    extra = self.record_labels(split)
    if isinstance(split, features.FeatureSplit):
      return features.FeatureBatchLoader(split, *common, jax.process_index(), jax.process_count(),
                                         extra)
    return video.VideoBatchLoader(split, *common, train, jax.process_index(), jax.process_count(),
                                  extra)

  def train_dataset(self):
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

  # ------------------------------------------------------------------ evaluation
  def beam_search(self, mbart, input_ids, attention_mask, inputs_embeds=None):
    """The best sequence [B, length] of config.eval's beam search in `mbart` (starting with the
    target language code), from token ids or `inputs_embeds` [B, T, d]."""
    tok = self.tokenizer
    return encoder_decoder_search(
        mbart, input_ids, attention_mask, inputs_embeds=inputs_embeds,
        decoder_start_token_id=tok.lang_id(self.config.tokenizer.tgt_lang),
        eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, **self.search_options())[:, 0]

  def translations(self, translate_fn, params, rest, local_batch) -> list[str]:
    """The text of each row of a global batch of clips, from translate_fn(params, rest, batch)
    -> best sequences [B, length] that begin with the start token (all processes call this)."""
    batch = {k: local_batch[k] for k in ('frames', 'frame_mask')}
    sequences = multihost_utils.process_allgather(
        translate_fn(params, rest, self.global_batch(batch)), tiled=True)
    return [self.tokenizer.decode(s[1:]) for s in sequences]

  def eval_batches(self, data):
    """This process's evaluation batches of `data` (padded rows carry batching.PAD_INDEX)."""
    plan = batching.eval_plan(len(data), self.config.eval.batch_size)
    return batching.make_dataset(plan, self.loader(data, train=False), num_workers=0)

  def split_outputs(self, split: str, outputs):
    """(the opened split, {kind: one value per video in the split's order}) from
    outputs(local_batch) -> {kind: one value per row of the global batch}, over every batch of
    `split` (all processes call this)."""
    if split not in self.eval_splits:
      self.eval_splits[split] = self.open_split(split)
    data = self.eval_splits[split]
    return data, self.outputs_in_order(self.eval_batches(data), outputs, len(data))

  def predictions(self, params, rest, split: str):
    """(the opened split, {kind: one prediction per video in the split's order}) from `predict`."""
    return self.split_outputs(split, lambda local_batch: self.predict(params, rest, local_batch))

  def evaluate(self, params, rest, split: str):
    """`predict` over `split`, scored: recognised glosses by WER (where the split has glosses),
    translations by the translation metrics of config.eval's protocol."""
    data, predictions = self.predictions(params, rest, split)
    metrics = {}
    if 'gloss' in predictions and all(data.glosses):
      metrics.update(gloss_metrics(predictions['gloss'], data.glosses,
                                   self.config.eval.gloss_cleanup))
    if 'text' in predictions:
      metrics.update(translation_metrics(predictions['text'], data.texts,
                                         **protocol(self.config.eval)))
    return metrics, predictions

  # ------------------------------------------------------------------ feature extraction
  def encode_features(self, model, frames, frame_mask):
    """(features [B, T', C], mask [B, T']) that --mode=extract_features writes; by default the
    backbone's, in eval mode."""
    return model.backbone(frames, frame_mask, train=False)

  def extraction_variables(self):
    """(params, rest): the workdir's best checkpoint, else the start config.init or converted
    weights give; a fresh random network is refused."""
    if self.checkpointer.best.latest_step() is not None:
      params, rest, _ = self.eval_variables()
      return params, rest
    if not (warm_start.sources(self.warm_starts(self.config), self.config.get('init'))
            or self.converted_parts()):
      raise UserError(f'{self.workdir} has no best checkpoint, and the config names no weights '
                      'to start from (config.init, model.backbone_weights): features of a random '
                      'network are meaningless. Train here first or name the weights to extract '
                      'with.')
    return self.init_variables()

  def extract_features(self) -> dict[str, int]:
    """Writes `encode_features` of every video of every split of the dataset into
    workdir/features (sltjax/data/features.py); returns {split: videos written}. Splits already
    complete there are kept as they are."""
    self.require(EXTRACT_FEATURES, 'extracting features')
    params, rest = self.extraction_variables()
    directory = storage.join(self.workdir, FEATURES_DIR)

    def run(params, rest, batch):
      frames, frame_mask = self.model_inputs(batch)
      values, mask = self.encode_features(self.merge(params, rest), frames, frame_mask)
      return {'features': values.astype(jnp.float32),
              'lengths': jnp.sum(mask, axis=1).astype(jnp.int32)}

    extract = self.jitted('extract_features', run)
    written = {}
    for split in video.split_names(self.config.data):
      if features.split_complete(directory, split):
        log(f'extract_features: {split} already complete in {directory}; kept.')
        continue
      data = open_dataset_split(self.config.data, split)

      def rows(data=data):  # [T', C] per video, in the split's order
        def extracted(local_batch):
          out = multihost_utils.process_allgather(
              extract(params, rest, self.global_batch(local_batch)), tiled=True)
          return {'features': [f[:n] for f, n in zip(out['features'], out['lengths'])]}
        for _, values in self.rows_in_order(self.eval_batches(data), extracted):
          yield np.asarray(values['features'])

      index = {'dataset': data.name, 'id': data.ids, 'gloss': data.glosses, 'text': data.texts,
               'extracted_by': {'workdir': storage.absolute(self.workdir),
                                'model': self.describe()}}
      if jax.process_index() == 0:
        written[split] = features.write_split(directory, split, rows(), index)
      else:  # every process runs the collectives; only process 0 writes
        collections.deque(rows(), maxlen=0)
      multihost_utils.sync_global_devices(f'features {split}')
      log(f'extract_features: {split}: {len(data)} videos -> {directory}')
    return written

