"""What every system's config shares: the parts of the config argument, the datasets' constants,
and the run scaffolding, optimizer, schedule, evaluation and laptop blocks.

  --config=configs/<system>.py[:variant][,runlocal][,dataset=<name>]

`variant` is the stage or recipe (the file's VARIANTS; its default when left out); `runlocal` asks
for the same at laptop size on synthetic_signs (the file's runlocal_<variant>, or runlocal for the
default variant): configs/c2rl.py:slt,runlocal. The older one-word spellings (runlocal_slt) still
work and print a note naming the new one.

`dataset` (DATASETS) sets the data name, the languages, the gloss clean-up and the translation
metrics' protocol (CSL-Daily: character-level BLEU and ROUGE, sacrebleu's `zh` tokenizer); it
defaults to phoenix2014t, and to synthetic_signs for runlocal variants.
"""
import dataclasses
import sys
from typing import NamedTuple

import ml_collections

from sltjax.data import video


@dataclasses.dataclass(frozen=True)
class Dataset:
  train_videos: int  # training split size, for steps per epoch
  mbart_language: str  # mBART-cc25 code of the spoken language
  gloss_cleanup: str = 'none'  # sltjax.metrics.gloss_metrics clean-up before WER
  char_level: bool = False  # BLEU / ROUGE over characters (every character a token)
  sacrebleu_tokenize: str = '13a'  # the tokenizer of the sacrebleu-signature BLEU
  has_glosses: bool = True
  # Sizes --mode=compile builds models with, without the dataset (config.shapes): the gloss
  # vocabulary (with CTC's specials), the longest video's frames, the trimmed mBART's and the
  # pseudo-gloss vocabularies. They set embedding and classifier widths and the longest frame
  # bucket, not the trained model's. PHOENIX-2014T's are measured on its release (glosses and
  # frames; mBART: GFSLT-VLP's trimmed tokenizer; pseudo-glosses: sltjax's German tagger on the
  # training texts); the other datasets' are estimates.
  glosses: int = 4
  longest_video: int = 400
  mbart_pieces: int = 4000
  pseudo_glosses: int = 2000


DATASETS = {
    'phoenix2014t': Dataset(7096, 'de_DE', gloss_cleanup='phoenix2014t', glosses=1075,
                            longest_video=475, mbart_pieces=2454, pseudo_glosses=2055),
    'csl_daily': Dataset(18401, 'zh_CN', char_level=True, sacrebleu_tokenize='zh', glosses=2004,
                         longest_video=900, mbart_pieces=4500, pseudo_glosses=3000),
    # How2Sign: the release's 31,128 training sentences less those past their video's end
    'how2sign': Dataset(31085, 'en_XX', has_glosses=False, longest_video=1500,
                        mbart_pieces=12000, pseudo_glosses=6000),
    'openasl': Dataset(96476, 'en_XX', has_glosses=False, longest_video=1500,
                       mbart_pieces=16000, pseudo_glosses=8000),
    'synthetic_signs': Dataset(1200, 'en_XX', glosses=36, longest_video=64, mbart_pieces=200,
                               pseudo_glosses=60),
}
# XGLM's tokenizer (every size): 256,008 ids.
XGLM_VOCABULARY = 256008
DEFAULT_DATASET = 'phoenix2014t'
LOCAL_DATASET = 'synthetic_signs'  # runlocal variants: built on first use, no download


LAPTOP = 'runlocal'  # the config argument's part for the laptop-size variant
_NOTED: set[str] = set()  # old spellings already noted in this process


def laptop_variants(variants: tuple[str, ...], default: str) -> dict[str, str]:
  """{variant: its laptop variant}: runlocal_<variant>, and runlocal for the default variant."""
  table = {v.removeprefix(f'{LAPTOP}_'): v for v in variants if v.startswith(f'{LAPTOP}_')}
  if LAPTOP in variants:
    table[default] = LAPTOP
  return table


def spelling(variant: str) -> str:
  """How the config argument names `variant`: runlocal_<x> is x,runlocal."""
  return (f'{variant.removeprefix(LAPTOP + "_")},{LAPTOP}' if variant.startswith(f'{LAPTOP}_')
          else variant)


class Choice(NamedTuple):
  """What the config argument chose."""
  variant: str  # one of the file's VARIANTS (with runlocal: the laptop one), naming the workdir
  dataset: str
  word: str  # the variant as named without runlocal (the stage or recipe)
  runlocal: bool  # at laptop size


