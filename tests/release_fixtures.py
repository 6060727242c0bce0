"""Tiny copies of each dataset release, laid out exactly as the official downloads.

Frames are the real PHOENIX PNGs and real mp4s of ../shared/data/videos when present, else
generated stand-ins of the same format, so the tests also run on a fresh clone.
"""
import os
import pickle
import shutil

import av
import numpy as np
from PIL import Image

from tests.conftest import SHARED_DATA

REAL_PHOENIX_FRAMES = SHARED_DATA / 'videos' / 'phoenix_frames'
REAL_VIDEOS = SHARED_DATA / 'videos'


def pattern_frame(height: int, width: int, seed: int) -> np.ndarray:
  """A smooth, textured [height, width, 3] uint8 image (JPEG-friendly like a real frame)."""
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  phase = seed * 0.7
  channels = [127 + 100 * np.sin(x / (9 + c * 3) + phase) * np.cos(y / (13 + c) - phase)
              for c in range(3)]
  return np.stack(channels, -1).astype(np.uint8)


def write_image(path, frame: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(frame).save(path)


def write_video(path, num_frames: int, height: int = 96, width: int = 128, fps: int = 25) -> None:
  """An H.264 mp4 of moving patterns (num_frames 0: a valid mp4 with no frame in it)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with av.open(str(path), 'w') as container:
    stream = container.add_stream('libx264', rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
    container.start_encoding()  # writes the header even when no frame follows
    for i in range(num_frames):
      frame = av.VideoFrame.from_ndarray(pattern_frame(height, width, i), format='rgb24')
      container.mux(stream.encode(frame))
    container.mux(stream.encode())


def real_or_generated_video(path, real_name: str, num_frames: int) -> None:
  """Copies ../shared/data/videos/<real_name> to path if present, else writes a stand-in."""
  if (REAL_VIDEOS / real_name).exists():
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shutil.copy(REAL_VIDEOS / real_name, path)
  else:
    write_video(path, num_frames)


# --- PHOENIX-2014T ----------------------------------------------------------------------------
PHOENIX_HEADER = 'name|video|start|end|speaker|orth|translation'
PHOENIX_ROWS = {
    'train': [('train_a', 'Signer01', 'REGEN SCHNEE', 'regen und schnee', 3),
              ('train_b', 'Signer02', 'MORGEN SONNE', 'morgen scheint die sonne', 4),
              ('train_c', 'Signer01', 'NORD WIND', 'wind im norden', 2)],
    'dev': [('dev_a', 'Signer03', 'HEUTE NEBEL', 'heute nebel', 3)],
    'test': [('test_a', 'Signer04', 'ABEND KALT', 'am abend kalt', 2)],
}


def phoenix_frame_dir(root, split, name):
  return os.path.join(root, 'features', 'fullFrame-210x260px', split, name)


def phoenix_csv(root, split):
  return os.path.join(root, 'annotations', 'manual', f'PHOENIX-2014-T.{split}.corpus.csv')


def make_phoenix_release(base) -> tuple[str, dict[str, list[np.ndarray]]]:
  """-> (PHOENIX-2014-T folder, {name: source frames}); train_a holds the two real frames."""
  root = os.path.join(base, 'PHOENIX-2014-T-release-v3', 'PHOENIX-2014-T')
  sources = {}
  for split, rows in PHOENIX_ROWS.items():
    lines = [PHOENIX_HEADER]
    for name, signer, gloss, text, num_frames in rows:
      lines.append(f'{name}|{name}/1/*.png|-1|-1|{signer}|{gloss}|{text}')
      folder = phoenix_frame_dir(root, split, name)
      sources[name] = []
      for i in range(num_frames):
        path = os.path.join(folder, f'images{i + 1:04d}.png')
        real = REAL_PHOENIX_FRAMES / f'images{i + 1:04d}.png'
        if name == 'train_a' and real.exists():
          os.makedirs(folder, exist_ok=True)
          shutil.copy(real, path)
          frame = np.asarray(Image.open(real).convert('RGB'))
        else:
          frame = pattern_frame(260, 210, hash((name, i)) % 100)
          write_image(path, frame)
        sources[name].append(frame)
    os.makedirs(os.path.dirname(phoenix_csv(root, split)), exist_ok=True)
    with open(phoenix_csv(root, split), 'w', encoding='utf-8') as f:
      f.write('\n'.join(lines) + '\n')
  return root, sources


# --- CSL-Daily -------------------------------------------------------------------------------
CSL_EXAMPLES = [('S000000_P0000_T00', 'train', ['你', '好'], ['你', '好', '吗'], 3),
                ('S000001_P0001_T00', 'train', ['谢谢'], ['谢', '谢'], 2),
                ('S000002_P0002_T00', 'dev', ['再见'], ['再', '见'], 2),
                ('S000003_P0003_T00', 'test', ['好'], ['好'], 2)]


def make_csl_release(base) -> str:
  info = []
  for name, _, glosses, chars, num_frames in CSL_EXAMPLES:
    for i in range(num_frames):
      write_image(os.path.join(base, 'sentence', 'frames_512x512', name, f'{i:06d}.jpg'),
                  pattern_frame(128, 128, i))
    info.append({'name': name, 'signer': 3, 'length': num_frames, 'label_gloss': glosses,
                 'label_char': chars, 'label_word': [''.join(chars)]})
  os.makedirs(os.path.join(base, 'sentence_label'))
  with open(os.path.join(base, 'sentence_label', 'csl2020ct_v2.pkl'), 'wb') as f:
    pickle.dump({'info': info, 'gloss_map': sorted({g for e in info for g in e['label_gloss']})}, f)
  with open(os.path.join(base, 'sentence_label', 'split_1.txt'), 'w', encoding='utf-8') as f:
    f.write('name|split\n' + ''.join(f'{e[0]}|{e[1]}\n' for e in CSL_EXAMPLES))
  return base


# --- How2Sign --------------------------------------------------------------------------------
HOW2SIGN_HEADER = ('VIDEO_ID\tVIDEO_NAME\tSENTENCE_ID\tSENTENCE_NAME\tSTART_REALIGNED\t'
                   'END_REALIGNED\tSENTENCE')


def how2sign_clip(base, release_split, name):
  return os.path.join(base, f'{release_split}_rgb_front_clips', 'raw_videos', f'{name}.mp4')


def make_how2sign_release(base) -> str:
  examples = {'train': [('vidA_0-1-rgb_front', 'FOOTBALL.mp4', 'we play football.'),
                        ('vidB_1-1-rgb_front', 'test_video.mp4', 'hello, how are you?')],
              'val': [('vidC_0-1-rgb_front', None, 'see you tomorrow.')],
              'test': [('vidD_0-1-rgb_front', None, 'thank you.')]}
  for release_split, rows in examples.items():
    lines = [HOW2SIGN_HEADER]
    for i, (name, real, sentence) in enumerate(rows):
      lines.append(f'vid{i}\tvid{i}-rgb_front\t{name[:-10]}\t{name}\t{i}.5\t{i + 2}.25\t{sentence}')
      path = how2sign_clip(base, release_split, name)
      if real:
        real_or_generated_video(path, real, 20)
      else:
        write_video(path, 12)
    with open(os.path.join(base, f'how2sign_realigned_{release_split}.csv'), 'w') as f:
      f.write('\n'.join(lines) + '\n')
  return base


# --- OpenASL ---------------------------------------------------------------------------------
OPENASL_HEADER = 'vid\tyid\tstart\tend\traw-text\tsplit'


def make_openasl_release(base) -> str:
  """Two full videos; clips cut from their first and second seconds."""
  real_or_generated_video(os.path.join(base, 'videos', 'yt_football.mp4'), 'FOOTBALL.mp4', 60)
  real_or_generated_video(os.path.join(base, 'videos', 'yt_phone.mp4'), 'test_video.mp4', 55)
  rows = [('clip0', 'yt_football', '00:00:00.000', '00:00:01.000', 'first second.', 'train'),
          ('clip1', 'yt_football', '0:01.0', '0:02.0', 'second second.', 'train'),
          ('clip2', 'yt_phone', '0.2', '1.2', 'on the phone.', 'valid'),
          ('clip3', 'yt_phone', '1.0', '1.5', 'short.', 'test')]
  with open(os.path.join(base, 'openasl-v1.0.tsv'), 'w') as f:
    f.write(OPENASL_HEADER + '\n' + ''.join('\t'.join(r) + '\n' for r in rows))
  return base
