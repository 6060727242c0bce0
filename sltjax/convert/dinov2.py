"""DINOv2 checkpoints -> sltjax's NNX `DINOv2` (sltjax/models/backbones/dinov2.py).

  model = load_dinov2('/path/to/dinov2-small')                 # a Hugging Face Dinov2Model directory
  model = load_dinov2('/path/to/dinov2_vits14_pretrain.pth')    # Meta's original checkpoint
  hidden = model.images(images)  # [batch, H, W, 3] normalised -> [batch, 1 + patches, dim]
  save_dinov2(model, '/path/to/out')  # a Dinov2Model directory

Hugging Face names come in two generations (hub snapshots: `attention.attention.query`,
`attention.output.dense`; transformers 5's save_pretrained: `attention.q_proj`, `o_proj`); both
are read. Meta's checkpoint holds no config: the architecture follows from the tensor shapes
(64-wide heads, as every released DINOv2), its fused qkv is split, and it is read with
torch.load(weights_only=True), which executes no pickled code. `mask_token` (masked-image
training) is not used.
"""
import os
import re

import jax.numpy as jnp
import numpy as np
from flax import nnx

from sltjax.convert.hf_checkpoint import read_config, read_state_dict, write_model_directory
from sltjax.convert.state_dict import (TORCH_LEAF_NAMES, fill_state, read_torch_weights,
                                       to_state_dict)
from sltjax.models.backbones.dinov2 import DINOv2, DINOv2Config

HEAD_DIM = 64  # every released DINOv2 (S/B/L/g) uses 64-wide heads
_MODULE_NAMES = {'out_proj': 'o_proj', 'fc1': 'mlp.fc1', 'fc2': 'mlp.fc2',
                 'layer_scale1': 'layer_scale1.lambda1', 'layer_scale2': 'layer_scale2.lambda1'}
_OLD_HF_NAMES = (  # hub snapshots -> transformers 5 names
    (r'\.attention\.attention\.query\.', '.attention.q_proj.'),
    (r'\.attention\.attention\.key\.', '.attention.k_proj.'),
    (r'\.attention\.attention\.value\.', '.attention.v_proj.'),
    (r'\.attention\.output\.dense\.', '.attention.o_proj.'),
)
def hf_name(path: tuple) -> str:
  """Hugging Face (transformers 5) name of an sltjax DINOv2 parameter path."""
  names = [str(p) for p in path]
  if names[0] in ('cls_token', 'position_embeddings'):
    return f'embeddings.{names[0]}'
  if names[0] == 'patch_embeddings':
    return f'embeddings.patch_embeddings.projection.{TORCH_LEAF_NAMES[names[-1]]}'
  if names[0] == 'layernorm':
    return f'layernorm.{TORCH_LEAF_NAMES[names[-1]]}'
  _, index, *module = names  # ('layers', i, 'attention', 'q_proj', 'kernel'), ...
  if module[0] in ('layer_scale1', 'layer_scale2'):
    return f'encoder.layer.{index}.{_MODULE_NAMES[module[0]]}'
  *modules, leaf = module
  return '.'.join(['encoder.layer', index, *(_MODULE_NAMES.get(m, m) for m in modules),
                   TORCH_LEAF_NAMES[leaf]])


def _rename(state_dict: dict[str, np.ndarray], rules) -> dict[str, np.ndarray]:
  out = {}
  for name, value in state_dict.items():
    for pattern, replacement in rules:
      name, count = re.subn(pattern, replacement, name)
      if count:
        break
    out[name] = value
  return out


def meta_name(path: tuple) -> str:
  """Meta's (facebookresearch/dinov2) tensor name of an sltjax DINOv2 parameter path; q, k and v
  are row blocks of the fused `blocks.N.attn.qkv`, named as `split_fused` names them:
  ('layers', 3, 'attention', 'k_proj', 'kernel') -> 'blocks.3.attn.qkv.weight[k]'."""
  names = [str(p) for p in path]
  if names[0] in ('cls_token', 'position_embeddings'):
    return {'cls_token': 'cls_token', 'position_embeddings': 'pos_embed'}[names[0]]
  leaf = TORCH_LEAF_NAMES.get(names[-1])
  if names[0] == 'patch_embeddings':
    return f'patch_embed.proj.{leaf}'
  if names[0] == 'layernorm':
    return f'norm.{leaf}'
  _, index, module, *rest = names  # ('layers', i, 'attention', 'q_proj', 'kernel'), ...
  block = f'blocks.{index}'
  if module in ('layer_scale1', 'layer_scale2'):
    return f'{block}.ls{module[-1]}.gamma'
  if module == 'attention' and rest[0] == 'out_proj':
    return f'{block}.attn.proj.{leaf}'
  if module == 'attention':
    return f'{block}.attn.qkv.{leaf}[{rest[0][0]}]'
  if module in ('fc1', 'fc2'):
    return f'{block}.mlp.{module}.{leaf}'
  return f'{block}.{module}.{leaf}'  # norm1, norm2


FUSED_QKV = r'\.attn\.qkv\.(weight|bias)$'


def split_fused(state_dict: dict[str, np.ndarray], fused: str = FUSED_QKV
                ) -> dict[str, np.ndarray]:
  """state_dict with every tensor whose name matches the regex `fused` (a q/k/v projection fused
  along its rows, [3 x out, ...]) replaced by its thirds 'NAME[q]', 'NAME[k]', 'NAME[v]' (of
  unequal rows if it is mis-shaped, for the loader to report)."""
  out = {}
  for name, value in state_dict.items():
    if re.search(fused, name):
      out.update({f'{name}[{part}]': chunk
                  for part, chunk in zip('qkv', np.array_split(np.asarray(value), 3, axis=0))})
    else:
      out[name] = value
  return out


