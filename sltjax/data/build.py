"""Builds a sign language dataset into sharded ArrayRecord files (replaces `tfds build`).

  python -m sltjax.data.build --dataset=phoenix2014t --manual_dir=PHOENIX-2014-T-release-v3 \
      --data_dir=~/tensorflow_datasets [--num_workers=N] [--on_error=fail|skip] \
      [--frame_size=260x210] [--jpeg_quality=90] [--option=KEY=VALUE ...]

Shows a progress bar (clips/s, frames/s, ETA) while it encodes frames on every core, and prints
a summary at the end (also saved as build_summary.json beside the records). An interrupted
build resumes from its cache when rerun; a dataset only appears once complete.

A gs:// --data_dir (a bucket every host of a pod reads) is built in a local staging folder
(--staging_dir, default ~/.cache/sltjax/builds; ArrayRecord files are written locally) and then
uploaded, dataset_info.json last: TFDS takes the dataset as present only once that file is there,
so readers never see a partial upload, and a rerun after an interruption uploads again.
"""
import functools
import glob
import json
import os
import shutil
import sys
import time

from absl import app, flags
import tensorflow_datasets as tfds

from sltjax import storage
from sltjax.data import clip_builder
from sltjax.errors import exit_with_user_error

FLAGS = flags.FLAGS


def summarize(builder: clip_builder.SignVideoBuilder, seconds: float) -> dict:
  """Examples, frames and bytes on disk per split, plus the skipped examples and those left out
  as too short (the builder's SHORT_CLIPS)."""
  splits = {}
  for name, split in builder.info.splits.items():
    frames = sum(builder.info.metadata['index'][name]['num_frames'])
    num_bytes = sum(p.stat().length for p in builder.data_path.glob(
        f'{builder.name}-{name}.array_record-*'))
    splits[name] = {'examples': split.num_examples, 'frames': frames, 'bytes': num_bytes,
                    'bytes_per_frame': round(num_bytes / max(frames, 1), 1)}
  total_frames = sum(s['frames'] for s in splits.values())
  return {
      'dataset': builder.name, 'path': os.fspath(builder.data_path),
      'frame_size': builder.info.metadata['frame_size'],
      'jpeg_quality': builder.info.metadata['jpeg_quality'],
      'splits': splits, 'skipped': builder.info.metadata['skipped'],
      'too_short': builder.info.metadata['too_short'],
      'clips_reused_from_cache': builder.info.metadata['clips_reused_from_cache'],
      'seconds': round(seconds, 1), 'frames_per_second': round(total_frames / max(seconds, 1e-9), 1),
  }


def print_summary(summary: dict) -> None:
  print(f"\n{summary['dataset']} -> {summary['path']} (frames {summary['frame_size']}, "
        f"JPEG quality {summary['jpeg_quality']})")
  for name, s in summary['splits'].items():
    print(f"  {name:>6}: {s['examples']:7d} examples {s['frames']:9d} frames "
          f"{s['bytes'] / 2**20:9.1f} MiB ({s['bytes_per_frame']:.0f} B/frame)")
  print(f"  {len(summary['skipped'])} skipped" + ''.join(f'\n    {p}' for p in summary['skipped']))
  too_short = summary.get('too_short') or {}
  if too_short:
    counts = {split: len(ids) for split, ids in too_short['ids'].items()}
    print(f"  {sum(counts.values())} left out with fewer than {too_short['fewest_frames']} frames "
          f"({too_short['reason']})" + ''.join(f', {s} {n}' for s, n in counts.items()))
  print(f"  {summary['seconds']} s, {summary['frames_per_second']} frames/s"
        f" ({summary['clips_reused_from_cache']} clips reused from an interrupted build)")


