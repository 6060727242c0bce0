"""A released MMTLB or Sign2GPT checkpoint as an sltjax workdir (what `python -m
sltjax.convert.release` writes), which --mode=eval, --mode=extract_features and python -m
sltjax.translate then use as they use a trained one.

What a user downloads from the SLRT release (TwoStreamNetwork) and passes here:
  Sign2Gloss checkpoint    .../phoenix-2014t_s2g/ckpts/best.ckpt: S3D + visual head
  Sign2Text checkpoint     .../phoenix-2014t_s2t/ckpts/best.ckpt: head + V-L mapper + mBART, trained
                           on the Sign2Gloss S3D's features (it holds no S3D)
  the recognition glosses  data/phoenix-2014t/gloss2ids_old.pkl ({gloss: id}; id 0, <si>, is the
                           CTC blank)
  the pruned mBART         pretrained_models/mBart_de/: config.json, sentencepiece.bpe.model
                           (mBART's whole model), map_ids.pkl ({mBART id: pruned row}) and
                           gloss2ids.pkl (the Gloss2Text glosses, whose `</s>` and sign-language
                           code rows of the gloss embedding follow the frames in Sign2Text)

The workdir: config.json (the given sltjax config with what the checkpoint decides: sizes, the
suffix, lowercase glosses), glosses.json (the release's glosses, classifier columns reordered to
sltjax's blank, <unk>, glosses...), tokenizer/ (PrunedMBartTokenizer) and best/0 (orbax).
Pickled files are read without running pickled code: only dicts of strings and ints load.

What a user downloads or has from the Sign2GPT release and passes here:
  the stage-2 checkpoint   the .pt its ignite Checkpoint writes ({'model': state dict, ...}):
                           DINOv2 with its LoRAs, projection, sign encoder, visual projection and
                           the XGLM with its LoRAs, adaptors and gates
  the XGLM folder          facebook/xglm-1.7B (what the release loads): config.json, tokenizer

The workdir: config.json (the sizes the checkpoint decides), architectures.json (DINOv2's,
from the checkpoint's tensors, with Meta's position interpolation; XGLM's, from its
config.json), tokenizer/ (the XGLM's) and best/0.
"""
import json
import os
import pickle
import re

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sltjax import storage
from sltjax.checkpointing import Checkpointer
from sltjax.convert.dinov2 import ARCHITECTURE_FIELDS as DINOV2_FIELDS
from sltjax.convert.dinov2 import meta_config as dinov2_meta_config
from sltjax.convert.release import (MMTLB_GLOSS_EMBEDDING, SIGN2GPT_LM, mmtlb_state,
                                    sign2gpt_state)
from sltjax.convert.state_dict import read_torch_weights
from sltjax.data.tokenizers import PRUNED_IDS_FILE, SENTENCEPIECE_FILE, GlossVocabulary
from sltjax.errors import MissingInputError, UserError
from sltjax.experiments.video import GLOSS_FILE, TOKENIZER_DIR

_HEAD = 'recognition_network.visual_head.'
_CLASSIFIER = _HEAD + 'gloss_output_layer.'
_BACKBONE = 'recognition_network.visual_backbone.'
_TRANSLATION = 'translation_network.'
_SIGN2GPT_FRAMES = 'sign_model.sign_model.spatial_model.'
_SIGN2GPT_DINOV2 = _SIGN2GPT_FRAMES + 'spatial_model.'
_SIGN2GPT_BLOCKS = 'sign_model.sign_model.encoder.network_block.network.'
# mBART's architecture fields that config.model.translation takes from the release's config.json.
MBART_ARCHITECTURE = ('d_model', 'encoder_layers', 'decoder_layers', 'encoder_attention_heads',
                      'decoder_attention_heads', 'encoder_ffn_dim', 'decoder_ffn_dim',
                      'max_position_embeddings', 'scale_embedding')


class _PlainValues(pickle.Unpickler):
  """Loads containers of strings and numbers; refuses any class (pickled code never runs)."""

  def find_class(self, module, name):
    raise pickle.UnpicklingError(f'it names {module}.{name}')