# The DINOv2Config fields a checkpoint decides (what a workdir's architectures.json keeps).
ARCHITECTURE_FIELDS = ('hidden_size', 'num_layers', 'num_heads', 'mlp_ratio', 'patch_size',
                       'image_size', 'layer_norm_eps', 'interpolation')


def meta_config(state_dict: dict[str, np.ndarray], **overrides) -> DINOv2Config:
  """The architecture of a Meta checkpoint, from its tensor shapes."""
  if 'register_tokens' in state_dict:
    raise ValueError('The checkpoint has register tokens (a "*_reg" DINOv2): not supported.')
  if any('w12' in name for name in state_dict):
    raise ValueError('The checkpoint uses a SwiGLU MLP (ViT-g): not supported.')
  hidden = state_dict['cls_token'].shape[-1]
  layers = 1 + max(int(m[1]) for m in (re.match(r'blocks\.(\d+)\.', n) for n in state_dict) if m)
  patch = state_dict['patch_embed.proj.weight'].shape[-1]
  grid = int(round((state_dict['pos_embed'].shape[1] - 1) ** 0.5))
  return DINOv2Config(hidden_size=hidden, num_layers=layers, num_heads=hidden // HEAD_DIM,
                      mlp_ratio=state_dict['blocks.0.mlp.fc1.weight'].shape[0] / hidden,
                      patch_size=patch, image_size=grid * patch, **overrides)


def hf_config(config: dict, **overrides) -> DINOv2Config:
  """The architecture of a Hugging Face Dinov2Model config.json."""
  if config.get('model_type') != 'dinov2':
    raise ValueError(f'config.json has model_type={config.get("model_type")!r}; load_dinov2 '
                     'reads "dinov2" models.')
  if config.get('use_swiglu_ffn') or config.get('hidden_act', 'gelu') != 'gelu':
    raise ValueError('Only the GELU-MLP DINOv2 models (small, base, large) are supported.')
  return DINOv2Config(hidden_size=config['hidden_size'], num_layers=config['num_hidden_layers'],
                      num_heads=config['num_attention_heads'],
                      mlp_ratio=config.get('mlp_ratio', 4), patch_size=config['patch_size'],
                      image_size=config['image_size'],
                      layer_norm_eps=config.get('layer_norm_eps', 1e-6), **overrides)


def dinov2_state(state_dict: dict[str, np.ndarray], abstract_state: nnx.State,
                 dtype=jnp.float32) -> nnx.State:
  """DINOv2 variables from a Hugging Face (either generation) or Meta state dict."""
  state_dict = {k.removeprefix('dinov2.'): v for k, v in state_dict.items()}
  if 'pos_embed' in state_dict:
    return fill_state(abstract_state, split_fused(state_dict), meta_name, dtype,
                      what="sltjax DINOv2 (Meta's names)", ignored=lambda n: n == 'mask_token')
  return fill_state(abstract_state, _rename(state_dict, _OLD_HF_NAMES), hf_name, dtype,
                    what='sltjax DINOv2', ignored=lambda n: n == 'embeddings.mask_token')


def load_dinov2(path: str, dtype: str = 'float32', param_dtype: str | None = None,
                interpolation: str = 'hf') -> DINOv2:
  """The DINOv2 of a Hugging Face directory or a Meta `.pth` file as an sltjax DINOv2.

  dtype: compute dtype; param_dtype: the weights' (default: dtype); interpolation: 'hf' or
  'meta' position embeddings at other input sizes (DINOv2Config)."""
  param_dtype = param_dtype or dtype
  options = dict(dtype=dtype, param_dtype=param_dtype, interpolation=interpolation)
  if os.path.isdir(path):
    state_dict = read_state_dict(path)
    cfg = hf_config(read_config(path), **options)
  else:
    state_dict = read_torch_weights(path)
    cfg = meta_config(state_dict, **options)
  graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: DINOv2(cfg, rngs=nnx.Rngs(0))))
  return nnx.merge(graphdef, dinov2_state(state_dict, abstract_state, jnp.dtype(param_dtype)))



def save_dinov2(model: DINOv2, directory: str) -> None:
  """Writes `model` (without adapters) as a Hugging Face Dinov2Model directory."""
  cfg = model.config
  config = {'model_type': 'dinov2', 'architectures': ['Dinov2Model'],
            'hidden_size': cfg.hidden_size, 'num_hidden_layers': cfg.num_layers,
            'num_attention_heads': cfg.num_heads,
            'mlp_ratio': int(cfg.mlp_ratio) if float(cfg.mlp_ratio).is_integer() else cfg.mlp_ratio,
            'patch_size': cfg.patch_size, 'image_size': cfg.image_size,
            'layer_norm_eps': cfg.layer_norm_eps, 'hidden_act': 'gelu', 'qkv_bias': True,
            'num_channels': 3, 'use_swiglu_ffn': False, 'layerscale_value': 1.0}
  tensors = to_state_dict(nnx.state(model), hf_name)
  tensors['embeddings.mask_token'] = np.zeros((1, cfg.hidden_size), np.float32)  # unused here
  write_model_directory(directory, config, tensors)
