"""Reading a local Hugging Face model directory: config.json and its weights as numpy arrays.

safetensors first (single file or sharded with an index); a PyTorch `.bin` only through
`torch.load(weights_only=True)`, which refuses to unpickle arbitrary objects.
"""
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.flax import save_file

from sltjax.errors import MissingInputError

SAFETENSORS = 'model.safetensors'
SAFETENSORS_INDEX = 'model.safetensors.index.json'
PYTORCH_BIN = 'pytorch_model.bin'


def read_config(directory: str) -> dict:
  path = os.path.join(directory, 'config.json')
  if not os.path.isfile(path):
    raise MissingInputError(f'{path} not found: point to a Hugging Face model directory (the one '
                            'save_pretrained writes, or a downloaded snapshot).')
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def read_generation_config(directory: str) -> dict:
  """generation_config.json (HF's generation defaults, which override config.json's), or {}."""
  path = os.path.join(directory, 'generation_config.json')
  if not os.path.isfile(path):
    return {}
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def load_safetensors(path: str) -> dict[str, np.ndarray]:
  """Tensors of one safetensors file as numpy arrays (bfloat16 as ml_dtypes' bfloat16)."""
  # Through JAX arrays: safetensors' numpy loader does not know bfloat16.
  with safe_open(path, framework='flax') as f:
    return {name: np.asarray(f.get_tensor(name)) for name in f.keys()}


def save_safetensors(tensors: dict[str, np.ndarray], path: str) -> None:
  """Writes `tensors` (any dtype, bfloat16 included) as a safetensors file transformers reads."""
  save_file({k: jnp.asarray(v) for k, v in tensors.items()}, path, metadata={'format': 'pt'})


def read_state_dict(directory: str) -> dict[str, np.ndarray]:
  """All weight tensors of the model in `directory`, by their Hugging Face names."""
  single = os.path.join(directory, SAFETENSORS)
  index = os.path.join(directory, SAFETENSORS_INDEX)
  pytorch = os.path.join(directory, PYTORCH_BIN)
  if os.path.isfile(single):
    return load_safetensors(single)
  if os.path.isfile(index):
    with open(index, encoding='utf-8') as f:
      shards = sorted(set(json.load(f)['weight_map'].values()))
    tensors = {}
    for shard in shards:
      tensors.update(load_safetensors(os.path.join(directory, shard)))
    return tensors
  if os.path.isfile(pytorch):
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError(f'{pytorch} is a PyTorch checkpoint: install torch to read it, or convert '
                        'it to safetensors first.') from e
    state = torch.load(pytorch, map_location='cpu', weights_only=True)
    return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
            for k, v in state.items()}
  raise MissingInputError(f'No weights in {directory}: expected {SAFETENSORS}, {SAFETENSORS_INDEX} '
                          f'or {PYTORCH_BIN}.')


def write_model_directory(directory: str, config: dict, tensors: dict[str, np.ndarray],
                          extra_files: dict[str, str] | None = None) -> None:
  """Writes a Hugging Face model directory (config.json, model.safetensors and `extra_files`,
  {name in the directory: source path}) that appears complete or not at all: written next to
  `directory`, then renamed over it."""
  staging = f'{directory.rstrip(os.sep)}.tmp{os.getpid()}'
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  with open(os.path.join(staging, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump(config, f, indent=2)
  save_safetensors(tensors, os.path.join(staging, SAFETENSORS))
  for name, source in (extra_files or {}).items():
    shutil.copy(source, os.path.join(staging, name))
  shutil.rmtree(directory, ignore_errors=True)
  os.replace(staging, directory)
