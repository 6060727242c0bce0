r"""Translate sign language videos with a trained workdir.

  python -m sltjax.translate --workdir=workdirs/mmtlb_local VIDEO_OR_FOLDER... [--output=out.jsonl]

Inputs: video files (mp4, webm, mov, mkv, avi: anything FFmpeg decodes; any size, aspect ratio,
rotation and frame rate, resampled to the training fps) or folders of frame images (taken in name
order, at --frames_fps). Each is prepared as evaluation prepares a dataset record (short side
resized, centre crop) and decoded with the workdir's best checkpoint and config. Prints the
translation (and the recognised glosses) per input; an input that fails gets one error line and
the rest still run. Exit status 0 only if every input was translated.
"""
import json
import os
import sys

import jax
import numpy as np
import tqdm
from absl import app, flags, logging

from sltjax import experiments, workdirs
from sltjax.data import augmentation, video
from sltjax.data.frames import FrameError, read_image_file
from sltjax.data.video_files import VideoError, read_video
from sltjax.errors import UserError
from sltjax.experiments.base import TRANSLATE_VIDEOS

FLAGS = flags.FLAGS
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')


class InputError(ValueError):
  """An input that cannot be translated (with the reason)."""


def read_frames(path: str, target_fps: float, frames_fps: float | None):
  """(RGB frames resampled to target_fps, source fps) of a video file or a frame folder."""
  if os.path.isdir(path):
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES))
    if not names:
      raise InputError(f'{path}: the folder holds no frame images ({", ".join(IMAGE_SUFFIXES)}).')
    frames, fps = [read_image_file(os.path.join(path, n)) for n in names], frames_fps or target_fps
    if len({f.shape for f in frames}) > 1:
      raise InputError(f'{path}: the frame images differ in size.')
  elif not os.path.exists(path):
    raise InputError(f'{path}: no such file or folder.')
  else:
    frames, fps = read_video(path)
  count = max(1, round(len(frames) * target_fps / fps))
  picks = np.minimum((np.arange(count) * fps / target_fps).astype(int), len(frames) - 1)
  return [frames[i] for i in picks], fps


def load_experiment(workdir: str):
  """The experiment of a training workdir, if its model translates videos (else UserError)."""
  exp = experiments.create(workdirs.load_config(workdir), workdir)
  exp.require(TRANSLATE_VIDEOS, 'translating videos')
  return exp


def translate(exp, params, rest, path: str, frames_fps: float | None) -> dict:
  """{'input', 'glosses', 'translation', 'frames', 'fps'} for one input; raises InputError."""
  data = exp.config.data
  try:
    frames, fps = read_frames(path, data.fps, frames_fps)
  except (VideoError, FrameError) as e:
    raise InputError(str(e)) from e
  clip, valid = video.eval_clip(frames, data)
  rows = exp.data_parallel_rows()
  frame_mask = np.zeros((rows, len(clip)), np.int32)
  frame_mask[:, :valid] = 1
  batch = {'frames': augmentation.normalize(np.repeat(clip[None], rows, axis=0),
                                            data.normalization, data.channel_order),
           'frame_mask': frame_mask}
  glosses, texts = exp.predict(params, rest, batch)
  return {'input': path, 'glosses': glosses[0], 'translation': texts[0] if texts else None,
          'frames': len(frames), 'fps': round(fps, 3)}


def main(argv):
  inputs = argv[1:]
  if not inputs:
    raise app.UsageError('Give one or more videos or frame folders to translate.')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  try:
    exp = load_experiment(FLAGS.workdir)
    params, rest, step = exp.eval_variables()
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'{FLAGS.workdir}: best checkpoint of step {step} ({exp.describe()}).', file=sys.stderr)
  results, failures = [], 0
  for path in tqdm.tqdm(inputs, unit='video', disable=len(inputs) <= 3, file=sys.stderr):
    try:
      result = translate(exp, params, rest, path, FLAGS.frames_fps)
    except InputError as e:
      failures += 1
      tqdm.tqdm.write(f'error: {e}', file=sys.stderr)
      results.append({'input': path, 'error': str(e)})
      continue
    results.append(result)
    tqdm.tqdm.write(f'{path}: {result["translation"] if result["translation"] is not None else ""}')
    tqdm.tqdm.write(f'  glosses: {result["glosses"]}')
  if FLAGS.output:
    with open(FLAGS.output, 'w', encoding='utf-8') as f:
      for result in results:
        f.write(json.dumps(result, ensure_ascii=False) + '\n')
  print(f'{len(inputs) - failures} of {len(inputs)} inputs translated.', file=sys.stderr)
  return 1 if failures else 0


if __name__ == '__main__':
  # Flags are defined only when run as a program, so importing this module (tests, notebooks)
  # does not claim flag names other command-line modules also use.
  flags.DEFINE_string('workdir', None, 'A training workdir (config.json, best/).')
  flags.DEFINE_string('output', None, 'Also write one JSON line per input here.')
  flags.DEFINE_float('frames_fps', None, 'Frame rate of frame-folder inputs '
                     '(default: the training fps, i.e. no resampling).')
  flags.mark_flags_as_required(['workdir'])
  jax.config.update('jax_compilation_cache_dir', os.path.expanduser('~/.cache/sltjax/xla'))
  app.run(main)
