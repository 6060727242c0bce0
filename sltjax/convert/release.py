r"""The state-dict layouts of the systems' released PyTorch code, mapped to sltjax's parameters in
one place; and, run as a program, a released MMTLB or Sign2GPT checkpoint written as an sltjax
workdir (sltjax/convert/release_workdir.py says which files):

  python -m sltjax.convert.release --system=mmtlb --config=configs/mmtlb.py:sign2text \
      --checkpoint=phoenix-2014t_s2t/ckpts/best.ckpt \
      --backbone_checkpoint=phoenix-2014t_s2g/ckpts/best.ckpt \
      --glosses=data/phoenix-2014t/gloss2ids_old.pkl --mbart_dir=pretrained_models/mBart_de \
      --output=workdirs/mmtlb_release_s2t
  python -m sltjax.convert.release --system=sign2gpt --config=configs/sign2gpt.py:translation \
      --checkpoint=PHX_example_s2_dyn_config/best_checkpoint_..._result_checkpoint_....pt \
      --lm_dir=facebook/xglm-1.7B --output=workdirs/sign2gpt_release

MMTLB (https://github.com/FangyunWei/SLRT, TwoStreamNetwork's SingleStream-SLT): the
`SignLanguageModel` state dict its training writes (`torch.save({'model_state': ...})`):

  recognition_network.visual_backbone.backbone.base.N.*   -> backbone   (S3D, SLRT naming)
  recognition_network.visual_head.{fc1, bn1.norm, feedforward.layer_norm,
      feedforward.pwff_layer.0 / .3, layer_norm, gloss_output_layer}.*
                                                          -> head.{projection, projection_bn,
                                                             norm, conv1 / conv2, final_norm,
                                                             classifier}
  vl_mapper.mapping.0 / .2 (PHOENIX's MLP) or .mapping (CSL-Daily's gloss-probability Linear)
                                                          -> mapper.fc1 / fc2, mapper.linear
  translation_network.model.*  (Hugging Face MBartForConditionalGeneration)
                                                          -> translation (sltjax.convert.hf)
  translation_network.gloss_embedding.weight, the rows of `</s>` and the sign-language code
                                                          -> suffix (MMTLB's suffix='own')

Not variables in sltjax: the head's fixed sinusoidal table (visual_head.pe.pe) and BatchNorm's
batch counters.

Sign2GPT (https://github.com/ryanwongsa/Sign2GPT), stage 1 (models/trial_models/
test_pretraining.py); stage counted over the MetaFormer's network list, where a pooling layer
without weights sits between the two stages (network.0, pool network.1, network.2):

  sign_model.spatial_model.spatial_model.*  (DINOv2, Meta's names; qkv rows split into q, k, v)
                                        -> frames.backbone (sltjax.convert.dinov2.meta_name)
  sign_model.spatial_model.spatial_model.blocks.N.{attn.lora_w1 (fused qkv: one l1, l2 split
      into q, k, v), attn.lora_w2, mlp.lora_w1 / _w2}_l1 / _l2
                                        -> frames.backbone.layers.N.{attention.{q,k,v}_proj,
                                           attention.out_proj, fc1 / fc2}.lora_a / lora_b
  sign_model.spatial_model.{lin, bn}    -> frames.{projection, norm}
  sign_model.encoder.network_block.network.{2 s}.{b}.{token_mixer.in_proj_container.{q,k,v}_proj,
      token_mixer.proj, mlp.mlp.0 / .3, norm1, norm2, layer_scale_1 / _2}
                                        -> sign_encoder.stages.{s}.{b}.{attention.{q,k,v}_proj,
                                           attention.out_proj, fc1 / fc2, norm1, norm2,
                                           layer_scale1 / 2}
  post_model.{fc_hidden, class_temperature, time_temperature}
                                        -> head.{projection, class_temperature, time_temperature}
  post_model.vocab_embedding [dim, V, 1] -> head.prototypes [V, dim] (rows unit-normalised)

and stage 2 (models/trial_models/test_stage2_model.py), which holds stage 1's model (less its
head) as `sign_model` (so sign_model.sign_model.* above), its visual projection and the XGLM:

  post_model.fc                         -> visual_projection
  lang_model.model.*  (Hugging Face XGLM; lm_head.weight is the tied embedding)
                                        -> lm (sltjax.convert.xglm)
  lang_model.model.layers.N.self_attn.lora_{wq, wk, wv, wo}_l1 / _l2
                                        -> lm.layers.N.self_attn.{q,k,v,out}_proj.lora_a / lora_b
  lang_model.model.layers.N.self_attn.adaptor_lora_{wq, wk, wv}_l1 / _l2, adaptor_gate
      [1, heads, 1, 1]                  -> lm.layers.N.visual_adaptor.{query, key, value}_a / _b,
                                           gate [heads]
"""
import sys
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from sltjax.convert.backbones import s3d_release_name
from sltjax.convert.dinov2 import meta_name as dinov2_meta_name
from sltjax.convert.dinov2 import split_fused
from sltjax.convert.hf import drop_tied_copies, hf_layout, hf_name
from sltjax.convert.state_dict import TORCH_LEAF_NAMES, fill_state, torch_layout
from sltjax.convert.xglm import hf_name as xglm_hf_name
from sltjax.errors import UserError, exit_with_user_error

