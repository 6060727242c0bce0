r"""Translate sign language videos with a trained workdir.

  python -m sltjax.translate --workdir=WORKDIR VIDEO_OR_FOLDER... [--output=out.jsonl] \
      [--batch_size=8]

Inputs: video files (mp4, webm, mov, mkv, avi: anything FFmpeg decodes; any size, aspect ratio,
rotation and frame rate, resampled to the training fps), folders of frame images (taken in name
order, at --frames_fps), or folders holding either (searched recursively). Each is prepared as
evaluation prepares a dataset record (short side resized, centre crop) and decoded with the
workdir's best checkpoint and config. Prints the translation (and the recognised glosses) per
input; an input that fails gets one error line and the rest still run. Exit status 0 only if
every input was translated, 2 if the workdir cannot translate videos.

Inputs are decoded --batch_size at a time, grouped by frame-length bucket (one compiled program
per bucket), so a folder of clips runs at evaluation throughput; each input's result is the
same as when it is translated alone.
"""
import dataclasses
import json
import os
import sys
import time

import numpy as np
import tqdm
from absl import app, flags

from sltjax import command_line, experiments, storage, workdirs
from sltjax.data import augmentation, video
from sltjax.data.frames import FrameError, read_image_file
from sltjax.data.video_files import VideoError, read_video
from sltjax.errors import UserError, exit_with_user_error
from sltjax.experiments.base import TRANSLATE_VIDEOS

FLAGS = flags.FLAGS
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')
VIDEO_SUFFIXES = ('.mp4', '.webm', '.mov', '.mkv', '.avi', '.m4v', '.mpg', '.mpeg')


class InputError(ValueError):
  """An input that cannot be translated (with the reason)."""


def is_frame_folder(path: str) -> bool:
  """Whether `path` is a folder holding frame images (one clip)."""
  return os.path.isdir(path) and any(n.lower().endswith(IMAGE_SUFFIXES) for n in os.listdir(path))


def expand_inputs(paths: list[str]) -> list[str]:
  """The clips that command-line paths name: a video file or a folder of frame images is one;
  any other folder gives the video files and frame folders under it (recursively, in path
  order; PHOENIX-2014T's release is a folder of frame folders). A path that names no clip is
  kept, for its error line."""
  out = []
  for path in paths:
    if not os.path.isdir(path) or is_frame_folder(path):
      out.append(path)
      continue
    found = []
    for root, folders, names in os.walk(path):
      clips = [f for f in folders if is_frame_folder(os.path.join(root, f))]
      folders[:] = [f for f in folders if f not in clips]  # a frame folder is not searched
      found += [os.path.join(root, f) for f in clips]
      found += [os.path.join(root, n) for n in names if n.lower().endswith(VIDEO_SUFFIXES)]
    out.extend(sorted(found) or [path])
  return out


def read_frames(path: str, target_fps: float, frames_fps: float | None):
  """(RGB frames resampled to target_fps, source fps) of a video file or a frame folder."""
  if os.path.isdir(path):
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES))
    if not names:
      raise InputError(f'{path}: the folder holds no frame images ({", ".join(IMAGE_SUFFIXES)}) '
                       f'and no videos ({", ".join(VIDEO_SUFFIXES)}).')
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


def load_experiment(workdir: str, capability: str = TRANSLATE_VIDEOS,
                    action: str = 'translating videos'):
  """The experiment of a training workdir, if its model can do `capability` (else UserError)."""
  exp = experiments.create(workdirs.load_config(workdir), workdir)
  exp.require(capability, action)
  return exp


@dataclasses.dataclass
class PreparedInput:
  """An input read and prepared as evaluation prepares a record."""
  path: str
  clip: np.ndarray  # [bucket, S, S, 3] uint8, padded with the last frame
  valid: int  # frames of `clip` that are real
  frames: int  # frames read (after resampling to the training fps)
  fps: float  # the source's frame rate


def prepare(exp, path: str, frames_fps: float | None) -> PreparedInput:
  """Reads and prepares one input; raises InputError."""
  data = exp.config.data
  try:
    frames, fps = read_frames(path, data.fps, frames_fps)
  except (VideoError, FrameError) as e:
    raise InputError(str(e)) from e
  clip, valid = video.eval_clip(frames, data)
  return PreparedInput(path, clip, valid, len(frames), fps)