def build(dataset: str, data_dir: str, manual_dir: str | None = None, *, num_workers: int = 1,
          on_error: str = 'fail', frame_size: str | None = None, jpeg_quality: int | None = None,
          options: dict | None = None, show_progress: bool = False,
          staging_dir: str = '~/.cache/sltjax/builds') -> dict:
  """Builds `dataset` (if not built yet) and returns its summary; raises BuildError on problems.

  A gs:// data_dir is built under staging_dir, then uploaded (see the module's docstring)."""
  settings = dict(frame_size=frame_size, jpeg_quality=jpeg_quality, num_workers=num_workers,
                  on_error=on_error, show_progress=show_progress, **(options or {}))
  storage.check_access(data_dir, write=True)
  builder = clip_builder.builder_class(dataset)(data_dir=storage.absolute(data_dir), **settings)
  summary_path = builder.data_path / 'build_summary.json'
  if builder.is_prepared():
    built = (builder.info.metadata['frame_size'], builder.info.metadata['jpeg_quality'])
    wanted = (str(builder.settings.frame_size), builder.settings.jpeg_quality)
    if built != wanted:
      raise ValueError(f'{builder.data_path} already holds {dataset} built with frame size '
                       f'{built[0]} and JPEG quality {built[1]}, not {wanted[0]}/{wanted[1]}: '
                       'use another --data_dir, or delete that folder to rebuild.')
    return json.loads(summary_path.read_text())
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS and not (manual_dir and os.path.isdir(manual_dir)):
    raise FileNotFoundError(f'{dataset} is built from a release you download yourself; '
                            f'--manual_dir={manual_dir!r} is not a folder.\n'
                            f'{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}')
  if storage.is_remote(data_dir):
    return _build_and_upload(builder, data_dir, staging_dir, functools.partial(
        build, dataset, manual_dir=manual_dir, num_workers=num_workers, on_error=on_error,
        frame_size=frame_size, jpeg_quality=jpeg_quality, options=options,
        show_progress=show_progress))
  for stale in glob.glob(os.path.join(glob.escape(os.path.dirname(builder.data_path)),
                                       f'incomplete.*{builder.version}')):
    shutil.rmtree(stale)  # left by a killed build; one build per data_dir at a time
  start = time.monotonic()
  builder.download_and_prepare(
      file_format='array_record',
      download_config=tfds.download.DownloadConfig(
          manual_dir=os.path.abspath(manual_dir) if manual_dir else None))
  summary = summarize(builder, time.monotonic() - start)
  storage.write_text(summary_path, json.dumps(summary, indent=1))
  return summary


def _build_and_upload(remote: clip_builder.SignVideoBuilder, data_dir: str, staging_dir: str,
                      build_locally) -> dict:
  """Builds remote's dataset (build_locally(data_dir)) under a local staging folder named after
  its gs:// data_dir, then uploads it to remote.data_path (dataset_info.json last) and removes
  the local copy."""
  remote_dir = os.fspath(remote.data_path)
  local_dir = storage.absolute(storage.join(staging_dir, data_dir[len('gs://'):]))
  summary = {**build_locally(local_dir), 'path': remote_dir}
  local_path = os.path.join(local_dir, remote.name, str(remote.version))  # TFDS's data_path
  storage.write_text(storage.join(local_path, 'build_summary.json'), json.dumps(summary, indent=1))
  if storage.path(remote_dir).exists():
    storage.path(remote_dir).rmtree()  # a partial upload (no dataset_info.json)
  print(f'Uploading {local_path} to {remote_dir} ...', file=sys.stderr)
  storage.copy_files(local_path, remote_dir, last=('dataset_info.json',))
  shutil.rmtree(local_dir)
  return summary


def parse_options(pairs: list[str]) -> dict:
  options = {}
  for pair in pairs:
    key, sep, value = pair.partition('=')
    if not sep or not key:
      raise app.UsageError(f'--option={pair!r}: expected KEY=VALUE.')
    options[key] = value
  return options


def main(argv):
  del argv
  try:
    summary = build(FLAGS.dataset, FLAGS.data_dir, FLAGS.manual_dir,
                    num_workers=FLAGS.num_workers, on_error=FLAGS.on_error,
                    frame_size=FLAGS.frame_size, jpeg_quality=FLAGS.jpeg_quality,
                    options=parse_options(FLAGS.option), show_progress=True,
                    staging_dir=FLAGS.staging_dir)
  except (clip_builder.BuildError, FileNotFoundError, ValueError) as e:
    print(file=sys.stderr)  # after the progress bar's line
    exit_with_user_error(str(e))
  print_summary(summary)


if __name__ == '__main__':
  # Defined only when run as a program: importing build() must not claim flag names.
  flags.DEFINE_enum('dataset', None, clip_builder.DATASETS, 'Dataset to build.')
  flags.DEFINE_string('manual_dir', None,
                      'Folder holding the downloaded release (not for synthetic_signs).')
  flags.DEFINE_string('data_dir', None, 'TFDS data directory to write into (a local folder or '
                      'gs://BUCKET/...).')
  flags.DEFINE_string('staging_dir', '~/.cache/sltjax/builds',
                      'Local folder where a gs:// data_dir is built before its upload.')
  flags.DEFINE_integer('num_workers', os.cpu_count(), 'Processes decoding and encoding frames.')
  flags.DEFINE_enum('on_error', 'fail', clip_builder.ON_ERROR_CHOICES,
                    'fail: stop before writing and list every problem; skip: build '
                    'without the broken examples and list them in the summary.')
  flags.DEFINE_string('frame_size', None,
                      'HEIGHTxWIDTH, a short side, or "native" (default per dataset).')
  flags.DEFINE_integer('jpeg_quality', None, 'JPEG quality 1-100 (default 90).')
  flags.DEFINE_multi_string('option', [], 'KEY=VALUE builder option, e.g. num_train=200.')
  flags.mark_flags_as_required(['dataset', 'data_dir'])
  app.run(main)