def parse_argument(arg: str | None, variants: tuple[str, ...], default: str,
                   config_file: str) -> Choice:
  """The Choice of 'variant[,runlocal][,dataset=name]' (any part may be left out)."""
  words, dataset = [], ''
  for part in (arg or '').split(','):
    key, equals, value = part.partition('=')
    if not equals:
      if key.strip():
        words.append(key.strip())
    elif key.strip() == 'dataset':
      dataset = value.strip()
    else:
      raise ValueError(f'{config_file}: unknown option {key.strip()!r} in {arg!r}; the config '
                       'argument takes a variant, runlocal and dataset=NAME.')
  laptop = LAPTOP in words
  words = [w for w in words if w != LAPTOP]
  if len(words) > 1:
    raise ValueError(f'{config_file}: two variants in {arg!r}; give one (and runlocal), then '
                     ',dataset=NAME.')
  variant = word = words[0] if words else default
  table = laptop_variants(variants, default)
  if laptop:
    if variant not in table:
      raise ValueError(f'{config_file}: {variant!r} has no runlocal form; runlocal goes with '
                       f'{tuple(table)}.')
    variant = table[variant]
  elif variant in table.values():  # an older spelling (runlocal alone is also today's)
    word = next(k for k, v in table.items() if v == variant)
    laptop = True
    if variant != LAPTOP and variant not in _NOTED:
      _NOTED.add(variant)
      print(f'note: {config_file}:{variant} is now spelled {config_file}:{spelling(variant)}.',
            file=sys.stderr)
  if variant not in variants:
    raise ValueError(f'Unknown variant {variant!r} of {config_file}; use one of '
                     f'{tuple(v for v in variants if v not in table.values())}, each with '
                     f',{LAPTOP} where it has a laptop form.')
  dataset = dataset or (LOCAL_DATASET if laptop else DEFAULT_DATASET)
  if dataset not in DATASETS:
    raise ValueError(f'{config_file}: unknown dataset {dataset!r}; use one of '
                     f'{tuple(DATASETS)}.')
  return Choice(variant, dataset, word, laptop)


def base(system: str, stage: str | None = None, *, variant: str,
         **overrides) -> ml_collections.ConfigDict:
  """The run scaffolding every system's config starts from: the system (and stage), the variant
  (`parse_argument`'s, which names the default workdir), seed, logging and checkpointing cadence,
  and the device mesh (data parallel over every device)."""
  c = ml_collections.ConfigDict({'system': system, 'variant': variant})
  if stage is not None:
    c.stage = stage
  c.update(seed=0, log_every_steps=50, checkpoint_every_steps=1000, keep_checkpoints=2,
           mesh={'data': -1, 'fsdp': 1, 'tensor': 1}, **overrides)
  return c


def runlocal(c: ml_collections.ConfigDict, *, crop_size: int, eval_resize: int,
             frame_buckets: tuple[int, ...], length_buckets=(16, 32), eval_batch_size: int = 20,
             **data_overrides) -> ml_collections.ConfigDict:
  """The laptop block of a video config: synthetic_signs under data/ (built on first use), small
  frames and few buckets (few compiled shapes), evaluation 20 videos at a time; returns `c`."""
  c.data.update(data_dir='data', build_if_missing=True, crop_size=crop_size,
                eval_resize=eval_resize, frame_buckets=frame_buckets,
                length_buckets=length_buckets, **data_overrides)
  c.eval.batch_size = eval_batch_size
  return c


def refuse_moved(arg: str | None, moved: dict[str, str], config_file: str) -> None:
  """A ValueError naming the new spelling when the variant of `arg` moved to another config."""
  variant = (arg or '').split(',')[0].strip()
  if variant in moved:
    raise ValueError(f'{config_file}:{variant} is now {moved[variant]} (another system\'s '
                     'config).')


