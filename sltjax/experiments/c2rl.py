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
from jax.experimental import multihost_utils

from sltjax import experiments, sharding, storage
from sltjax.convert import pretrained
from sltjax.data import batching
from sltjax.data.sign_labels import target_ids
from sltjax.errors import UserError
from sltjax.experiments.base import EXTRACT_FEATURES, RETRIEVE, TRANSLATE_VIDEOS, log
from sltjax.experiments.video import TOKENIZER_DIR, VideoExperiment
from sltjax.experiments.warm_start import WarmStart
from sltjax.losses import clcl_similarity, contrastive_loss, label_smoothed_cross_entropy
from sltjax.metrics import (RETRIEVAL_METRIC_NAMES, protocol, sign_retrieval_metrics,
                            translation_metrics)
from sltjax.models.backbones import registry as backbones
from sltjax.models.mbart import MBartConfig
from sltjax.models.systems import ipslt
from sltjax.models.systems.c2rl import (MAX_LOGIT_SCALE, STAGES, C2RLPretraining, SignRetriever,
                                        SignTranslator, VisualEncoderConfig)

SIMILARITY_BLOCK = 32  # videos and texts scored together when ranking a split or an index


def same_sentence(text_ids):
  """[B, B] 1 where two rows' token ids are equal (clips of one sentence), from [B, L]."""
  return jnp.all(text_ids[:, None, :] == text_ids[None, :, :], axis=-1).astype(jnp.float32)


