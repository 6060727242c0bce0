"""RWTH-PHOENIX-Weather 2014T: German Sign Language weather forecasts, glosses + German text.

Reads the official release: `annotations/manual/PHOENIX-2014-T.{train,dev,test}.corpus.csv`
('|'-separated `name|video|start|end|speaker|orth|translation`) and the 210x260 PNG frames under
`features/fullFrame-210x260px/{split}/<name>/images0001.png, ...` (25 fps).
"""
import glob
import os

from sltjax.data.annotations import read_table
from sltjax.data.clip_builder import SignVideoBuilder
from sltjax.data.clips import ClipSpec, FrameFolder, Problem

FPS = 25.0
_SPLITS = ('train', 'dev', 'test')
_RELEASE = os.path.join('PHOENIX-2014-T-release-v3', 'PHOENIX-2014-T')


def release_root(manual_dir: str) -> str:
  """The PHOENIX-2014-T folder, whether manual_dir is it or one of its parents."""
  for candidate in (manual_dir, os.path.join(manual_dir, 'PHOENIX-2014-T'),
                    os.path.join(manual_dir, _RELEASE)):
    if os.path.isdir(os.path.join(candidate, 'annotations', 'manual')):
      return candidate
  raise FileNotFoundError(f'{manual_dir}: no annotations/manual/ folder here nor under '
                          f'PHOENIX-2014-T/ or {_RELEASE}/.\n{Builder.MANUAL_DOWNLOAD_INSTRUCTIONS}')


class Builder(SignVideoBuilder):
  """PHOENIX-2014T; frames kept at their 260x210 (height x width) size by default."""
  DEFAULT_FRAME_SIZE = '260x210'
  DESCRIPTION = __doc__
  HOMEPAGE = 'https://www-i6.informatik.rwth-aachen.de/~koller/RWTH-PHOENIX-2014-T/'
  CITATION = ('Camgoz, Hadfield, Koller, Ney, Bowden. Neural Sign Language Translation. '
              'CVPR 2018.')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download phoenix-2014-T.v3.tar.gz from
https://www-i6.informatik.rwth-aachen.de/ftp/pub/rwth-phoenix/2016/phoenix-2014-T.v3.tar.gz,
extract it, and pass the extracted folder (PHOENIX-2014-T-release-v3, or the PHOENIX-2014-T
folder inside it) as --manual_dir. It must hold
  annotations/manual/PHOENIX-2014-T.{train,dev,test}.corpus.csv
  features/fullFrame-210x260px/{train,dev,test}/<name>/images0001.png ...
"""

  def list_clips(self, manual_dir):
    root = release_root(manual_dir)
    splits, problems = {}, []
    for split in _SPLITS:
      csv = os.path.join(root, 'annotations', 'manual', f'PHOENIX-2014-T.{split}.corpus.csv')
      rows, row_problems = read_table(csv, '|', split, ('name', 'speaker', 'orth', 'translation'))
      problems += row_problems
      splits[split] = []
      for number, row in rows:
        folder = os.path.join(root, 'features', 'fullFrame-210x260px', split, row['name'])
        paths = sorted(glob.glob(os.path.join(glob.escape(folder), '*.png')))
        if not paths:
          what = 'has no PNG frames' if os.path.isdir(folder) else 'is missing'
          problems.append(Problem(split, row['name'], f'{csv}:{number}',
                                  f'its frame folder {folder} {what}.'))
          continue
        splits[split].append(ClipSpec(
            id=row['name'], source=FrameFolder(tuple(paths), FPS), gloss=row['orth'].strip(),
            text=row['translation'].strip(), signer=row['speaker']))
    return splits, problems