FLAGS = flags.FLAGS
MMTLB_TRANSLATION = 'translation_network.model.'
MMTLB_GLOSS_EMBEDDING = 'translation_network.gloss_embedding.weight'
_MMTLB_HEAD = {'projection': 'fc1', 'projection_bn': 'bn1.norm', 'norm': 'feedforward.layer_norm',
               'conv1': 'feedforward.pwff_layer.0', 'conv2': 'feedforward.pwff_layer.3',
               'final_norm': 'layer_norm', 'classifier': 'gloss_output_layer'}
_MMTLB_MAPPER = {'fc1': 'mapping.0', 'fc2': 'mapping.2', 'linear': 'mapping'}


def mmtlb_release_name(path: tuple) -> str:
  """The SignLanguageModel tensor name of an sltjax MMTLB parameter path, e.g.
  ('head', 'conv1', 'kernel') -> 'recognition_network.visual_head.feedforward.pwff_layer.0.weight'.
  """
  top, *rest = path
  if top == 'backbone':
    return 'recognition_network.visual_backbone.backbone.' + s3d_release_name(tuple(rest))
  if top == 'head':
    return f'recognition_network.visual_head.{_MMTLB_HEAD[rest[0]]}.{TORCH_LEAF_NAMES[rest[-1]]}'
  if top == 'mapper':
    return f'vl_mapper.{_MMTLB_MAPPER[rest[0]]}.{TORCH_LEAF_NAMES[rest[-1]]}'
  if top == 'translation':
    return MMTLB_TRANSLATION + hf_name(tuple(rest))
  if top == 'suffix':
    return MMTLB_GLOSS_EMBEDDING
  raise ValueError(f'MMTLB has no released counterpart of {"/".join(map(str, path))}.')


def _mmtlb_layout(path: tuple, tensor: np.ndarray) -> np.ndarray:
  return hf_layout(path[1:], tensor) if path[0] == 'translation' else torch_layout(path, tensor)


def mmtlb_state(state_dict: dict[str, np.ndarray], abstract_state: nnx.State, dtype, *,
                ignored: Callable[[str], bool] = lambda name: False,
                suffix_rows: tuple[int, int] | None = None) -> nnx.State:
  """`abstract_state` (of an sltjax MMTLB) filled from the release's SignLanguageModel state dict
  (a DataParallel 'module.' prefix removed), cast to dtype. `suffix_rows`: the gloss-embedding
  rows of `</s>` and the sign-language code, for a model with suffix='own'. `ignored` names
  further release tensors the caller accounts for. Raises ValueError listing every missing,
  unused or mis-shaped tensor at once."""
  state_dict = {k.removeprefix('module.'): v for k, v in state_dict.items()}
  if suffix_rows is not None and MMTLB_GLOSS_EMBEDDING in state_dict:
    state_dict[MMTLB_GLOSS_EMBEDDING] = np.asarray(state_dict[MMTLB_GLOSS_EMBEDDING])[
        list(suffix_rows)]
  state_dict, problems = drop_tied_copies(state_dict, prefix=MMTLB_TRANSLATION)
  return fill_state(abstract_state, state_dict, mmtlb_release_name, dtype, layout=_mmtlb_layout,
                    problems=problems, what="MMTLB's release (SignLanguageModel's state dict)",
                    ignored=lambda n: (n.endswith(('num_batches_tracked', '.pe.pe'))
                                       or ignored(n)))