def pad_stack(arrays: list[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
  """[n, length, d] zero-padded features and their [n, length] mask, from [len_i, d] arrays."""
  out = np.zeros((len(arrays), length, arrays[0].shape[-1]), np.float32)
  mask = np.zeros((len(arrays), length), np.float32)
  for i, a in enumerate(arrays):
    out[i, :len(a)], mask[i, :len(a)] = a, 1
  return out, mask


@experiments.register('c2rl')
class C2RLExperiment(VideoExperiment):
  REQUIRED_KEYS = VideoExperiment.REQUIRED_KEYS + ('stage',)

  @classmethod
  def warm_starts(cls, config) -> dict[str, WarmStart]:
    if config.stage == 'pretrain':
      return {}
    mbart = (('translation',),) if config.stage == 'slt' else (('video_encoder',),
                                                                 ('text_encoder',))
    # init.mbart first: a converted mBART's own tokenizer is the one its vocabulary matches.
    return {'mbart': WarmStart(prefixes=mbart, files=(TOKENIZER_DIR,)),
            'visual': WarmStart(prefixes=(('visual',),), files=(TOKENIZER_DIR,))}

  @classmethod
  def check_config(cls, config) -> list[str]:
    if config.stage not in STAGES:
      return [f'stage={config.stage!r} must be one of {STAGES}']
    problems = super().check_config(config)
    retrieval = config.stage != 'slt'
    problems += ipslt.config_problems(config.model, not retrieval, f'C2RL stage {config.stage}')
    if retrieval and config.eval.best_metric not in RETRIEVAL_METRIC_NAMES:
      problems.append(f'stage {config.stage} is scored by retrieval: eval.best_metric must be one '
                      f'of {list(RETRIEVAL_METRIC_NAMES)}')
    if not retrieval and config.eval.best_metric in RETRIEVAL_METRIC_NAMES:
      problems.append('stage slt translates: eval.best_metric must be a translation metric '
                      '(bleu4, ...)')
    if (config.stage != 'pretrain' and not config.init.get('visual')
        and re.search(config.optimizer.frozen or '$^', 'visual/')):
      problems.append(f'stage {config.stage} reads the pretrained visual encoder, frozen: set '
                      'init.visual to a C2RL pretraining workdir (configs/c2rl.py:pretrain), or '
                      'train the encoder from scratch with optimizer.frozen=""')
    if config.stage != 'pretrain' and config.model.get('backbone_weights'):
      problems.append(f'stage {config.stage} takes its visual encoder from init.visual: leave '
                      'model.backbone_weights empty')
    if config.stage == 'pretrain' and config.data.get('features_dir'):
      problems.append('stage pretrain trains the visual encoder on frames: leave '
                      'data.features_dir empty')
    return problems

  def __init__(self, config, workdir: str):
    super().__init__(config, workdir)
    self.stage = config.stage
    m = config.model
    self.visual_config = VisualEncoderConfig(**m.visual.to_dict())
    self.prototype = ipslt.PrototypeConfig.from_model_config(m)  # stage slt only (check_config)
    if self.stage == 'pretrain':
      text = MBartConfig.from_dict({**m.text.to_dict(), 'vocab_size': self.tokenizer.vocab_size,
                                    'pad_token_id': self.tokenizer.pad_id})
      self.set_model(lambda rngs: C2RLPretraining(self.visual_config, text, rngs=rngs))
    else:
      self.check_features_source()
      network = pretrained.mbart_config(config.init.get('mbart'), m.mbart.to_dict(),
                                        self.tokenizer.vocab_size, self.tokenizer.pad_id)
      if network.vocab_size != self.tokenizer.vocab_size:
        raise UserError(f'init.mbart has {network.vocab_size} ids but the tokenizer has '
                        f'{self.tokenizer.vocab_size}: pretrain with the tokenizer of the mBART '
                        'used downstream (config.tokenizer.path).')
      # The encoder trains (dropout, batch statistics) only when the optimizer updates it.
      train_visual = not re.search(config.optimizer.frozen or '$^', 'visual/')
      if self.stage == 'slt':
        self.set_model(lambda rngs: SignTranslator(self.visual_config, network,
                                                   train_visual=train_visual,
                                                   prototype=self.prototype, rngs=rngs))
      else:
        self.set_model(lambda rngs: SignRetriever(self.visual_config, network,
                                                  train_visual=train_visual, rngs=rngs))
    self._jitted = {}

  def capabilities(self) -> frozenset[str]:
    return frozenset({'pretrain': {RETRIEVE, EXTRACT_FEATURES}, 'slt': {TRANSLATE_VIDEOS},
                      'slret': {RETRIEVE}}[self.stage])

  def describe(self) -> str:
    return (f'C2RL {self.stage} on {self.visual_config.backbone}'
            + ipslt.describe(self.prototype))

  # ------------------------------------------------------------------ inputs
  @property
  def on_features(self) -> bool:
    return self.stage != 'pretrain' and bool(self.config.data.get('features_dir'))

  @property
  def feature_dim(self) -> int:
    return self.visual_config.d_model

  def check_features_source(self) -> None:
    """Refuses features extracted by another workdir than init.visual (their encoder would not
    be the one the checkpoint holds, so videos would be encoded differently)."""
    if not self.on_features:
      return
    index = storage.join(self.config.data.features_dir, f'{self.config.data.train_split}.json')
    if not storage.path(index).is_file():
      return  # opening the split says what is missing
    source = json.loads(storage.read_text(index)).get('extracted_by', {}).get('workdir', '')
    if source and storage.absolute(source) != storage.absolute(self.config.init.visual):
      raise UserError(f'{self.config.data.features_dir} holds features of {source}, but '
                      f'init.visual={self.config.init.visual}: start from the workdir that '
                      'extracted them.')

  def text_inputs(self, labels):
    """(text ids, mask) [B, L] for a text encoder: the sentence `X </s> lang` (the labels)."""
    return labels, (labels != self.tokenizer.pad_id).astype(jnp.int32)

  def text_batch(self, sentences: list[str]) -> np.ndarray:
    """Token ids [len(sentences), bucket] `X </s> lang`, padded, as the data pipeline gives."""
    tok, buckets = self.tokenizer, self.config.data.length_buckets
    lang_id = tok.lang_id(self.config.tokenizer.tgt_lang)
    rows = [batching.fit_length(target_ids(tok, s, lang_id), max(buckets), keep_last=2)
            for s in sentences]
    return batching.pad_rows(rows, batching.bucket_length(max(map(len, rows)), buckets),
                             tok.pad_id)

  # ------------------------------------------------------------------ variables
  def converted_parts(self):
    """Pretraining: the backbone from model.backbone_weights (torchvision ResNet, ImageNet)."""
    if self.stage != 'pretrain' or not self.config.model.get('backbone_weights'):
      return {}
    return {('visual', 'backbone'): backbones.read_weights(
        self.visual_config.backbone, self.visual_config.backbone_options,
        self.pretrained_copy('backbone_weights'))}

  def constrain(self, params):
    """The logit scale clamped at ln 100 after every update (CLIP, CiCo)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, value: (jnp.minimum(value, MAX_LOGIT_SCALE)
                             if getattr(path[0], 'key', None) == 'logit_scale' else value), params)

  # ------------------------------------------------------------------ loss
  def contrastive(self, video, video_mask, text, text_mask, text_ids, logit_scale):
    """ICL: CLCL similarities of the global batch -> symmetric InfoNCE."""
    loss_config = self.config.loss
    v2t, t2v = clcl_similarity(video, video_mask, text, text_mask,
                               temperature=loss_config.temperature,
                               mask_padding=loss_config.mask_padding,
                               text_block=loss_config.text_block)
    positives = (same_sentence(text_ids) if loss_config.same_sentence_positives
                 else jnp.eye(len(text_ids)))
    return contrastive_loss(v2t, t2v, positives, logit_scale,
                            label_smoothing=loss_config.contrastive_label_smoothing,
                            cico_mix=loss_config.cico_mix)

  def loss(self, model, batch, rngs):
    cfg = self.config
    inputs, mask = self.model_inputs(batch)
    text_ids, text_mask = self.text_inputs(batch['labels'])
    metrics = {'frames': jnp.sum(batch['frame_mask']).astype(jnp.float32)}
    if self.stage == 'slret':
      video, video_mask = model.encode_video(inputs, mask, rngs=rngs)
      text = model.encode_text(text_ids, text_mask, rngs)
      loss = self.contrastive(video, video_mask, text, text_mask, text_ids, model.logit_scale[...])
      return loss, {**metrics, 'icl': loss, 'logit_scale': model.logit_scale[...]}
    if self.stage == 'slt':
      embeds, mask = model.encoder_inputs(inputs, mask, rngs)
      loss, translation = model.translation.translation_loss(
          mask, batch['decoder_input_ids'], batch['labels'], batch['label_weights'],
          inputs_embeds=embeds, label_smoothing=cfg.label_smoothing, rngs=rngs)
      return loss, {**metrics, **translation}
    out = model(inputs, mask, text_ids, text_mask, batch['decoder_input_ids'], rngs=rngs)
    ce_sum, tokens = label_smoothed_cross_entropy(out['logits'], batch['labels'],
                                                  batch['label_weights'], cfg.label_smoothing)
    ce = ce_sum / jnp.maximum(tokens, 1.0)
    metrics.update(tokens=tokens)
    icl = self.contrastive(out['video'], out['video_mask'], out['text'], text_mask, text_ids,
                           model.logit_scale[...])
    loss = cfg.loss.alpha * icl + cfg.loss.beta * ce
    return loss, {**metrics, 'icl': icl, 'ecl': ce, 'logit_scale': model.logit_scale[...]}

  # ------------------------------------------------------------------ embeddings (retrieval)
  def _jit(self, name: str, fn, out_shardings):
    """fn(params, rest, batch) jitted once, batch rows sharded over the data-parallel axes."""
    if name not in self._jitted:
      self._jitted[name] = jax.jit(
          fn, in_shardings=(self.param_shardings, self.rest_shardings,
                            sharding.batch_sharding(self.mesh)), out_shardings=out_shardings)
    return self._jitted[name]

  def encode_video(self, model, inputs, mask):
    """(features [B, T, d], mask [B, T]) that retrieval compares, in eval mode, from frames or
    (downstream) extracted features."""
    if self.stage == 'pretrain':
      return model.visual(inputs, mask)
    return model.encode_video(inputs, mask)

  def encode_features(self, model, frames, frame_mask):
    return model.visual(frames, frame_mask)

  def video_embeddings(self, params, rest, local_batch) -> list[np.ndarray]:
    """[T_i, d] features of every row of a global batch of clips (all processes call this)."""
    def run(params, rest, batch):
      inputs, mask = self.model_inputs(batch)
      values, mask = self.encode_video(self.merge(params, rest), inputs, mask)
      return {'values': values.astype(jnp.float32),
              'lengths': jnp.sum(mask, axis=1).astype(jnp.int32)}

    fn = self._jit('video', run, sharding.batch_sharding(self.mesh))
    batch = {k: local_batch[k] for k in ('frames', 'frame_mask')}
    out = multihost_utils.process_allgather(fn(params, rest, self.global_batch(batch)),
                                            tiled=True)
    return [out['values'][i, :n] for i, n in enumerate(out['lengths'])]

  def text_embeddings(self, params, rest, text_ids: np.ndarray) -> list[np.ndarray]:
    """[L_i, d] features of every row of token ids [B, L] (a global batch; all processes)."""
    def run(params, rest, batch):
      ids, mask = self.text_inputs(batch['text_ids'])
      values = self.merge(params, rest).encode_text(ids, mask)
      return {'values': values.astype(jnp.float32), 'lengths': jnp.sum(mask, axis=1)}

    fn = self._jit('text', run, sharding.batch_sharding(self.mesh))
    rows = batching.local_rows(text_ids, jax.process_index(), jax.process_count())
    out = multihost_utils.process_allgather(fn(params, rest, self.global_batch(
        {'text_ids': rows})), tiled=True)
    return [out['values'][i, :n] for i, n in enumerate(out['lengths'])]

  def embed_texts(self, params, rest, sentences: list[str]) -> list[np.ndarray]:
    """[L_i, d] text features of each sentence, eval.batch_size at a time."""
    size = self.config.eval.batch_size
    out = []
    for start in range(0, len(sentences), size):
      chunk = sentences[start:start + size]
      ids = self.text_batch(chunk + [chunk[0]] * (size - len(chunk)))
      out.extend(self.text_embeddings(params, rest, ids)[:len(chunk)])
    return out

  def similarity(self, videos: list[np.ndarray], texts: list[np.ndarray]):
    """(v2t, t2v) [len(videos), len(texts)] CLCL scores of [T_i, d] video features against
    [L_j, d] text features, computed SIMILARITY_BLOCK x SIMILARITY_BLOCK pairs at a time."""
    loss_config = self.config.loss
    # Host-side scoring: every process computes all of it on its first local device.
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    if 'similarity' not in self._jitted:
      self._jitted['similarity'] = jax.jit(
          lambda v, vm, t, tm: clcl_similarity(v, vm, t, tm, temperature=loss_config.temperature,
                                               mask_padding=loss_config.mask_padding),
          in_shardings=(local,) * 4, out_shardings=(local, local))
    score = self._jitted['similarity']
    frames = batching.bucket_length(max(len(v) for v in videos), self.config.data.frame_buckets)
    frames = max(frames, max(len(v) for v in videos))
    tokens = max(len(t) for t in texts)
    v2t = np.zeros((len(videos), len(texts)), np.float32)
    t2v = np.zeros_like(v2t)
    block = SIMILARITY_BLOCK
    for i in range(0, len(videos), block):
      chunk = videos[i:i + block]
      v, vm = pad_stack(chunk + [chunk[0]] * (block - len(chunk)), frames)
      for j in range(0, len(texts), block):
        text_chunk = texts[j:j + block]
        t, tm = pad_stack(text_chunk + [text_chunk[0]] * (block - len(text_chunk)), tokens)
        a, b = jax.device_get(score(v, vm, t, tm))
        v2t[i:i + len(chunk), j:j + len(text_chunk)] = a[:len(chunk), :len(text_chunk)]
        t2v[i:i + len(chunk), j:j + len(text_chunk)] = b[:len(chunk), :len(text_chunk)]
    return v2t, t2v

  # ------------------------------------------------------------------ evaluation
  def translate_fn(self):
    """Jitted (params, rest, batch) -> best sequences [B, length] (slt)."""
    def run(params, rest, batch):
      model = self.merge(params, rest)
      inputs, mask = self.model_inputs(batch)
      embeds, mask = model.encoder_inputs(inputs, mask)
      return self.beam_search(model.translation, None, mask, embeds)
    return self._jit('translate', run, sharding.batch_sharding(self.mesh))

  def predict(self, params, rest, local_batch) -> dict[str, list[str]]:
    """{'text': translations} of a global batch of clips (slt; all processes call this)."""
    if self.stage != 'slt':
      raise UserError(f'{self.workdir}: a C2RL {self.stage} model does not translate; train the '
                      'slt stage from it.')
    return {'text': self.translations(self.translate_fn(), params, rest, local_batch)}

  def evaluate(self, params, rest, split: str):
    if self.stage == 'slt':
      data, predictions = self.predictions(params, rest, split)
      return translation_metrics(predictions['text'], data.texts,
                                 **protocol(self.config.eval)), predictions
    data, outputs = self.split_outputs(
        split, lambda local_batch: {'video': self.video_embeddings(params, rest, local_batch)})
    sentences = list(dict.fromkeys(data.texts))  # each distinct sentence embedded and scored once
    v2t, t2v = self.similarity(outputs['video'], self.embed_texts(params, rest, sentences))
    column = {sentence: j for j, sentence in enumerate(sentences)}
    of_video = [column[text] for text in data.texts]  # [videos, texts] as the split lists them
    metrics = sign_retrieval_metrics(v2t[:, of_video], t2v[:, of_video], data.texts)
    best = np.argmax(0.5 * v2t + 0.5 * t2v, axis=1)  # each video's top-ranked sentence
    log(f'{split}: retrieval over {len(data)} videos and {len(sentences)} sentences')
    return metrics, {'text': [sentences[j] for j in best]}
