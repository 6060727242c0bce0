"""Each builder from a fixture laid out like its release: records, round trip, bad input."""
import json
import re
import shutil
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from sltjax.data import build, frames, synthetic_signs, video
from sltjax.data.clip_builder import BuildError, KeepEncoded, builder_class
from sltjax.data.video_files import read_video
from sltjax.errors import MissingInputError
from tests import release_fixtures as fx
from tests.conftest import REPO

# Mean absolute error of a JPEG (quality 90) frame against its source, in 0-255 levels.
JPEG_TOLERANCE = 3.0


def read_split(data_dir, name, split):
  """{id: record} of a built split, frames decoded."""
  source = tfds.data_source(name, data_dir=str(data_dir), decoders={'frames': KeepEncoded()})[split]
  out = {}
  for i in range(len(source)):
    record = dict(source[i])
    record['frames'] = [frames.decode_image_bytes(f) for f in record['frames']]
    for key in ('id', 'gloss', 'text', 'signer'):
      record[key] = record[key].decode()
    out[record['id']] = record
  return out


def test_phoenix_builds_with_real_frames_within_jpeg_tolerance(tmp_path):
  root, sources = fx.make_phoenix_release(tmp_path / 'release')
  summary = build.build('phoenix2014t', tmp_path / 'data', str(tmp_path / 'release'))
  assert {s: v['examples'] for s, v in summary['splits'].items()} == {'train': 3, 'dev': 1,
                                                                       'test': 1}
  assert summary['splits']['train']['frames'] == 9 and summary['skipped'] == []
  train = read_split(tmp_path / 'data', 'phoenix2014t', 'train')
  record = train['train_a']
  assert (record['gloss'], record['text'], record['signer']) == (
      'REGEN SCHNEE', 'regen und schnee', 'Signer01')
  assert record['fps'] == 25.0 and record['num_frames'] == 3
  for name, example in train.items():
    assert len(example['frames']) == len(sources[name])
    for got, want in zip(example['frames'], sources[name]):
      assert got.shape == (260, 210, 3)
      assert np.abs(got.astype(float) - want).mean() < JPEG_TOLERANCE
  metadata = tfds.builder('phoenix2014t', data_dir=str(tmp_path / 'data')).info.metadata
  assert metadata['index']['dev'] == {'id': ['dev_a'], 'signer': ['Signer03'], 'gloss': [
      'HEUTE NEBEL'], 'text': ['heute nebel'], 'num_frames': [3]}


def test_csl_daily_reads_its_pickle_and_resizes_to_a_short_side(tmp_path):
  fx.make_csl_release(tmp_path / 'release')
  summary = build.build('csl_daily', tmp_path / 'data', str(tmp_path / 'release'),
                        frame_size='64')
  assert summary['splits']['train']['examples'] == 2
  record = read_split(tmp_path / 'data', 'csl_daily', 'train')['S000000_P0000_T00']
  assert (record['gloss'], record['text'], record['fps']) == ('你 好', '你好吗', 30.0)
  assert record['frames'][0].shape == (64, 64, 3)
  source = frames.resize(fx.pattern_frame(128, 128, 0), frames.FrameSize(short_side=64))
  assert np.abs(record['frames'][0].astype(float) - source).mean() < JPEG_TOLERANCE


def test_csl_daily_refuses_a_pickle_that_loads_code(tmp_path):
  fx.make_csl_release(tmp_path / 'release')
  pkl = tmp_path / 'release' / 'sentence_label' / 'csl2020ct_v2.pkl'
  pkl.write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")  # os.system('echo pwned')
  with pytest.raises(ValueError, match=r'csl2020ct_v2.pkl: refusing to unpickle: it refers to '
                     r'os.system'):
    build.build('csl_daily', tmp_path / 'data', str(tmp_path / 'release'))


