"""What every video system shares: opening a built dataset (building synthetic_signs on first
use) and files a workdir takes along from the workdir it starts from (gloss list, tokenizer)."""
import os
import shutil

import jax
from jax.experimental import multihost_utils

from sltjax.data import video
from sltjax.errors import MissingInputError
from sltjax.experiments.base import log


def open_dataset_split(data_config, split: str) -> video.VideoSplit:
  """The split, building synthetic_signs on first use when config.data.build_if_missing."""
  try:
    return video.open_split(data_config, split)
  except MissingInputError:
    if not (data_config.get('build_if_missing') and data_config.name == 'synthetic_signs'):
      raise
  from sltjax.data.build import build  # pylint: disable=import-outside-toplevel
  log(f'Building synthetic_signs under {data_config.data_dir} (first use; about a minute).')
  if jax.process_index() == 0:
    build('synthetic_signs', data_config.data_dir, num_workers=os.cpu_count() or 1,
          show_progress=True)
  multihost_utils.sync_global_devices('synthetic_signs built')
  return video.open_split(data_config, split)


def shared_file(name: str, workdir: str, source_workdir: str) -> str:
  """workdir/name, copied from source_workdir/name when that exists and this does not."""
  target, source = os.path.join(workdir, name), os.path.join(source_workdir or '', name)
  if source_workdir and os.path.exists(source) and not os.path.exists(target):
    if jax.process_index() == 0:
      (shutil.copytree if os.path.isdir(source) else shutil.copy)(source, target)
    multihost_utils.sync_global_devices(f'copied {name}')
  return target