_SIGN2GPT_BLOCK = {'attention': 'token_mixer.in_proj_container', 'fc1': 'mlp.mlp.0',
                   'fc2': 'mlp.mlp.3', 'layer_scale1': 'layer_scale_1',
                   'layer_scale2': 'layer_scale_2'}
_XGLM_LORA = {'q_proj': 'wq', 'k_proj': 'wk', 'v_proj': 'wv', 'out_proj': 'wo'}
_ADAPTOR_LORA = {'query': 'wq', 'key': 'wk', 'value': 'wv'}
_LORA_FACTOR = {'a': 'l1', 'b': 'l2'}  # A [in, rank] <-> l1 [rank, in]; B [rank, out] <-> l2
# DINOv2's LoRAs in the release (models/dinov2/layers): one on the fused qkv, one per other Linear
_DINOV2_LORA = {'q_proj': 'attn.lora_w1', 'k_proj': 'attn.lora_w1', 'v_proj': 'attn.lora_w1',
                'out_proj': 'attn.lora_w2', 'fc1': 'mlp.lora_w1', 'fc2': 'mlp.lora_w2'}
_FRAME_MODULES = {'projection': 'lin', 'norm': 'bn'}
_DINOV2_FUSED = r'\.attn\.(qkv\.(weight|bias)|lora_w1_l2\.weight)$'  # rows of q, k, v
SIGN2GPT_STAGES = ('pseudo_gloss', 'translation')
SIGN2GPT_LM = 'lang_model.'


def _sign2gpt_prefix(stage: str) -> str:
  """Where the stage's model keeps stage 1's sign model: stage 2 holds all of stage 1's model
  as its `sign_model`."""
  if stage not in SIGN2GPT_STAGES:
    raise ValueError(f'stage={stage!r}: expected one of {SIGN2GPT_STAGES}.')
  return 'sign_model.' if stage == 'translation' else ''


def _sign2gpt_frames_name(path: tuple, prefix: str) -> str:
  """The release frame model's tensor name (dino_adaptor_model.py: DINOv2 in Meta's names with
  its LoRAs, `lin`, `bn`) of an sltjax path inside `frames`; q, k and v rows of fused tensors
  as dinov2.split_fused names them."""
  model = f'{prefix}sign_model.spatial_model.'
  if path[0] != 'backbone':
    return f'{model}{_FRAME_MODULES[path[0]]}.{TORCH_LEAF_NAMES[path[-1]]}'
  if path[-1] not in ('lora_a', 'lora_b'):
    return f'{model}spatial_model.{dinov2_meta_name(path[1:])}'
  module, factor = path[-2], path[-1][-1]
  name = f'{model}spatial_model.blocks.{path[2]}.{_DINOV2_LORA[module]}_{_LORA_FACTOR[factor]}'
  fused = factor == 'b' and _DINOV2_LORA[module] == 'attn.lora_w1'
  return f'{name}.weight[{module[0]}]' if fused else f'{name}.weight'


def _sign2gpt_lm_name(path: tuple) -> str:
  """The release XGLM's tensor name (models/huggingface/modeling_xglm.py) of an sltjax path
  inside `lm`: HF's names plus the LoRAs and the visual adaptor of every layer."""
  if path[0] == 'layers' and path[2] == 'visual_adaptor':
    attention = f'{SIGN2GPT_LM}model.layers.{path[1]}.self_attn'
    if path[3] == 'gate':
      return f'{attention}.adaptor_gate'
    projection, factor = path[3].split('_')
    return f'{attention}.adaptor_lora_{_ADAPTOR_LORA[projection]}_{_LORA_FACTOR[factor]}.weight'
  if path[-1] in ('lora_a', 'lora_b'):
    return (f'{SIGN2GPT_LM}model.layers.{path[1]}.self_attn.lora_{_XGLM_LORA[path[-2]]}_'
            f'{_LORA_FACTOR[path[-1][-1]]}.weight')
  return SIGN2GPT_LM + xglm_hf_name(path)


