"""sltjax's pretrained-model directory: what `python -m sltjax.convert` writes and what a
system's config.init entry (Gloss2Text: init.model; MMTLB: init.translation) starts training from.

  DIR/model_config.json   architecture (MBartConfig fields; dropout and dtypes come from config)
  DIR/model/              orbax checkpoint {'params', 'rest'} of the converted model
  DIR/sentencepiece.bpe.model, tokenizer_config.json   the tokenizer (tokenizer.kind='mbart')
"""
import dataclasses
import json

import orbax.checkpoint as ocp
from flax import nnx

from sltjax import storage
from sltjax.data.tokenizers import copy_tokenizer_files
from sltjax.errors import MissingInputError
from sltjax.models.mbart import MBartConfig

MODEL_CONFIG = 'model_config.json'
WEIGHTS = 'model'
# Set by the training config, not by the checkpoint.
TRAINING_FIELDS = ('dropout', 'attention_dropout', 'activation_dropout', 'dtype', 'param_dtype',
                   'remat')


def save_pretrained(model, directory: str, tokenizer_dir: str | None = None) -> None:
  """Writes `model` (an MBart) and, when given, the tokenizer files of `tokenizer_dir`."""
  directory = storage.absolute(directory)
  staging = storage.path(storage.staging_folder(directory))
  if staging.exists():
    staging.rmtree()
  architecture = {k: v for k, v in dataclasses.asdict(model.config).items()
                  if k not in TRAINING_FIELDS}
  storage.write_text(staging / MODEL_CONFIG, json.dumps(architecture, indent=2))
  _, params, rest = nnx.split(model, nnx.Param, ...)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(staging / WEIGHTS, {'params': params, 'rest': rest})
  if tokenizer_dir:
    copy_tokenizer_files(tokenizer_dir, staging)
  storage.replace_folder(directory)


def read_architecture(directory: str) -> dict:
  path = storage.join(directory, MODEL_CONFIG)
  storage.check_access(directory, write=False)
  if not storage.is_complete(directory) or not storage.path(path).is_file():
    raise MissingInputError(f'{path} not found: a pretrained start must be a directory written by '
                            '`python -m sltjax.convert` (see its --help).')
  return json.loads(storage.read_text(path))


def model_config(directory: str, training: dict) -> MBartConfig:
  """The checkpoint's architecture with dropout/dtype/remat from `training` (config.model)."""
  return MBartConfig.from_dict({**read_architecture(directory),
                                **{k: v for k, v in training.items() if k in TRAINING_FIELDS}})


def mbart_config(start: str, section: dict, vocab_size: int, pad_id: int) -> MBartConfig:
  """The mBART a system builds: the converted model's architecture when `start` (a config.init
  directory) is a converted directory, with dropout/dtype/remat from the config `section`; else
  the section's architecture with the tokenizer's vocabulary."""
  if start and storage.path(storage.join(start, MODEL_CONFIG)).is_file():
    return model_config(start, section)
  return MBartConfig.from_dict({**section, 'vocab_size': vocab_size, 'pad_token_id': pad_id})
