"""CSL-Daily: Chinese Sign Language about daily life, glosses + Chinese text.

Reads the release as distributed by its authors (USTC):
  sentence/frames_512x512/<name>/000000.jpg ...   (one JPEG per frame, 30 fps)
  sentence_label/split_1.txt                       ('|'-separated, header `name|split`;
                                                    split is train, dev or test)
  sentence_label/csl2020ct_v2.pkl                  (a pickled dict whose 'info' is a list of
                                                    {'name', 'signer', 'label_gloss': [glosses],
                                                     'label_char': [characters],
                                                     'label_word': [words], ...})
The pickle is read with an unpickler that accepts only plain containers, strings and numbers.
Text is the characters joined without spaces; gloss is the glosses joined by spaces.
"""
import glob
import os

from sltjax.data.annotations import load_plain_pickle, read_table
from sltjax.data.clip_builder import SignVideoBuilder
from sltjax.data.clips import ClipSpec, FrameFolder, Problem

FPS = 30.0
_SPLITS = ('train', 'dev', 'test')


def _is_annotation(entry) -> bool:
  def strings(value):
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
  return (isinstance(entry, dict) and isinstance(entry.get('name'), str)
          and strings(entry.get('label_gloss')) and strings(entry.get('label_char')))


class Builder(SignVideoBuilder):
  """CSL-Daily; frames brought to a short side of 256 by default."""
  DESCRIPTION = __doc__
  HOMEPAGE = 'http://home.ustc.edu.cn/~zhouh156/dataset/csl-daily/'
  CITATION = ('Zhou, Zhou, Zhou, Li. Improving Sign Language Translation with Monolingual Data by '
              'Sign Back-Translation. CVPR 2021.')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Request CSL-Daily from its authors (http://home.ustc.edu.cn/~zhouh156/dataset/csl-daily/),
extract it, and pass the folder holding sentence/ and sentence_label/ as --manual_dir:
  sentence/frames_512x512/<name>/*.jpg
  sentence_label/split_1.txt
  sentence_label/csl2020ct_v2.pkl
"""

  def list_clips(self, manual_dir):
    labels = os.path.join(manual_dir, 'sentence_label')
    pkl = os.path.join(labels, 'csl2020ct_v2.pkl')
    split_file = os.path.join(labels, 'split_1.txt')
    if not os.path.isfile(pkl):
      return {}, [Problem('all', '', pkl, 'annotation pickle not found.')]
    annotations = load_plain_pickle(pkl)
    if not isinstance(annotations, dict) or not isinstance(annotations.get('info'), list):
      return {}, [Problem('all', '', pkl, "expected a dict with an 'info' list of examples.")]
    info, problems = {}, []
    for i, entry in enumerate(annotations['info']):
      if _is_annotation(entry):
        info[entry['name']] = entry
      else:
        problems.append(Problem('all', '', f'{pkl}[info][{i}]',
                                "needs 'name' and lists of strings 'label_gloss', 'label_char'."))
    rows, row_problems = read_table(split_file, '|', 'all', ('name', 'split'))
    problems += row_problems
    splits = {split: [] for split in _SPLITS}
    for number, row in rows:
      name, split = row['name'], row['split'].strip()
      where = f'{split_file}:{number}'
      if split not in splits:
        problems.append(Problem(split, name, where, f'unknown split (expected {_SPLITS}).'))
        continue
      if name not in info:
        problems.append(Problem(split, name, where, f'no annotation for it in {pkl}.'))
        continue
      folder = os.path.join(manual_dir, 'sentence', 'frames_512x512', name)
      paths = sorted(glob.glob(os.path.join(glob.escape(folder), '*.jpg')))
      if not paths:
        what = 'has no JPEG frames' if os.path.isdir(folder) else 'is missing'
        problems.append(Problem(split, name, where, f'its frame folder {folder} {what}.'))
        continue
      entry = info[name]
      splits[split].append(ClipSpec(
          id=name, source=FrameFolder(tuple(paths), FPS), gloss=' '.join(entry['label_gloss']),
          text=''.join(entry['label_char']), signer=str(entry.get('signer', ''))))
    return splits, problems