def sign2gpt_release_name(path: tuple, stage: str = 'pseudo_gloss') -> str:
  """The release's tensor name of an sltjax Sign2GPT parameter path in the model of `stage`
  ('pseudo_gloss' or 'translation'), e.g. ('sign_encoder', 'stages', 1, 0, 'attention',
  'out_proj', 'kernel') -> 'sign_model.encoder.network_block.network.2.0.token_mixer.proj.weight'
  in stage 1, 'sign_model.sign_model.encoder...' in stage 2."""
  prefix = _sign2gpt_prefix(stage)
  if path[0] == 'frames':
    return _sign2gpt_frames_name(path[1:], prefix)
  if path[0] == 'head' and stage == 'pseudo_gloss':
    module = {'projection': 'fc_hidden.'}.get(path[1], '')
    leaf = TORCH_LEAF_NAMES[path[-1]] if module else path[1]
    return f'post_model.{module}{leaf}'
  if path[0] == 'visual_projection' and stage == 'translation':
    return f'post_model.fc.{TORCH_LEAF_NAMES[path[-1]]}'
  if path[0] == 'lm' and stage == 'translation':
    return _sign2gpt_lm_name(path[1:])
  if path[:2] != ('sign_encoder', 'stages'):
    raise ValueError(f'Sign2GPT ({stage}) has no released counterpart of '
                     f'{"/".join(map(str, path))}.')
  stage_index, block, module, *rest = path[2:]
  block = f'{prefix}sign_model.encoder.network_block.network.{2 * int(stage_index)}.{block}'
  if module == 'attention' and rest[0] == 'out_proj':
    return f'{block}.token_mixer.proj.{TORCH_LEAF_NAMES[rest[-1]]}'
  if module.startswith('layer_scale'):
    return f'{block}.{_SIGN2GPT_BLOCK[module]}'
  name = _SIGN2GPT_BLOCK.get(module, module)
  return '.'.join([block, name, *map(str, rest[:-1]), TORCH_LEAF_NAMES[rest[-1]]])


def sign2gpt_layout(path: tuple, tensor: np.ndarray) -> np.ndarray:
  """A release tensor in the layout of the sltjax parameter at `path`."""
  leaf = path[-1]
  if leaf in ('class_temperature', 'time_temperature'):
    return tensor.reshape(())  # the release keeps [1]
  if leaf == 'gate':
    return tensor.reshape(-1)  # the release's [1, heads, 1, 1]
  if leaf.endswith(('_a', '_b')) and tensor.ndim == 2:
    return tensor.T  # LoRA factors, Linear weights in the release
  return torch_layout(path, tensor)


