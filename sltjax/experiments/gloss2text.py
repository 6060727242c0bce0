"""Gloss2Text: gloss sentences -> spoken sentences with the mBART-shaped transformer, from
scratch or started (config.init.model) from a converted mBART or an earlier Gloss2Text workdir.

The sentence pairs come from text files (data.path: {split}.gloss / {split}.de) or from the labels
of a built video dataset (data.name, data.data_dir), so that MMTLB's Gloss2Text stage trains on
the same dataset as its video stages."""
import os

import jax
from jax.experimental import multihost_utils

from sltjax import experiments
from sltjax.convert import pretrained
from sltjax.data import batching, text
from sltjax.data.tokenizers import load_tokenizer
from sltjax.decoding import encoder_decoder_search
from sltjax.errors import UserError
from sltjax.experiments import warm_start
from sltjax.experiments.base import Experiment
from sltjax.experiments.video import TOKENIZER_DIR, open_dataset_split
from sltjax.metrics import METRIC_NAMES, protocol, translation_metrics


def read_split(data_config, split: str) -> tuple[list[str], list[str]]:
  """(gloss lines, sentences) of `split`: the text files under data.path, or the labels of the
  built video dataset data.name (built on first use where it can be)."""
  if not data_config.get('name'):
    return text.read_parallel(data_config, split)
  labels = open_dataset_split(data_config, split)
  glosses = labels.glosses
  if data_config.lowercase_source:
    glosses = [g.lower() for g in glosses]
  return glosses, labels.texts


@experiments.register('gloss2text')
class Gloss2TextExperiment(Experiment):
  TRANSLATION_NETWORK = True
  METRICS = METRIC_NAMES
  MOVED_KEYS = {'model.init_from': 'init.model'}

  @classmethod
  def warm_starts(cls, config) -> dict[str, warm_start.WarmStart]:
    return {'model': warm_start.WarmStart(prefixes=((),), files=(TOKENIZER_DIR,))}

  @classmethod
  def check_config(cls, config) -> list[str]:
    problems = super().check_config(config)
    if not (config.data.get('path') or config.data.get('name')):
      problems.append('data.path is empty: point it at the folder of {split}.gloss / '
                      '{split}.<lang> files, or set data.name and data.data_dir to train on a '
                      'built video dataset\'s labels')
    if problems or config.get('init', {}).get('model'):
      return problems
    if 'd_model' not in config.model:
      return ['init.model is empty: this variant fine-tunes a pretrained model; pass '
              '--config.init.model=DIR (written by python -m sltjax.convert)']
    if config.tokenizer.kind == 'mbart' and not config.tokenizer.path:
      return ['tokenizer.kind="mbart" needs tokenizer.path (an mBART tokenizer directory) or '
              'init.model']
    return []

  def model_summary(self) -> str:
    return 'Gloss2Text: gloss sentences -> text'

  def __init__(self, config, workdir: str):
    super().__init__(config, workdir)
    start = config.init.model
    sources, targets = read_split(config.data, config.data.train_split)
    self.train_lines = (sources, targets)
    tokenizer_config = warm_start.tokenizer_config(config.tokenizer, start)
    self.tokenizer = load_tokenizer(tokenizer_config, os.path.join(workdir, TOKENIZER_DIR),
                                    train_texts=sources + targets)
    # A converted model gives the architecture (dropout and dtypes come from config.model).
    self.model_config = pretrained.mbart_config(start, config.model.to_dict(),
                                                self.tokenizer.vocab_size, self.tokenizer.pad_id)
    if self.model_config.vocab_size != self.tokenizer.vocab_size:
      raise UserError(
          f'The pretrained model in {start} has {self.model_config.vocab_size} ids but the '
          f'tokenizer ({tokenizer_config.path or tokenizer_config.kind}) has '
          f'{self.tokenizer.vocab_size}: use the tokenizer that was trimmed with it.')
    self.set_model(lambda rngs: self.translation_network(self.model_config, rngs))

  def tokenized_split(self, split: str) -> text.TokenizedCorpus:
    sources, targets = (self.train_lines if split == self.config.data.train_split else
                        read_split(self.config.data, split))
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
    return model.translation_loss(
        batch['attention_mask'], batch['decoder_input_ids'], batch['labels'],
        batch['label_weights'], input_ids=batch['input_ids'],
        label_smoothing=self.config.label_smoothing,
        per=self.config.get('translation_loss_per', 'token'), rngs=rngs)

  def decode_fn(self):
    """Jitted beam search: (params, rest, batch) -> best sequences [batch, 1 + max_new_tokens]."""
    tok = self.tokenizer
    return self.jitted('decode', lambda params, rest, batch: encoder_decoder_search(
        self.merge(params, rest), batch['input_ids'], batch['attention_mask'],
        decoder_start_token_id=tok.lang_id(self.config.tokenizer.tgt_lang),
        eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, **self.search_options())[:, 0])

  def evaluate(self, params, rest, split: str):
    corpus = self.tokenized_split(split)
    plan = batching.eval_plan(len(corpus), self.config.eval.batch_size)

    def translated(local_batch):
      sequences = multihost_utils.process_allgather(
          self.decode_fn()(params, rest, self.global_batch(local_batch)), tiled=True)
      return {'text': [self.tokenizer.decode(s[1:]) for s in sequences]}

    hypotheses = self.outputs_in_order(
        batching.make_dataset(plan, self._loader(corpus), num_workers=0), translated,
        len(corpus))['text']
    return (translation_metrics(hypotheses, corpus.references, **protocol(self.config.eval)),
            {'text': hypotheses})
