"""sltjax's pretrained-model directory: what `python -m sltjax.convert` writes and what a
system's config.init entry (Gloss2Text: init.model; MMTLB: init.translation) starts training from.

  DIR/model_config.json   architecture (MBartConfig fields; dropout and dtypes come from config)
  DIR/model/              orbax checkpoint {'params', 'rest'} of the converted model
  DIR/sentencepiece.bpe.model, tokenizer_config.json   the tokenizer (tokenizer.kind='mbart')
"""
import dataclasses
import json
import os
import shutil

import orbax.checkpoint as ocp
from flax import nnx

from sltjax.data.tokenizers import copy_tokenizer_files
from sltjax.models.mbart import MBartConfig

MODEL_CONFIG = 'model_config.json'
WEIGHTS = 'model'
# Set by the training config, not by the checkpoint.
TRAINING_FIELDS = ('dropout', 'attention_dropout', 'activation_dropout', 'dtype', 'param_dtype',
                   'remat')


def save_pretrained(model, directory: str, tokenizer_dir: str | None = None) -> None:
  """Writes `model` (an MBart) and, when given, the tokenizer files of `tokenizer_dir`."""
  directory = os.path.abspath(directory)
  staging = directory.rstrip('/') + '.partial'
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  architecture = {k: v for k, v in dataclasses.asdict(model.config).items()
                  if k not in TRAINING_FIELDS}
  with open(os.path.join(staging, MODEL_CONFIG), 'w', encoding='utf-8') as f:
    json.dump(architecture, f, indent=2)
  _, params, rest = nnx.split(model, nnx.Param, ...)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(staging, WEIGHTS), {'params': params, 'rest': rest})
  if tokenizer_dir:
    copy_tokenizer_files(tokenizer_dir, staging)
  if os.path.exists(directory):
    shutil.rmtree(directory)
  os.replace(staging, directory)


def read_architecture(directory: str) -> dict:
  path = os.path.join(directory, MODEL_CONFIG)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found: a pretrained start must be a directory written by '
                            '`python -m sltjax.convert` (see its --help).')
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def model_config(directory: str, training: dict) -> MBartConfig:
  """The checkpoint's architecture with dropout/dtype/remat from `training` (config.model)."""
  return MBartConfig.from_dict({**read_architecture(directory),
                                **{k: v for k, v in training.items() if k in TRAINING_FIELDS}})


def mbart_config(start: str, section: dict, vocab_size: int, pad_id: int) -> MBartConfig:
  """The mBART a system builds: the converted model's architecture when `start` (a config.init
  directory) is a converted directory, with dropout/dtype/remat from the config `section`; else
  the section's architecture with the tokenizer's vocabulary."""
  if start and os.path.isfile(os.path.join(start, MODEL_CONFIG)):
    return model_config(start, section)
  return MBartConfig.from_dict({**section, 'vocab_size': vocab_size, 'pad_token_id': pad_id})