def sign2gpt_release_tensors(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A release state dict (or its gradients) under the names sign2gpt_release_name gives: a
  DataParallel 'module.' prefix removed, DINOv2's fused q/k/v tensors split into their rows."""
  return split_fused({k.removeprefix('module.'): v for k, v in state_dict.items()},
                     _DINOV2_FUSED)


def sign2gpt_state(state_dict: dict[str, np.ndarray], abstract_state: nnx.State, dtype, *,
                   stage: str, ignored: Callable[[str], bool] = lambda name: False
                   ) -> nnx.State:
  """`abstract_state` (parts of an sltjax Sign2GPT model of `stage`) filled from the release's
  state dict of that stage (test_pretraining.Model's or test_stage2_model.Model's). Stage 1's
  prototypes are its vocab_embedding's columns, unit-normalised; stage 2's tied lm_head must
  equal the token embeddings. Raises ValueError listing every missing, unused or mis-shaped
  tensor."""
  state_dict = sign2gpt_release_tensors(state_dict)
  problems = []
  head = state_dict.pop(f'{SIGN2GPT_LM}lm_head.weight', None)
  embedding = state_dict.get(f'{SIGN2GPT_LM}model.embed_tokens.weight')
  if head is not None and embedding is not None and not np.array_equal(head, embedding):
    problems.append(f'{SIGN2GPT_LM}lm_head.weight differs from the token embeddings (the '
                    'release ties them)')
  vocab = state_dict.pop('post_model.vocab_embedding', None)
  variables = dict(nnx.to_flat_state(abstract_state))
  prototypes = variables.pop(('head', 'prototypes'), None)
  flat = []
  if prototypes is not None and vocab is None:
    problems.append('missing post_model.vocab_embedding (the word vectors)')
  elif prototypes is not None:
    vectors = np.asarray(vocab)[..., 0].T  # [V, dim]
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    flat.append((('head', 'prototypes'), prototypes.replace(jnp.asarray(vectors, jnp.float32))))
  rest = nnx.from_flat_state(list(variables.items()))
  fixed_tables = ('.pos', 'inv_freq', 'zero_embedding', 'embed_positions.weights', 'mask_token',
                  'num_batches_tracked')
  filled = fill_state(rest, state_dict, lambda path: sign2gpt_release_name(path, stage), dtype,
                      layout=sign2gpt_layout, problems=problems,
                      what=f"Sign2GPT's release ({stage}'s state dict)",
                      ignored=lambda n: n.endswith(fixed_tables) or ignored(n))
  return nnx.from_flat_state(list(nnx.to_flat_state(filled)) + flat)


def main(argv):
  """python -m sltjax.convert.release: see FLAGS below and sltjax/convert/release_workdir.py."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Imported here: release_workdir reads this module's name maps.
  from sltjax.convert import release_workdir  # pylint: disable=import-outside-toplevel
  config = FLAGS.config
  try:
    if FLAGS.system == 'mmtlb':
      if not FLAGS.glosses:
        raise UserError('--system=mmtlb needs --glosses, the release\'s recognition glosses '
                        '(data/phoenix-2014t/gloss2ids_old.pkl).')
      settings = release_workdir.write_mmtlb_workdir(
          config, FLAGS.output, FLAGS.checkpoint, glosses_file=FLAGS.glosses,
          mbart_dir=FLAGS.mbart_dir or '', sign_language=FLAGS.sign_language,
          backbone_checkpoint=FLAGS.backbone_checkpoint or '')
    else:
      settings = release_workdir.write_sign2gpt_workdir(config, FLAGS.output, FLAGS.checkpoint,
                                                        lm_dir=FLAGS.lm_dir or '')
  except UserError as e:
    exit_with_user_error(str(e))
  given = ' '.join(a for a in sys.argv[1:] if a.startswith('--config'))
  overrides = ' '.join(f'--config.{k}={_flag_value(v)}' for k, v in settings.items())
  print(f'Wrote {FLAGS.output} ({config.stage}, {config.model.backbone}). It was built with '
        f'these settings from the checkpoint:\n  {overrides}\nEvaluate it with\n  python -m '
        f'sltjax.main {given} {overrides} --workdir={FLAGS.output} --mode=eval')
  if config.model.backbone != 'features':
    print(f'Translate videos with\n  python -m sltjax.translate --workdir={FLAGS.output} '
          'VIDEO...')


def _flag_value(value) -> str:
  """A config value as a --config.KEY= flag takes it (a tuple as '(2,2)')."""
  return f'({",".join(map(str, value))})' if isinstance(value, tuple) else str(value)


if __name__ == '__main__':
  # Defined only when run as a program: importing the name maps must not claim flag names.
  from ml_collections import config_flags  # pylint: disable=ungrouped-imports
  config_flags.DEFINE_config_file('config', None, 'The sltjax config of the stage, e.g. '
                                  'configs/mmtlb.py:sign2text[,dataset=csl_daily], with its '
                                  '--config.data.* overrides.', lock_config=False)
  flags.DEFINE_enum('system', 'mmtlb', ['mmtlb', 'sign2gpt'], 'The release: mmtlb (SLRT '
                    'TwoStreamNetwork) or sign2gpt (ryanwongsa/Sign2GPT).')
  flags.DEFINE_string('checkpoint', None, 'The release\'s checkpoint: MMTLB\'s Sign2Gloss or '
                      'Sign2Text ckpts/best.ckpt; Sign2GPT\'s stage-2 best checkpoint (.pt).')
  flags.DEFINE_string('backbone_checkpoint', None, 'With a Sign2Text checkpoint: the Sign2Gloss '
                      'checkpoint whose S3D made its features, for a workdir that reads videos '
                      '(without it: one that reads those features, data.features_dir).')
  flags.DEFINE_string('glosses', None, 'MMTLB: the release\'s recognition glosses '
                      '(data/phoenix-2014t/gloss2ids_old.pkl).')
  flags.DEFINE_string('mbart_dir', None, 'Sign2Text: the release\'s pruned mBART folder '
                      '(pretrained_models/mBart_de).')
  flags.DEFINE_string('sign_language', 'de_DGS', 'Sign2Text: the sign-language code of the '
                      'release\'s gloss vocabulary (zh_CSL for CSL-Daily).')
  flags.DEFINE_string('lm_dir', None, 'Sign2GPT: the Hugging Face XGLM folder the release '
                      'adapted (facebook/xglm-1.7B): its config.json and tokenizer.')
  flags.DEFINE_string('output', None, 'The workdir to write (new or empty).')
  flags.mark_flags_as_required(['config', 'checkpoint', 'output'])
  app.run(main)