def read_pickled_mapping(path: str, what: str) -> dict:
  """The dict a release's .pkl holds ({gloss: id}, {mBART id: row}); UserError when the file is
  missing or holds anything but plain values."""
  if not os.path.isfile(path):
    raise MissingInputError(f'{path} not found: pass {what}.')
  try:
    with open(path, 'rb') as f:
      mapping = _PlainValues(f).load()
  except (pickle.UnpicklingError, EOFError, ValueError) as e:
    raise UserError(f'{path} is not {what} as the release writes it (a pickled dict of plain '
                    f'values): {e}. sltjax does not run pickled code.') from None
  if not isinstance(mapping, dict):
    raise UserError(f'{path} holds a {type(mapping).__name__}, not {what} (a dict).')
  return mapping


def gloss_order(gloss2ids: dict[str, int], path: str) -> tuple[list[str], np.ndarray]:
  """(sltjax's gloss list, order): the release's ids in sltjax's class order, [blank (the
  release's id 0), <unk>, every other id ascending], and the names of the others."""
  names = {i: g for g, i in gloss2ids.items()}
  if sorted(names) != list(range(len(gloss2ids))) or '<unk>' not in gloss2ids:
    raise UserError(f'{path}: the ids must be 0..{len(gloss2ids) - 1}, each once, with <unk> '
                    'among the glosses (the release\'s gloss2ids file).')
  unk = gloss2ids['<unk>']
  others = [i for i in range(1, len(names)) if i != unk]
  return [names[i] for i in others], np.array([0, unk, *others])


def reorder_classes(state_dict: dict[str, np.ndarray], order: np.ndarray) -> dict:
  """The release's gloss classifier (and CSL-Daily's gloss-probability mapper) with its classes
  in `order`."""
  state_dict = dict(state_dict)
  for name in (_CLASSIFIER + 'weight', _CLASSIFIER + 'bias'):  # [K, in], [K]
    if name in state_dict:
      state_dict[name] = np.asarray(state_dict[name])[order]
  mapper = 'vl_mapper.mapping.weight'  # [d, K]
  if mapper in state_dict:
    state_dict[mapper] = np.asarray(state_dict[mapper])[:, order]
  return state_dict


def read_mbart_dir(mbart_dir: str) -> tuple[dict, dict[int, int], dict[str, int]]:
  """(config.json, map_ids {mBART id: row}, gloss2ids) of the release's pruned mBART folder."""
  config_file = os.path.join(mbart_dir, 'config.json')
  if not os.path.isfile(config_file):
    raise MissingInputError(f'{config_file} not found: --mbart_dir is the release\'s pruned mBART '
                            'folder (pretrained_models/mBart_de or mBart_zh).')
  with open(config_file, encoding='utf-8') as f:
    hf_config = json.load(f)
  what = 'the release\'s {} (in pretrained_models/mBart_de)'
  map_ids = read_pickled_mapping(os.path.join(mbart_dir, 'map_ids.pkl'), what.format('map_ids.pkl'))
  gloss2ids = read_pickled_mapping(os.path.join(mbart_dir, 'gloss2ids.pkl'),
                                   what.format('gloss2ids.pkl'))
  if hf_config.get('vocab_size') != len(map_ids):
    raise UserError(f'{config_file} has vocab_size {hf_config.get("vocab_size")} but map_ids.pkl '
                    f'maps {len(map_ids)} ids: they are not from one pruned mBART.')
  return hf_config, {int(k): int(v) for k, v in map_ids.items()}, gloss2ids


def write_pruned_tokenizer(mbart_dir: str, map_ids: dict[int, int], directory: str,
                           separate_final_period: bool) -> None:
  """directory/{sentencepiece.bpe.model, PRUNED_IDS_FILE}: what PrunedMBartTokenizer reads."""
  model = os.path.join(mbart_dir, SENTENCEPIECE_FILE)
  if not os.path.isfile(model):
    raise MissingInputError(f'{model} not found: the release\'s mBart_de folder holds mBART\'s '
                            'SentencePiece model.')
  storage.make_folder(directory)
  storage.write_text(storage.join(directory, PRUNED_IDS_FILE), json.dumps(
      {'old_to_new': {str(k): v for k, v in sorted(map_ids.items())},
       'separate_final_period': separate_final_period}))
  storage.copy_file(model, storage.join(directory, SENTENCEPIECE_FILE))