def steps_per_epoch(dataset: str, batch_size: int) -> int:
  return -(-DATASETS[dataset].train_videos // batch_size)


def optimizer(name: str, learning_rate: float, **overrides) -> ml_collections.ConfigDict:
  """The optimizer block sltjax/optim.py reads."""
  return ml_collections.ConfigDict({
      'name': name,  # 'adam' (coupled L2) | 'adamw' | 'sgd'
      'learning_rate': learning_rate, 'b1': 0.9, 'b2': 0.999, 'eps': 1e-8,
      'weight_decay': 0.0, 'momentum': 0.0,  # momentum: sgd only
      'grad_clip_norm': 0.0,  # 0 disables
      'grad_clip_value': 0.0,  # > 0: every gradient entry clipped to [-v, v] first
      'decay': 'all',  # weight decay on 'all' parameters or on 'matrices' (not biases, norms)
      'param_groups': {},  # {path regex: lr multiplier}; 0 freezes (see sltjax/optim.py)
      'frozen': '',  # path regex of parameters to freeze
      **overrides})


def schedule(kind: str = 'cosine', warmup_steps: int = 0, end_factor: float = 0.0,
             warmup_init_factor: float = 0.0) -> ml_collections.ConfigDict:
  """'cosine' | 'constant', after a linear warmup from warmup_init_factor * learning_rate (cosine
  only); final lr = end_factor * learning_rate."""
  return ml_collections.ConfigDict({'kind': kind, 'warmup_steps': warmup_steps,
                                    'end_factor': end_factor,
                                    'warmup_init_factor': warmup_init_factor})


def evaluation(dataset: str, **overrides) -> ml_collections.ConfigDict:
  """The eval block: beam search and the dataset's metric protocol."""
  info = DATASETS[dataset]
  return ml_collections.ConfigDict({
      'split': 'dev', 'batch_size': 8, 'num_beams': 5, 'max_new_tokens': 100,
      'length_penalty': 1.0,
      'length_penalty_style': 'hf',  # 'hf': score / len**lp; 'gnmt': ((5 + len) / 6)**lp
      'early_stopping': False, 'best_metric': 'bleu4',
      'gloss_cleanup': info.gloss_cleanup, 'char_level': info.char_level,
      'sacrebleu_tokenize': info.sacrebleu_tokenize, **overrides})


def tokenizer(kind: str, dataset: str, **overrides) -> ml_collections.ConfigDict:
  """The tokenizer block (sltjax/data/tokenizers.py) with the dataset's language codes."""
  language = DATASETS[dataset].mbart_language
  return ml_collections.ConfigDict({
      'kind': kind,  # 'word' | 'sentencepiece' (trained on train) | 'mbart' (pretrained)
      'path': '',  # kind='mbart': the tokenizer directory ('' = the one init brings)
      'vocab_size': 4000,  # kind='sentencepiece'
      'min_count': 1,  # kind='word'
      'src_lang': language, 'tgt_lang': language, **overrides})


def shapes(dataset: str, tokenizer_kind: str) -> ml_collections.ConfigDict:
  """The config.shapes block: what --mode=compile (sltjax/compile_check.py) builds a video
  system with in place of the dataset's vocabularies and videos (DATASETS' approximate sizes)."""
  info = DATASETS[dataset]
  return ml_collections.ConfigDict({
      'num_glosses': info.glosses, 'longest_video': info.longest_video,
      'vocab_size': XGLM_VOCABULARY if tokenizer_kind == 'xglm' else info.mbart_pieces,
      'pseudo_glosses': info.pseudo_glosses})


def video_data(recipe: dict, dataset: str, **overrides) -> ml_collections.ConfigDict:
  """The data block of a video system: its published recipe (the DATA_RECIPE of its experiment
  module) on `dataset`, uint8 frames normalised on the device (model.input_normalization)."""
  c = video.default_config()
  c.update(recipe)
  c.update(name=dataset, normalization='none',
           build_if_missing=False,  # only synthetic_signs can be built without a download
           features_dir='',  # a features dataset written by --mode=extract_features
           **overrides)
  return c


def mbart(**overrides) -> ml_collections.ConfigDict:
  """An mBART block (MBartConfig's fields): mBART-large-cc25's shape with the SLT releases'
  dropout (0.3, attention 0.1), trained from scratch unless a start replaces the architecture."""
  return ml_collections.ConfigDict({
      'd_model': 1024, 'encoder_layers': 12, 'decoder_layers': 12, 'encoder_attention_heads': 16,
      'decoder_attention_heads': 16, 'encoder_ffn_dim': 4096, 'decoder_ffn_dim': 4096,
      'max_position_embeddings': 1024, 'dropout': 0.3, 'attention_dropout': 0.1,
      'activation_dropout': 0.0, 'scale_embedding': True, 'dtype': 'float32',
      'param_dtype': 'float32', 'remat': 'none', **overrides})


# The runlocal variants' mBART-shaped networks: 1+1 layers of width 64.
LAPTOP_MBART = dict(d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                    decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                    dropout=0.1, attention_dropout=0.0)


def apply_overrides(config, overrides: dict):
  """Sets dotted keys ('eval.num_beams') of `config`; returns it."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config
