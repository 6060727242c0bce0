r"""Sign language retrieval with a trained workdir whose experiment retrieves (a
RetrievalExperiment, sltjax/experiments/retrieval.py): index a collection of videos once, then
rank it for sentences, or rank sentences for each video.

  python -m sltjax.retrieve --workdir=W index --index=DIR VIDEO_OR_FOLDER... [--batch_size=8]
  python -m sltjax.retrieve --workdir=W search --index=DIR "a sentence" [--top=10]
  python -m sltjax.retrieve --workdir=W search --index=DIR --texts=FILE [--top=10]

`index` embeds every input (video files, folders of videos, or folders of frame images, read as
`translate` reads them) with the workdir's best checkpoint into DIR: DIR/index.json lists the
inputs, the workdir and the checkpoint step; DIR/features/ holds one [frames, d] array per video.
Rerunning it adds only inputs not indexed yet, so an interrupted run resumes. Inputs that cannot
be read are listed on stderr, one line each, the rest indexed; the exit status is then 1.

`search` scores with CLCL as evaluation does (0.5 video-to-text + 0.5 text-to-video) and prints
JSON lines: for a sentence, the --top best indexed videos in rank order, one per line ({"rank",
"input", "score"}); with --texts, one line per indexed video with the file's --top best lines in
rank order. An index built with another checkpoint than the workdir's best is refused.
"""
import contextlib
import io
import json
import os
import sys

import numpy as np
from absl import app, flags

from sltjax import command_line, storage, translate
from sltjax.errors import UserError, exit_with_user_error
from sltjax.experiments.base import RETRIEVE

FLAGS = flags.FLAGS
INDEX_FILE = 'index.json'
FEATURES_DIR = 'features'
COMMANDS = ('index', 'search')


class Index:
  """An index directory: what it was built with and the features of its videos."""

  def __init__(self, directory: str, *, write: bool):
    """`write`: the index will be added to (checked up front in a bucket, before any video is
    embedded); else it is only searched."""
    self.directory = directory
    self.path = storage.join(directory, INDEX_FILE)
    self.meta = None
    storage.check_access(directory, write=write)
    if storage.path(self.path).is_file():
      self.meta = json.loads(storage.read_text(self.path))

  def check_model(self, workdir: str, step: int) -> None:
    """Refuses an index built with another workdir or checkpoint than (workdir, step)."""
    if self.meta is None:
      return
    built = (self.meta['workdir'], self.meta['step'])
    if built != (storage.absolute(workdir), step):
      raise UserError(f'{self.directory} was built with {built[0]} at checkpoint step {built[1]}, '
                      f'but {workdir}\'s best checkpoint is step {step}: its features would not '
                      'be comparable. Build a new index (index --index=NEW_DIR ...).')

  @property
  def videos(self) -> list[dict]:
    return self.meta['videos'] if self.meta else []

  def add(self, workdir: str, step: int, model: str, entries: list[tuple[dict, np.ndarray]]):
    """Writes the features of new videos, then the index listing them (atomically), so an
    interrupted run never lists a video without its features."""
    if self.meta is None:
      self.meta = {'workdir': storage.absolute(workdir), 'step': step, 'model': model,
                   'videos': []}
    for entry, features in entries:
      name = os.path.join(FEATURES_DIR, f'{len(self.meta["videos"]):07d}.npy')
      buffer = io.BytesIO()
      np.save(buffer, features.astype(np.float32))
      storage.write_bytes(storage.join(self.directory, name), buffer.getvalue())
      self.meta['videos'].append({**entry, 'features': name})
    storage.write_text(self.path, json.dumps(self.meta, ensure_ascii=False, indent=1))

  def features(self) -> list[np.ndarray]:
    return [np.load(io.BytesIO(storage.path(storage.join(self.directory, v['features'])).read_bytes()))
            for v in self.videos]


def load(workdir: str):
  """(experiment, params, rest, step) of a workdir whose model retrieves (its experiment is a
  RetrievalExperiment, the only kind that declares RETRIEVE)."""
  exp = translate.load_experiment(workdir, RETRIEVE, 'retrieving')
  params, rest, step = exp.eval_variables()
  return exp, params, rest, step


