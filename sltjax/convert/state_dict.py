"""Filling an sltjax model's (abstract) state from a PyTorch-named state dict, by rule.

A converter gives, per sltjax parameter path, the source tensor's name and how to change its
layout; `fill_state` uses every source tensor exactly once and reports every missing, unexpected
or mis-shaped tensor in one error.
"""
import os
import pickle
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sltjax.errors import MissingInputError, UserError

# The PyTorch name of an sltjax leaf variable (Linear/Conv/Embedding weight, norm scale, BatchNorm
# running statistics).
TORCH_LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'embedding': 'weight', 'bias': 'bias',
                    'mean': 'running_mean', 'var': 'running_var'}


def torch_layout(path: tuple, tensor: np.ndarray) -> np.ndarray:
  """PyTorch -> channels-last layout: Linear [out, in] -> [in, out]; ConvNd [out, in, *k] ->
  [*k, in, out]; everything else unchanged."""
  if path[-1] != 'kernel':
    return tensor
  if tensor.ndim == 2:
    return tensor.T
  return np.transpose(tensor, (*range(2, tensor.ndim), 1, 0))


def from_torch_layout(path: tuple, value: np.ndarray) -> np.ndarray:
  """The inverse of `torch_layout`."""
  if path[-1] != 'kernel':
    return value
  if value.ndim == 2:
    return value.T
  return np.transpose(value, (value.ndim - 1, value.ndim - 2, *range(value.ndim - 2)))


def to_state_dict(state: nnx.State, source_name: Callable[[tuple], str],
                  layout: Callable[[tuple, np.ndarray], np.ndarray] = from_torch_layout,
                  ) -> dict[str, np.ndarray]:
  """The inverse of `fill_state`: float32 numpy tensors by their PyTorch names (exporting a model
  in its source's format, round-trip checks)."""
  return {source_name(path): layout(path, np.asarray(jax.device_get(variable.get_value()),
                                                     np.float32))
          for path, variable in nnx.to_flat_state(state)}


def fill_state(abstract_state: nnx.State, state_dict: dict[str, np.ndarray],
               source_name: Callable[[tuple], str], dtype, *, what: str,
               layout: Callable[[tuple, np.ndarray], np.ndarray] = torch_layout,
               ignored: Callable[[str], bool] = lambda name: False,
               problems: Iterable[str] = ()) -> nnx.State:
  """`abstract_state` with every variable taken from state_dict[source_name(path)], cast to dtype.

  `ignored` names source tensors that may be present and are not used (a classifier, BN's
  num_batches_tracked). `problems` are earlier findings to report with these. Raises ValueError
  naming `what` and every problem.
  """
  unused = {k: v for k, v in state_dict.items() if not ignored(k)}
  problems, flat = list(problems), []
  for path, variable in nnx.to_flat_state(abstract_state):
    name = source_name(path)
    if name not in unused:
      problems.append(f'missing {name} (for {"/".join(map(str, path))}, shape {variable.shape})')
      continue
    value = layout(path, np.asarray(unused.pop(name)))
    if value.shape != variable.shape:
      problems.append(f'{name} has shape {value.shape} (in sltjax layout); expected '
                      f'{variable.shape}')
      continue
    flat.append((path, variable.replace(jnp.asarray(value, dtype))))
  problems += [f'unexpected {name} {tuple(np.shape(v))}' for name, v in sorted(unused.items())]
  if problems:
    raise ValueError(f'The checkpoint does not match {what}:\n  ' + '\n  '.join(problems))
  return nnx.from_flat_state(flat)


def read_torch_weights(path: str) -> dict[str, np.ndarray]:
  """Tensors of a .safetensors file, or of a PyTorch .pth/.pt/.bin (torch.load weights_only),
  as float32/int numpy arrays. A {'state_dict': ...} or {'model': ...} wrapper is unwrapped and a
  DataParallel 'module.' prefix removed."""
  if not os.path.isfile(path):
    raise MissingInputError(f'{path} not found: pass the downloaded checkpoint file.')
  if path.endswith('.safetensors'):
    from sltjax.convert.hf_checkpoint import load_safetensors  # pylint: disable=import-outside-toplevel
    state = load_safetensors(path)
  else:
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError(f'{path} is a PyTorch checkpoint: install torch to read it.') from e
    try:
      state = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
      raise UserError(f'{path} holds pickled objects other than tensors and plain values, which '
                      'sltjax does not run (torch.load weights_only): re-save its state dict '
                      f'alone with torch.save. ({str(e).splitlines()[0][:200]})') from None
    for wrapper in ('state_dict', 'model', 'model_state'):  # model_state: the SLRT release's
      if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
        state = state[wrapper]
    state = {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in state.items()}
  return {k.removeprefix('module.'): v for k, v in state.items()}