def mmtlb_settings(state_dict: dict[str, np.ndarray], *, video: bool, glosses: list[str],
                   hf_config: dict | None) -> dict:
  """{dotted config key: value} that the release's checkpoint decides: the head's and mapper's
  sizes, the backbone (S3D with a Sign2Gloss checkpoint's backbone, else its features), the
  translation network's architecture and suffix, lowercase glosses where the release's are."""
  def shape(name):
    if name not in state_dict:
      raise UserError(f'The checkpoint has no {name}: it is not an MMTLB (SLRT SingleStream) '
                      'Sign2Gloss or Sign2Text checkpoint.')
    return np.shape(state_dict[name])

  hidden, features = shape(_HEAD + 'fc1.weight')
  ffn, _, kernel = shape(_HEAD + 'feedforward.pwff_layer.0.weight')
  settings = {'model.backbone': 's3d' if video else 'features', 'model.feature_dim': features,
              'model.head_dim': hidden, 'model.head_ffn_dim': ffn, 'model.head_kernel': kernel,
              'data.lowercase_gloss': all(g == g.lower() for g in glosses)}
  if hf_config is not None:
    gloss_probs = 'vl_mapper.mapping.weight' in state_dict
    settings.update({'model.mapper': 'gloss_probs' if gloss_probs else 'mlp',
                     'model.mapper_init': '', 'model.suffix': 'own'})
    if not gloss_probs:
      settings['model.mapper_hidden'] = shape('vl_mapper.mapping.0.weight')[0]
    settings.update({f'model.translation.{k}': hf_config[k] for k in MBART_ARCHITECTURE})
  return settings


def stage_of(state_dict: dict) -> str:
  """'sign2text' for a checkpoint with a translation network, else 'sign2gloss'."""
  return 'sign2text' if any(k.startswith(_TRANSLATION) for k in state_dict) else 'sign2gloss'


def _refuse_existing(workdir: str) -> None:
  if storage.path(workdir).exists() and any(storage.path(workdir).iterdir()):
    raise UserError(f'{workdir} exists and is not empty: converting writes a new workdir; pass '
                    'another --output (nothing was changed).')


def _apply_settings(config, settings: dict) -> None:
  """Sets each dotted key of `settings` in config."""
  for key, value in settings.items():
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value