def build_index(exp, params, rest, step: int, index: Index, paths: list[str],
                frames_fps: float | None, batch_size: int) -> list[dict]:
  """Embeds the inputs not in `index` yet and adds them; returns one result per new input
  ({'input', 'frames'} or {'input', 'error'})."""
  index.check_model(exp.workdir, step)
  done = {v['input'] for v in index.videos}
  todo = [p for p in dict.fromkeys(os.path.abspath(p) for p in paths) if p not in done]

  def run_batch(inputs):
    embedded = exp.video_embeddings(params, rest, translate.clip_batch(exp, inputs, batch_size))
    entries = [({'input': item.path, 'frames': item.frames, 'fps': round(item.fps, 3)}, values)
               for item, values in zip(inputs, embedded)]
    index.add(exp.workdir, step, exp.describe(), entries)
    return [entry for entry, _ in entries]

  return translate.run_batched(exp, todo, frames_fps, batch_size, run_batch)


def search(exp, params, rest, step: int, index: Index, sentences: list[str], top: int):
  """For one sentence: [{'rank', 'input', 'score'}] over the indexed videos; for several (a
  --texts file): per video {'input', 'texts': [{'rank', 'text', 'score'}]}."""
  if not index.videos:
    raise UserError(f'{index.directory} holds no index: build one with the index command.')
  index.check_model(exp.workdir, step)
  v2t, t2v = exp.similarity(index.features(), exp.embed_texts(params, rest, sentences))
  fused = 0.5 * v2t + 0.5 * t2v  # [videos, sentences]
  if len(sentences) == 1:
    order = np.argsort(-fused[:, 0], kind='stable')[:top]
    return [{'rank': r + 1, 'input': index.videos[i]['input'], 'score': float(fused[i, 0])}
            for r, i in enumerate(order)]
  return [{'input': video['input'], 'texts': [
      {'rank': r + 1, 'text': sentences[j], 'score': float(fused[i, j])}
      for r, j in enumerate(np.argsort(-fused[i], kind='stable')[:top])]}
          for i, video in enumerate(index.videos)]


def read_texts(path: str) -> list[str]:
  if not storage.path(path).is_file():
    raise UserError(f'--texts={path}: no such file.')
  lines = [line.strip() for line in storage.read_text(path).splitlines() if line.strip()]
  if not lines:
    raise UserError(f'--texts={path} holds no sentences (one per line).')
  return lines


def main(argv):
  if len(argv) < 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f'Give a command: {" or ".join(COMMANDS)} (see --help).')
  command, args = argv[1], argv[2:]
  if not FLAGS.index:
    raise app.UsageError('--index=DIR is required.')
  if FLAGS.batch_size < 1 or FLAGS.top < 1:
    raise app.UsageError('--batch_size and --top must be at least 1.')
  command_line.start()
  results_out = sys.stdout  # JSON lines only; every message goes to stderr
  try:
    with contextlib.redirect_stdout(sys.stderr):
      exp, params, rest, step = load(FLAGS.workdir)
      index = Index(FLAGS.index, write=command == 'index')
      if command == 'index':
        return run_index(exp, params, rest, step, index, args)
      if FLAGS.texts and args:
        raise app.UsageError('Give either a sentence or --texts=FILE, not both.')
      if not FLAGS.texts and len(args) != 1:
        raise app.UsageError('Give one sentence (quoted) or --texts=FILE.')
      sentences = read_texts(FLAGS.texts) if FLAGS.texts else args
      lines = search(exp, params, rest, step, index, sentences, FLAGS.top)
  except UserError as e:
    exit_with_user_error(str(e))
  for line in lines:
    print(json.dumps(line, ensure_ascii=False), file=results_out)
  return 0


def run_index(exp, params, rest, step: int, index: Index, args: list[str]) -> int:
  """The index command; exit status 1 if any input failed."""
  if not args:
    raise app.UsageError('Give the videos or folders to index.')
  results = build_index(exp, params, rest, step, index, translate.expand_inputs(args),
                        FLAGS.frames_fps, FLAGS.batch_size)
  failed = [r for r in results if 'error' in r]
  for r in failed:
    print(f'error: {r["error"]}', file=sys.stderr)
  print(f'{FLAGS.index}: {len(results) - len(failed)} videos added, {len(failed)} failed, '
        f'{len(index.videos)} indexed (checkpoint step {step}).', file=sys.stderr)
  return 1 if failed else 0


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'A training workdir whose model retrieves (config.json, '
                      'best/).')
  flags.DEFINE_string('index', None, 'The index directory.')
  flags.DEFINE_integer('top', 10, 'search: results per query.')
  flags.DEFINE_string('texts', None, 'search: a file of sentences, one per line, ranked for '
                      'each indexed video.')
  flags.DEFINE_integer('batch_size', 8, 'index: videos embedded together.')
  flags.DEFINE_float('frames_fps', None, 'index: frame rate of frame-folder inputs (default: '
                     'the training fps).')
  flags.mark_flags_as_required(['workdir'])
  app.run(main)
