"""How2Sign: American Sign Language instructional videos, English sentences (no glosses).

Reads the sentence-level release:
  how2sign_realigned_{train,val,test}.csv       (tab-separated, with the columns SENTENCE_NAME,
                                                 START_REALIGNED, END_REALIGNED, SENTENCE)
  {train,val,test}_rgb_front_clips/raw_videos/<SENTENCE_NAME>.mp4   (one clip per sentence)
The clips are already cut to the re-aligned times; START/END are checked for sanity only. The
`val` split is called `dev` here.

Sentences whose subtitle runs past the end of their video are left out (option
`drop_short_clips`, default true; counted in the build summary): CiCo's release cuts each
sentence from its video and skips it when at most 2 frames of the video fall in it (CiCo
data_preparation/reaglined_and_crop.py), and C2RL uses CiCo's list (31,085 / 1,739 / 2,348 of the
release's 31,128 / 1,741 / 2,357; the 9 test sentences it leaves out are the last sentences of
two videos, 8 of them in a row). Here a sentence clip with fewer than 3 frames, or a readable
file with none, is that case. `--option=drop_short_clips=false` keeps every clip with a frame.
"""
import os

import tensorflow_datasets as tfds

from sltjax.data.annotations import read_table
from sltjax.data.clip_builder import SignVideoBuilder
from sltjax.data.clips import ClipSpec, Problem, VideoFile

_SPLITS = {'train': 'train', 'dev': 'val', 'test': 'test'}


class Builder(SignVideoBuilder):
  """How2Sign sentence clips; frames brought to a short side of 256 by default."""
  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.1.0': 'Sentences whose subtitle runs past their video are left out.'}
  DESCRIPTION = __doc__
  SHORT_CLIPS = (3, 'the subtitle runs past the end of its video; CiCo and C2RL leave these out')
  HOMEPAGE = 'https://how2sign.github.io/'
  CITATION = ('Duarte et al. How2Sign: A Large-scale Multimodal Dataset for Continuous American '
              'Sign Language. CVPR 2021.')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
From https://how2sign.github.io/ download, for train, val and test, the "Green Screen RGB clips
(frontal view)" and the "English Translation (re-aligned)" CSVs; extract them into one folder and
pass it as --manual_dir:
  how2sign_realigned_{train,val,test}.csv
  {train,val,test}_rgb_front_clips/raw_videos/<SENTENCE_NAME>.mp4
"""

  def list_clips(self, manual_dir):
    splits, problems = {}, []
    for split, release_split in _SPLITS.items():
      csv = os.path.join(manual_dir, f'how2sign_realigned_{release_split}.csv')
      rows, row_problems = read_table(
          csv, '\t', split, ('SENTENCE_NAME', 'START_REALIGNED', 'END_REALIGNED', 'SENTENCE'))
      problems += row_problems
      splits[split] = []
      for number, row in rows:
        name, where = row['SENTENCE_NAME'], f'{csv}:{number}'
        try:
          start, end = float(row['START_REALIGNED']), float(row['END_REALIGNED'])
        except ValueError:
          problems.append(Problem(split, name, where, 'START/END_REALIGNED are not numbers.'))
          continue
        if end <= start:
          problems.append(Problem(split, name, where, f'end {end} is not after start {start}.'))
          continue
        path = os.path.join(manual_dir, f'{release_split}_rgb_front_clips', 'raw_videos',
                            f'{name}.mp4')
        if not os.path.isfile(path):
          problems.append(Problem(split, name, where, f'its clip {path} is missing.'))
          continue
        splits[split].append(ClipSpec(id=name, source=VideoFile(path),
                                      text=row['SENTENCE'].strip()))
    return splits, problems