def clip_batch(exp, inputs: list[PreparedInput], batch_size: int) -> dict[str, np.ndarray]:
  """{'frames', 'frame_mask'} of inputs whose clips share one length bucket, as the model's eval
  batches are. It has batch_size rows (rounded up to the data-parallel width; missing rows
  repeat the first input), so each bucket compiles once; in evaluation mode, with masked frames,
  a row's result does not depend on the others."""
  data = exp.config.data
  rows = -(-batch_size // exp.data_parallel_rows()) * exp.data_parallel_rows()
  filled = inputs + [inputs[0]] * (rows - len(inputs))
  frame_mask = np.zeros((rows, len(inputs[0].clip)), np.int32)
  for row, item in enumerate(filled):
    frame_mask[row, :item.valid] = 1
  return {'frames': augmentation.normalize(np.stack([item.clip for item in filled]),
                                           data.normalization, data.channel_order),
          'frame_mask': frame_mask}


def translate_batch(exp, params, rest, inputs: list[PreparedInput], batch_size: int) -> list[dict]:
  """{'input', 'glosses', 'translation', 'frames', 'fps'} of inputs of one length bucket."""
  predictions = exp.predict(params, rest, clip_batch(exp, inputs, batch_size))
  return [{'input': item.path, 'glosses': predictions['gloss'][row] if 'gloss' in predictions
           else None, 'translation': predictions['text'][row], 'frames': item.frames,
           'fps': round(item.fps, 3)} for row, item in enumerate(inputs)]


def run_batched(exp, paths: list[str], frames_fps: float | None, batch_size: int,
                run_batch, on_result=lambda result: None) -> list[dict]:
  """One result per path, in order ({'input', 'error'} for an input that cannot be read).
  Inputs are read one by one and given to run_batch(inputs) -> [result per input] batch_size
  clips of one length bucket at a time, each batch as soon as it is full."""
  results: list[dict | None] = [None] * len(paths)
  pending: dict[int, list[tuple[int, PreparedInput]]] = {}  # bucket length -> waiting inputs

  def flush(bucket):
    waiting = pending.pop(bucket)
    for (index, _), result in zip(waiting, run_batch([item for _, item in waiting])):
      results[index] = result
      on_result(result)

  for index, path in enumerate(paths):
    try:
      item = prepare(exp, path, frames_fps)
    except InputError as e:
      results[index] = {'input': path, 'error': str(e)}
      on_result(results[index])
      continue
    pending.setdefault(len(item.clip), []).append((index, item))
    if len(pending[len(item.clip)]) == batch_size:
      flush(len(item.clip))
  for bucket in list(pending):
    flush(bucket)
  return results


def translate_all(exp, params, rest, paths: list[str], frames_fps: float | None,
                  batch_size: int, on_result=lambda result: None) -> list[dict]:
  """One translation result per path, in order (see run_batched)."""
  return run_batched(exp, paths, frames_fps, batch_size,
                     lambda inputs: translate_batch(exp, params, rest, inputs, batch_size),
                     on_result)


def main(argv):
  if not argv[1:]:
    raise app.UsageError('Give one or more videos or frame folders to translate.')
  paths = expand_inputs(argv[1:])
  if FLAGS.batch_size < 1:
    raise app.UsageError(f'--batch_size={FLAGS.batch_size} must be at least 1.')
  command_line.start()
  try:
    exp = load_experiment(FLAGS.workdir)
    params, rest, step = exp.eval_variables()
  except UserError as e:
    exit_with_user_error(str(e))
  print(f'{FLAGS.workdir}: best checkpoint of step {step} ({exp.describe()}).', file=sys.stderr)
  progress = tqdm.tqdm(total=len(paths), unit='video', disable=len(paths) <= 3, file=sys.stderr)

  def report(result):
    progress.update(1)
    if 'error' in result:
      tqdm.tqdm.write(f'error: {result["error"]}', file=sys.stderr)
    else:
      tqdm.tqdm.write(f'{result["input"]}: {result["translation"] or ""}')
      if result['glosses'] is not None:
        tqdm.tqdm.write(f'  glosses: {result["glosses"]}')

  start = time.perf_counter()
  results = translate_all(exp, params, rest, paths, FLAGS.frames_fps, FLAGS.batch_size, report)
  progress.close()
  failures = sum('error' in r for r in results)
  if FLAGS.output:
    storage.write_text(FLAGS.output, ''.join(json.dumps(result, ensure_ascii=False) + '\n'
                                             for result in results))
  print(f'{len(paths) - failures} of {len(paths)} inputs translated '
        f'({len(paths) / (time.perf_counter() - start):.2f} inputs/s).', file=sys.stderr)
  return 1 if failures else 0


if __name__ == '__main__':
  # Flags are defined only when run as a program, so importing this module (tests, notebooks)
  # does not claim flag names other command-line modules also use.
  flags.DEFINE_string('workdir', None, 'A training workdir (config.json, best/).')
  flags.DEFINE_string('output', None, 'Also write one JSON line per input here.')
  flags.DEFINE_integer('batch_size', 8, 'Inputs decoded together (of one frame-length bucket): '
                       'throughput, not results, depends on it.')
  flags.DEFINE_float('frames_fps', None, 'Frame rate of frame-folder inputs '
                     '(default: the training fps, i.e. no resampling).')
  flags.mark_flags_as_required(['workdir'])
  app.run(main)