def _write_workdir(config, workdir: str, fill, converted_from: list, what: str,
                   write_files=lambda staging: None) -> None:
  """Writes `workdir` through a staging folder, so that it appears complete or not at all:
  write_files(staging), config.json, then the best checkpoint of fill(abstract variables of the
  config's model) (ValueError -> UserError naming `what`)."""
  staging = storage.staging_folder(workdir)
  if storage.path(staging).exists():
    storage.path(staging).rmtree()  # left by an interrupted conversion
  storage.make_folder(staging)
  write_files(staging)
  storage.write_text(storage.join(staging, 'config.json'),
                     config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
  from sltjax import experiments  # pylint: disable=import-outside-toplevel  (imports every system)
  try:
    exp = experiments.create(config, staging)
    try:
      filled = fill(nnx.merge_state(exp.abstract_params, exp.abstract_rest))
    except ValueError as e:
      raise UserError(f'{what}: {e}') from None
  except BaseException:
    storage.path(staging).rmtree()
    raise
  params, rest = nnx.split_state(filled, nnx.Param, ...)
  checkpointer = Checkpointer(staging, keep=1)
  checkpointer.save_best(0, {'params': params, 'rest': rest},
                         {'step': 0, 'converted_from': converted_from})
  checkpointer.close()
  storage.replace_folder(workdir)


def write_mmtlb_workdir(config, workdir: str, checkpoint: str, *, glosses_file: str,
                        mbart_dir: str = '', backbone_checkpoint: str = '',
                        sign_language: str = 'de_DGS') -> dict:
  """Writes `workdir` from the release's checkpoint(s); returns the config settings it applied
  (config is changed in place). Refuses an existing non-empty workdir."""
  _refuse_existing(workdir)
  state_dict = read_torch_weights(checkpoint)
  stage = stage_of(state_dict)
  if config.get('system') != 'mmtlb' or config.get('stage') != stage:
    variant = 'sign2text' if stage == 'sign2text' else 'sign2gloss'
    raise UserError(f'{checkpoint} is a {stage} checkpoint: pass --config=configs/mmtlb.py:'
                    f'{variant} (with the dataset, e.g. :{variant},dataset=csl_daily).')
  if backbone_checkpoint:
    if stage == 'sign2gloss':
      raise UserError('--backbone_checkpoint adds a Sign2Gloss S3D to a Sign2Text checkpoint; '
                      f'{checkpoint} is a Sign2Gloss checkpoint and has its own.')
    backbone = read_torch_weights(backbone_checkpoint)
    state_dict.update({k: v for k, v in backbone.items() if k.startswith(_BACKBONE)})
    if not any(k.startswith(_BACKBONE) for k in backbone):
      raise UserError(f'{backbone_checkpoint} holds no {_BACKBONE}* tensors: pass the release\'s '
                      'Sign2Gloss checkpoint (phoenix-2014t_s2g/ckpts/best.ckpt).')
  video = any(k.startswith(_BACKBONE) for k in state_dict)
  glosses, order = gloss_order(read_pickled_mapping(
      glosses_file, 'the release\'s recognition glosses (data/phoenix-2014t/gloss2ids_old.pkl)'),
      glosses_file)
  hf_config = suffix_rows = None
  if stage == 'sign2text':
    if not mbart_dir:
      raise UserError('A Sign2Text checkpoint needs --mbart_dir, the release\'s pruned mBART '
                      'folder (pretrained_models/mBart_de: its tokenizer and config.json).')
    hf_config, map_ids, translation_glosses = read_mbart_dir(mbart_dir)
    missing = [t for t in ('</s>', sign_language) if t not in translation_glosses]
    if missing:
      raise UserError(f'{mbart_dir}/gloss2ids.pkl has no {" or ".join(missing)}: pass the '
                      'sign-language code its Gloss2Text used (--sign_language: de_DGS for '
                      'PHOENIX-2014T, zh_CSL for CSL-Daily).')
    suffix_rows = (translation_glosses['</s>'], translation_glosses[sign_language])
  settings = mmtlb_settings(state_dict, video=video, glosses=glosses, hf_config=hf_config)
  _apply_settings(config, settings)

  def write_files(staging):
    GlossVocabulary(glosses).save(storage.join(staging, GLOSS_FILE))
    if stage == 'sign2text':
      write_pruned_tokenizer(mbart_dir, map_ids, storage.join(staging, TOKENIZER_DIR),
                             separate_final_period='de' in config.tokenizer.tgt_lang)
  _write_workdir(
      config, workdir,
      lambda abstract: mmtlb_state(
          reorder_classes(state_dict, order), abstract, jnp.float32, suffix_rows=suffix_rows,
          ignored=lambda n: n == MMTLB_GLOSS_EMBEDDING and suffix_rows is None),
      [checkpoint, backbone_checkpoint or None], checkpoint, write_files)
  return settings


def sign2gpt_settings(state_dict: dict[str, np.ndarray]) -> tuple[dict, dict]:
  """({dotted config key: value}, DINOv2Config fields) that the release's stage-2 checkpoint
  decides: the sizes of DINOv2's LoRAs and projection, of the sign encoder and of the LM's
  adaptors; DINOv2's architecture from its tensors, with Meta's position interpolation (the
  release runs Meta's DINOv2 code). The sign encoder's heads are not in the tensors: the config's
  (8, as released) are kept."""
  def shape(name):
    if name not in state_dict:
      raise UserError(f'The checkpoint has no {name}: it is not a Sign2GPT stage-2 (translation) '
                      'checkpoint of the release (models/trial_models/test_stage2_model.py).')
    return np.shape(state_dict[name])

  shape(f'{SIGN2GPT_LM}model.embed_tokens.weight')
  dinov2 = {k.removeprefix(_SIGN2GPT_DINOV2): v for k, v in state_dict.items()
            if k.startswith(_SIGN2GPT_DINOV2) and 'lora_' not in k}
  try:
    architecture = dinov2_meta_config(dinov2, interpolation='meta')
  except (KeyError, ValueError) as e:
    raise UserError(f'The checkpoint\'s DINOv2 ({_SIGN2GPT_DINOV2}*) is not Meta\'s ViT: '
                    f'{e}') from None
  lora = re.compile(re.escape(_SIGN2GPT_DINOV2) + r'blocks\.(\d+)\.attn\.lora_')
  adapted = sorted({int(m[1]) for m in map(lora.match, state_dict) if m})
  layers = architecture.num_layers
  if adapted != list(range(layers - len(adapted), layers)):
    raise UserError(f'The checkpoint\'s DINOv2 has LoRA on blocks {adapted}: sltjax adapts the '
                    'last blocks (model.frames.lora_last_layers).')
  blocks = {}  # the MetaFormer's network index -> its blocks (pooling layers hold none)
  block = re.compile(re.escape(_SIGN2GPT_BLOCKS) + r'(\d+)\.(\d+)\.')
  for m in map(block.match, state_dict):
    if m:
      blocks.setdefault(int(m[1]), set()).add(m[2])
  stage_depths = tuple(len(blocks[i]) for i in sorted(blocks))
  lm_layer = f'{SIGN2GPT_LM}model.layers.0.self_attn.'
  settings = {
      'model.frames.lora_last_layers': len(adapted),
      'model.frames.dim': shape(f'{_SIGN2GPT_FRAMES}lin.weight')[0],
      'model.signs.dim': shape(f'{_SIGN2GPT_BLOCKS}0.0.norm1.weight')[0],
      'model.signs.stage_depths': stage_depths,
      'model.adaptor.rank': shape(f'{lm_layer}adaptor_lora_wq_l1.weight')[0],
      'eval.max_new_tokens': 63}  # the release's generate: max_length 64 with the `</s>` prompt
  if adapted:
    settings['model.frames.lora_rank'] = shape(
        f'{_SIGN2GPT_DINOV2}blocks.{layers - 1}.attn.lora_w1_l1.weight')[0]
  return settings, {k: getattr(architecture, k) for k in DINOV2_FIELDS}


def write_sign2gpt_workdir(config, workdir: str, checkpoint: str, *, lm_dir: str) -> dict:
  """Writes `workdir` from the release's stage-2 checkpoint and the XGLM folder it adapted
  (config.json and tokenizer: the weights are in the checkpoint); returns the config settings
  it applied (config is changed in place). Refuses an existing non-empty workdir."""
  _refuse_existing(workdir)
  if config.get('system') != 'sign2gpt' or config.get('stage') != 'translation':
    raise UserError('A Sign2GPT checkpoint converts with --config=configs/sign2gpt.py:'
                    'translation (with the dataset, e.g. :translation,dataset=csl_daily).')
  if not lm_dir:
    raise UserError('A Sign2GPT checkpoint needs --lm_dir, the XGLM folder the release loaded '
                    '(facebook/xglm-1.7B: its config.json and tokenizer).')
  if not os.path.isfile(os.path.join(lm_dir, 'config.json')):
    raise MissingInputError(f'{lm_dir}/config.json not found: --lm_dir is the Hugging Face XGLM '
                            'folder the release loaded (facebook/xglm-1.7B).')
  state_dict = read_torch_weights(checkpoint)
  if 'post_model.vocab_embedding' in state_dict:
    raise UserError(f'{checkpoint} is a stage-1 (pseudo-gloss) checkpoint: convert the stage-2 '
                    'checkpoint trained from it, which holds its frame and sign encoders.')
  settings, frames_architecture = sign2gpt_settings(state_dict)
  settings.update({'model.lm_weights': lm_dir, 'tokenizer.path': lm_dir})
  _apply_settings(config, settings)
  config.model.backbone_weights = ''  # DINOv2 is in the checkpoint; its shape:
  config.model.frames_architecture = ml_collections.ConfigDict(frames_architecture)
  _write_workdir(config, workdir,
                 lambda abstract: sign2gpt_state(state_dict, abstract, jnp.float32,
                                                 stage='translation'),
                 [checkpoint], checkpoint)
  return settings
