"""Gloss2Text: gloss sentences -> spoken sentences with the mBART-shaped transformer, from
scratch or fine-tuned from a converted mBART (config.model.init_from)."""
import os

import jax
import jax.numpy as jnp
import ml_collections
from jax.experimental import multihost_utils

from sltjax import sharding
from sltjax.convert import pretrained
from sltjax.data import batching, text
from sltjax.data.tokenizers import load_tokenizer
from sltjax.decoding import encoder_decoder_search
from sltjax.experiments.base import Experiment
from sltjax.losses import label_smoothed_cross_entropy
from sltjax.metrics import translation_metrics
from sltjax.models.mbart import MBart, MBartConfig


class Gloss2TextExperiment(Experiment):

  def __init__(self, config, workdir: str):
    super().__init__(config, workdir)
    init_from = config.model.get('init_from')
    sources, targets = text.read_parallel(config.data, config.data.train_split)
    self.train_lines = (sources, targets)
    tokenizer_config = config.tokenizer
    if tokenizer_config.kind == 'mbart' and not tokenizer_config.path and init_from:
      tokenizer_config = ml_collections.ConfigDict({**config.tokenizer.to_dict(),
                                                    'path': init_from})
    self.tokenizer = load_tokenizer(tokenizer_config, os.path.join(workdir, 'tokenizer'),
                                    train_texts=sources + targets)
    if init_from:  # architecture from the pretrained checkpoint; dropout and dtypes from config
      self.model_config = pretrained.model_config(init_from, config.model.to_dict())
      if self.model_config.vocab_size != self.tokenizer.vocab_size:
        raise ValueError(
            f'The pretrained model in {init_from} has {self.model_config.vocab_size} ids but the '
            f'tokenizer ({tokenizer_config.path or tokenizer_config.kind}) has '
            f'{self.tokenizer.vocab_size}: use the tokenizer that was trimmed with it.')
    else:
      self.model_config = MBartConfig.from_dict({**config.model.to_dict(),
                                                 'vocab_size': self.tokenizer.vocab_size,
                                                 'pad_token_id': self.tokenizer.pad_id})
    self.set_model(lambda rngs: MBart(self.model_config, rngs=rngs))
    self._decode_fn = None

  def init_variables(self):
    init_from = self.config.model.get('init_from')
    if not init_from:
      return self.fresh_variables()
    restored = pretrained.restore_variables(init_from, self.abstract_variables())
    return restored['params'], restored['rest']

  def tokenized_split(self, split: str) -> text.TokenizedCorpus:
    sources, targets = (self.train_lines if split == self.config.data.train_split else
                        text.read_parallel(self.config.data, split))
    return text.tokenize_corpus(sources, targets, self.tokenizer, self.config.tokenizer.src_lang)

  def _loader(self, corpus):
    cfg = self.config
    return text.BatchLoader(corpus, self.tokenizer, cfg.tokenizer.tgt_lang,
                            cfg.data.length_buckets, jax.process_index(), jax.process_count())

  def train_dataset(self):
    corpus = self.tokenized_split(self.config.data.train_split)
    plan = batching.train_plan(len(corpus), self.config.batch_size, self.config.seed)
    return batching.make_dataset(plan, self._loader(corpus), self.config.data.num_workers)

  def loss(self, model, batch, rngs):
    logits = model(batch['input_ids'], batch['attention_mask'], batch['decoder_input_ids'],
                   rngs=rngs)
    loss_sum, tokens = label_smoothed_cross_entropy(logits, batch['labels'],
                                                    batch['label_weights'],
                                                    self.config.label_smoothing)
    return loss_sum / jnp.maximum(tokens, 1.0), {'tokens': tokens}

  def decode_fn(self):
    """Jitted beam search: (params, rest, batch) -> best sequences [batch, 1 + max_new_tokens]."""
    if self._decode_fn is None:
      ev, tok = self.config.eval, self.tokenizer
      batch_sharding = sharding.batch_sharding(self.mesh)

      def decode(params, rest, batch):
        sequences = encoder_decoder_search(
            self.merge(params, rest), batch['input_ids'], batch['attention_mask'],
            decoder_start_token_id=tok.lang_id(self.config.tokenizer.tgt_lang),
            eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, num_beams=ev.num_beams,
            max_new_tokens=ev.max_new_tokens, length_penalty=ev.length_penalty,
            length_penalty_style=ev.length_penalty_style, early_stopping=ev.early_stopping)
        return sequences[:, 0]

      self._decode_fn = jax.jit(
          decode, in_shardings=(self.param_shardings, self.rest_shardings, batch_sharding),
          out_shardings=batch_sharding)
    return self._decode_fn

  def evaluate(self, params, rest, split: str):
    corpus = self.tokenized_split(split)
    hypotheses = [''] * len(corpus)
    plan = batching.eval_plan(len(corpus), self.config.eval.batch_size)
    for local_batch in batching.make_dataset(plan, self._loader(corpus), num_workers=0):
      batch = self.global_batch(local_batch)
      sequences = multihost_utils.process_allgather(self.decode_fn()(params, rest, batch),
                                                    tiled=True)
      indices = multihost_utils.process_allgather(batch['index'], tiled=True)
      for index, sequence in zip(indices, sequences):
        if index != batching.PAD_INDEX:
          hypotheses[index] = self.tokenizer.decode(sequence[1:])
    return translation_metrics(hypotheses, corpus.references), {'text': hypotheses}