def test_how2sign_builds_real_clips_at_short_side_256(tmp_path):
  fx.make_how2sign_release(tmp_path / 'release')
  summary = build.build('how2sign', tmp_path / 'data', str(tmp_path / 'release'), num_workers=2)
  assert {s: v['examples'] for s, v in summary['splits'].items()} == {'train': 2, 'dev': 1,
                                                                       'test': 1}
  train = read_split(tmp_path / 'data', 'how2sign', 'train')
  clip = fx.how2sign_clip(tmp_path / 'release', 'train', 'vidA_0-1-rgb_front')
  source, fps = read_video(clip)
  record = train['vidA_0-1-rgb_front']
  assert record['text'] == 'we play football.' and record['gloss'] == ''
  assert record['num_frames'] == len(source) and record['fps'] == pytest.approx(fps)
  assert min(record['frames'][0].shape[:2]) == 256
  want = frames.resize(source[5], frames.FrameSize(short_side=256))
  assert np.abs(record['frames'][5].astype(float) - want).mean() < JPEG_TOLERANCE


def test_openasl_cuts_clips_from_full_videos(tmp_path):
  fx.make_openasl_release(tmp_path / 'release')
  build.build('openasl', tmp_path / 'data', str(tmp_path / 'release'), frame_size='96')
  train = read_split(tmp_path / 'data', 'openasl', 'train')
  full, fps = read_video(str(tmp_path / 'release' / 'videos' / 'yt_football.mp4'))
  first, second = train['clip0'], train['clip1']
  assert first['num_frames'] == second['num_frames'] == round(fps)  # one second each
  # clip1 starts one second in: its first frame is frame round(fps) of the full video.
  want = frames.resize(full[round(fps)], frames.FrameSize(short_side=96))
  assert np.abs(second['frames'][0].astype(float) - want).mean() < JPEG_TOLERANCE
  assert read_split(tmp_path / 'data', 'openasl', 'dev')['clip2']['text'] == 'on the phone.'


def test_synthetic_signs_is_deterministic_and_differs_by_seed(tmp_path):
  options = {'num_train': 6, 'num_dev': 2, 'num_test': 2}
  for name, seed in (('a', 0), ('b', 0), ('c', 1)):
    build.build('synthetic_signs', tmp_path / name, options={**options, 'seed': seed})
  a, b, c = (read_split(tmp_path / n, 'synthetic_signs', 'train') for n in 'abc')
  assert a.keys() == b.keys()
  for key in a:
    assert a[key]['gloss'] == b[key]['gloss']
    np.testing.assert_array_equal(np.stack(a[key]['frames']), np.stack(b[key]['frames']))
  assert [a[k]['text'] for k in sorted(a)] != [c[k]['text'] for k in sorted(c)]
  assert all(r['frames'][0].shape == (112, 112, 3) for r in a.values())


def test_synthetic_signs_labels_each_frame_as_the_renderer_signs_it():
  glosses, seed, signer = ['TOMORROW', 'COAST', 'WIND', 'STRONG'], 11, 2
  frames, signed = synthetic_signs.render_labelled(glosses, seed, signer, 32)
  assert synthetic_signs.frame_glosses(glosses, seed, signer) == signed
  assert len(signed) == len(frames) and signed[0] is None and signed[-1] is None
  source = synthetic_signs.RenderedSentence(tuple(glosses), seed, signer, 32)
  assert source.frame_glosses().split() == [g or '-' for g in signed]
  assert [g for g, previous in zip(signed, [None, *signed]) if g and g != previous] == glosses


