"""OpenASL: American Sign Language news and VLOG videos, English sentences (no glosses).

Reads the release TSV `openasl-v1.0.tsv` (tab-separated, with the columns vid, yid, start, end,
raw-text and split; times as seconds or [H:]MM:SS.fff; split train, valid or test, `valid`
called `dev` here) and the full YouTube videos you downloaded as `videos/<yid>.{mp4,webm,mkv}`.
Each sentence's clip is cut from its video at build time, from start to end.
"""
import os

from sltjax.data.annotations import read_table
from sltjax.data.clip_builder import SignVideoBuilder
from sltjax.data.clips import ClipSpec, Problem, VideoFile

_SPLITS = {'train': 'train', 'valid': 'dev', 'test': 'test'}
_EXTENSIONS = ('.mp4', '.webm', '.mkv')


def parse_time(text: str) -> float:
  """Seconds from '12.5', '01:02.5' or '1:01:02.5'."""
  seconds = 0.0
  for part in text.strip().split(':'):
    seconds = seconds * 60 + float(part)
  return seconds


class Builder(SignVideoBuilder):
  """OpenASL clips cut from full videos; frames brought to a short side of 256 by default."""
  DESCRIPTION = __doc__
  HOMEPAGE = 'https://github.com/chevalierNoir/OpenASL'
  CITATION = ('Shi, Brentari, Shakhnarovich, Livescu. Open-Domain Sign Language Translation '
              'Learned from Online Video. EMNLP 2022.')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
From https://github.com/chevalierNoir/OpenASL take data/openasl-v1.0.tsv and download every
video it lists (column yid) with the release's download script; put them in one folder and pass
it as --manual_dir:
  openasl-v1.0.tsv
  videos/<yid>.mp4   (or .webm / .mkv)
"""

  def list_clips(self, manual_dir):
    tsv = os.path.join(manual_dir, 'openasl-v1.0.tsv')
    rows, problems = read_table(tsv, '\t', 'all', ('vid', 'yid', 'start', 'end', 'raw-text',
                                                    'split'))
    splits = {split: [] for split in _SPLITS.values()}
    for number, row in rows:
      where, split = f'{tsv}:{number}', _SPLITS.get(row['split'].strip())
      if split is None:
        problems.append(Problem(row['split'], row['vid'], where,
                                f'unknown split (expected {tuple(_SPLITS)}).'))
        continue
      try:
        start, end = parse_time(row['start']), parse_time(row['end'])
      except ValueError:
        problems.append(Problem(split, row['vid'], where,
                                f'start {row["start"]!r} / end {row["end"]!r} are not times.'))
        continue
      if not 0 <= start < end:
        problems.append(Problem(split, row['vid'], where,
                                f'the clip [{start}, {end}] s is empty or negative.'))
        continue
      paths = [os.path.join(manual_dir, 'videos', row['yid'] + ext) for ext in _EXTENSIONS]
      path = next((p for p in paths if os.path.isfile(p)), None)
      if path is None:
        problems.append(Problem(split, row['vid'], where,
                                f'video {row["yid"]} not found as {paths[0]} (or .webm/.mkv).'))
        continue
      splits[split].append(ClipSpec(id=row['vid'], source=VideoFile(path, start, end),
                                    text=row['raw-text'].strip()))
    return splits, problems