# --- bad input ---------------------------------------------------------------------------------
def _break_phoenix(root):
  """Six problems, one of each kind a PHOENIX release can have; returns their expected texts."""
  train = fx.phoenix_frame_dir(root, 'train', 'train_b')
  with open(os.path.join(train, 'images0002.png'), 'wb') as f:
    f.write(b'not a png at all')
  png = os.path.join(fx.phoenix_frame_dir(root, 'train', 'train_c'), 'images0001.png')
  data = open(png, 'rb').read()
  with open(png, 'wb') as f:
    f.write(data[:len(data) // 2])  # truncated
  shutil.rmtree(fx.phoenix_frame_dir(root, 'dev', 'dev_a'))
  with open(fx.phoenix_csv(root, 'train'), 'ab') as f:
    f.write(b'bad_row|only|four|fields\n')
    f.write('train_a|x|-1|-1|Signer01|DUPLIKAT|doppelt\n'.encode())
    f.write(b'latin1|x|-1|-1|Signer01|GR\xdcN|gr\xfcn\n')
  return [
      r'\[train\] train_b \(.*train_b\): .*images0002.png: cannot decode the image',
      r'\[train\] train_c \(.*train_c\): .*images0001.png: cannot decode the image',
      r'\[dev\] dev_a \(.*dev.corpus.csv:2\): its frame folder .*dev_a is missing',
      r'\[train\] bad_row \(.*train.corpus.csv:5\): 4 fields where the header has 7',
      r'\[train\] train_a \(annotations\): duplicate id',
      r'\[train\] \(.*train.corpus.csv:7\): not UTF-8 \(byte 0xdc at column 27\)',
  ]


def test_phoenix_bad_input_fails_listing_every_problem_and_writes_nothing(tmp_path):
  root, _ = fx.make_phoenix_release(tmp_path / 'release')
  expected = _break_phoenix(root)
  with pytest.raises(BuildError) as error:
    build.build('phoenix2014t', tmp_path / 'data', str(tmp_path / 'release'))
  message = str(error.value)
  assert message.startswith('phoenix2014t: 6 problem(s) in the source data; nothing was written.')
  for pattern in expected:
    assert len(re.findall(pattern, message)) == 1, (pattern, message)
  assert '--on_error=skip' in message
  assert not tfds.builder('phoenix2014t', data_dir=str(tmp_path / 'data')).is_prepared()
  assert not os.path.exists(tmp_path / 'data' / 'phoenix2014t' / '1.0.0')


def test_phoenix_bad_input_skipped_builds_the_rest_and_lists_them(tmp_path):
  root, _ = fx.make_phoenix_release(tmp_path / 'release')
  _break_phoenix(root)
  summary = build.build('phoenix2014t', tmp_path / 'data', str(tmp_path / 'release'),
                        on_error='skip')
  assert {s: v['examples'] for s, v in summary['splits'].items()} == {'train': 1, 'test': 1}
  assert len(summary['skipped']) == 6
  assert list(read_split(tmp_path / 'data', 'phoenix2014t', 'train')) == ['train_a']
  with open(tmp_path / 'data' / 'phoenix2014t' / '1.0.0' / 'build_summary.json') as f:
    assert json.load(f)['skipped'] == summary['skipped']


def test_video_problems_are_listed_with_their_files(tmp_path):
  release = fx.make_openasl_release(tmp_path / 'release')
  (tmp_path / 'release' / 'videos' / 'yt_empty.mp4').write_bytes(b'')
  (tmp_path / 'release' / 'videos' / 'yt_garbage.mp4').write_bytes(os.urandom(5000))
  with open(os.path.join(release, 'openasl-v1.0.tsv'), 'a') as f:
    f.write('clip4\tyt_empty\t0\t1\tempty file.\ttrain\n')
    f.write('clip5\tyt_garbage\t0\t1\tnot a video.\ttrain\n')
    f.write('clip6\tyt_football\t0:10\t0:12\tafter the end.\ttrain\n')
    f.write('clip7\tyt_missing\t0\t1\tno video.\ttrain\n')
  with pytest.raises(BuildError) as error:
    build.build('openasl', tmp_path / 'data', str(tmp_path / 'release'))
  message = str(error.value)
  assert '4 problem(s)' in message
  assert re.search(r'clip4 .*yt_empty.mp4: not a readable video', message)
  assert re.search(r'clip5 .*yt_garbage.mp4: (not a readable video|no frames)',
                                 message)
  assert re.search(r'clip6 .*yt_football.mp4: clip start 10.000s lies outside the '
                                 r'video \(\d\.\d+s long\)', message)
  assert re.search(r'clip7 .*openasl-v1.0.tsv:9\): video yt_missing not found',
                                 message)
  summary = build.build('openasl', tmp_path / 'data', str(tmp_path / 'release'), on_error='skip')
  assert summary['splits']['train']['examples'] == 2 and len(summary['skipped']) == 4


def test_how2sign_leaves_out_sentences_past_the_end_of_their_video(tmp_path, capsys):
  release = fx.make_how2sign_release(tmp_path / 'release')
  fx.write_video(fx.how2sign_clip(release, 'train', 'vidB_1-1-rgb_front'), 2)  # 2 frames left
  fx.write_video(fx.how2sign_clip(release, 'val', 'vidC_0-1-rgb_front'), 0)  # starts past the end
  summary = build.build('how2sign', tmp_path / 'data', release)
  assert {s: v['examples'] for s, v in summary['splits'].items()} == {'train': 1, 'test': 1}
  assert summary['skipped'] == []
  assert summary['too_short']['ids'] == {'train': ['vidB_1-1-rgb_front'],
                                         'dev': ['vidC_0-1-rgb_front']}
  assert set(read_split(tmp_path / 'data', 'how2sign', 'train')) == {'vidA_0-1-rgb_front'}
  build.print_summary(summary)
  assert re.search(r'2 left out with fewer than 3 frames \(the subtitle runs past the end of its '
                   r'video.*\), train 1, dev 1\n', capsys.readouterr().out)
  # Off, the release's rows come back: the 2-frame clip is built, the empty one is a problem.
  with pytest.raises(BuildError, match=r'\[dev\] vidC_0-1-rgb_front .*has no video stream'):
    build.build('how2sign', tmp_path / 'all', release, options={'drop_short_clips': 'false'})
  summary = build.build('how2sign', tmp_path / 'all', release, on_error='skip',
                        options={'drop_short_clips': 'false'})
  assert summary['too_short'] == {} and len(summary['skipped']) == 1
  assert read_split(tmp_path / 'all', 'how2sign', 'train')['vidB_1-1-rgb_front']['num_frames'] == 2


def test_zero_length_and_garbage_mp4_clips_in_how2sign(tmp_path):
  release = fx.make_how2sign_release(tmp_path / 'release')
  with open(fx.how2sign_clip(release, 'val', 'vidC_0-1-rgb_front'), 'wb') as f:
    f.write(b'')
  with pytest.raises(BuildError, match=r'\[dev\] vidC_0-1-rgb_front .*not a readable video'):
    build.build('how2sign', tmp_path / 'data', str(tmp_path / 'release'))


def test_missing_manual_dir_prints_the_download_instructions(tmp_path):
  with pytest.raises(FileNotFoundError, match='phoenix-2014-T.v3.tar.gz'):
    build.build('phoenix2014t', tmp_path / 'data', str(tmp_path / 'nowhere'))
  command = [sys.executable, '-m', 'sltjax.data.build', '--dataset=phoenix2014t',
             f'--data_dir={tmp_path / "data"}', f'--manual_dir={tmp_path / "nowhere"}']
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
  assert result.returncode == 2, result.stderr  # a user error: the message alone
  assert '\nerror: ' in result.stderr and 'Traceback' not in result.stderr  # after TFDS's log line
  assert 'phoenix-2014-T.v3.tar.gz' in result.stderr


@pytest.mark.slow
def test_killed_build_never_reads_as_complete_and_resumes_from_its_cache(tmp_path):
  command = [sys.executable, '-m', 'sltjax.data.build', '--dataset=synthetic_signs',
             f'--data_dir={tmp_path}', '--num_workers=1', '--option=num_train=120',
             '--option=num_dev=2', '--option=num_test=2', '--option=size=64']
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  cache = tmp_path / 'synthetic_signs' / '.build-cache-1.1.0' / 'train'
  deadline = time.monotonic() + 120
  while time.monotonic() < deadline and len(list(cache.glob('*.npz'))) < 40:
    time.sleep(0.2)
  process.kill()
  process.wait()
  cached = len(list(cache.glob('*.npz')))
  assert 40 <= cached < 120
  assert not builder_class('synthetic_signs')(data_dir=str(tmp_path)).is_prepared()
  data = video.default_config()
  data.data_dir = str(tmp_path)
  with pytest.raises(MissingInputError, match='synthetic_signs is not built under data_dir='):
    video.open_split(data, 'train')
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
  summary = json.loads((tmp_path / 'synthetic_signs' / '1.1.0' / 'build_summary.json')
                       .read_text())
  assert summary['splits']['train']['examples'] == 120
  assert summary['clips_reused_from_cache'] >= cached - 1  # the last one may have been mid-write
  assert 'clips reused from an interrupted build' in result.stdout
  assert not (tmp_path / 'synthetic_signs' / '.build-cache-1.1.0').exists()
