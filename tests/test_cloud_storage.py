"""Runs whose data, workdir and checkpoints are in a Cloud Storage bucket, against a local GCS
emulator (conftest.gcs_emulator); and the path layer (sltjax/storage.py) on both kinds of path."""
import contextlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from sltjax import storage
from sltjax.checkpointing import read_best_variables
from tests.conftest import REPO, read_metrics, run_main, tiny_config
from tests.test_main import free_port, wait_for


def assert_same_predictions(workdir, reference, steps) -> None:
  for step in steps:
    name = f'predictions/dev_step{step}.txt'
    assert storage.read_text(storage.join(workdir, name)) == (reference / name).read_text()


def assert_same_run(workdir, reference, steps) -> None:
  """`workdir` (gs://) logged, predicted and kept the model the local `reference` did."""
  assert read_metrics(workdir) == read_metrics(reference)
  assert_same_predictions(workdir, reference, steps)
  expected, found = read_best_variables(str(reference)), read_best_variables(workdir)
  assert found.keys() == expected.keys()
  for key, value in expected.items():
    np.testing.assert_array_equal(found[key], value, err_msg=str(key))


@pytest.mark.slow
@pytest.mark.xdist_group('g2t_reference')
def test_gloss2text_in_a_bucket_is_killed_resumes_bitwise_and_evaluates(bucket, toy_corpus,
                                                                        g2t_reference):
  config, reference = g2t_reference
  config = config.copy_and_resolve_references()
  data, workdir = f'{bucket}/corpus', f'{bucket}/g2t'
  storage.copy_files(toy_corpus, data)
  config.data.path = data
  process = run_main(config, workdir, background=True)
  wait_for(lambda: storage.path(f'{workdir}/checkpoints/10/commit_success.txt').exists(), process)
  process.send_signal(signal.SIGKILL)
  process.wait()
  result = run_main(config, workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Resumed from step 10 ' in result.stdout + result.stderr
  assert_same_run(workdir, reference, steps=(20, 40, 60))
  assert json.loads(storage.read_text(f'{workdir}/config.json'))['data']['path'] == data
  assert sorted(p.name for p in storage.path(f'{workdir}/checkpoints').iterdir()) == ['50', '60']

  evaluation = run_main(config, workdir, '--mode=eval')
  assert evaluation.returncode == 0, evaluation.stderr[-3000:]
  scores = json.loads(evaluation.stdout.strip().splitlines()[-1])
  best = max((m for m in read_metrics(reference) if m['split'] == 'dev'),
             key=lambda m: m['bleu4'])
  assert scores['bleu4'] == pytest.approx(best['bleu4'])
  predictions = storage.read_text(f'{workdir}/predictions/dev_best_step{best["step"]}.txt')
  assert predictions == (reference / f'predictions/dev_step{best["step"]}.txt').read_text()

  # A damaged newest checkpoint in the bucket is moved aside whole and the run redone from the
  # one before.
  state = f'{workdir}/checkpoints/60/state'
  for name in storage.files_under(state):
    if '/d/' in name:  # the arrays' data files
      storage.write_bytes(f'{state}/{name}', b'truncated')
  result = run_main(config, workdir, '--config.total_steps=70')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'checkpoint of step 60 is unreadable' in result.stderr
  assert 'Resumed from step 50 ' in result.stdout + result.stderr
  assert storage.path(f'{workdir}/damaged_checkpoints/60/state').is_dir()


SMALL_BUILD = {'num_train': 24, 'num_dev': 6, 'num_test': 4, 'size': 64}  # conftest's local build


@pytest.mark.slow
def test_video_dataset_built_into_a_bucket_trains_mmtlb_and_translates(bucket, tmp_path,
                                                                       synthetic_signs_dir):
  from configs.mmtlb import get_config  # pylint: disable=import-outside-toplevel
  from sltjax.data import build, video  # pylint: disable=import-outside-toplevel
  from tests.conftest import shrink_video_config  # pylint: disable=import-outside-toplevel
  data_dir, staging = f'{bucket}/tensorflow_datasets', tmp_path / 'staging'
  summary = build.build('synthetic_signs', data_dir, options=SMALL_BUILD, staging_dir=staging)
  assert summary['path'] == f'{data_dir}/synthetic_signs/1.1.0'
  assert storage.path(f'{summary["path"]}/dataset_info.json').is_file()
  assert storage.files_under(staging) == []  # the local copy is gone once uploaded
  assert build.build('synthetic_signs', data_dir, options=SMALL_BUILD,
                     staging_dir=staging) == summary  # built once: read back, not rebuilt
  # The records read from the bucket are those of the same build on local disk.
  config = shrink_video_config(get_config('runlocal'), data_dir, 32)
  local_config = shrink_video_config(get_config('runlocal'), synthetic_signs_dir, 32)
  for split in ('train', 'dev'):
    remote, local = (video.open_split(config.data, split),
                     video.open_split(local_config.data, split))
    assert remote.ids == local.ids and remote.texts == local.texts, split
    assert remote.glosses == local.glosses, split
    for i in range(len(local)):
      assert list(remote.source[i]['frames']) == list(local.source[i]['frames'])

  workdir = f'{bucket}/mmtlb'
  result = run_main(config, workdir, base_argument='configs/mmtlb.py:runlocal')
  assert result.returncode == 0, result.stderr[-3000:]
  assert {'glosses.json', 'tokenizer', 'config.json', 'metrics.jsonl', 'best'} <= set(
      p.name for p in storage.path(workdir).iterdir())

  frames = tmp_path / 'frames'  # a test video of the dataset, as a folder of JPEG frames
  frames.mkdir()
  for i, jpeg in enumerate(local.source[0]['frames']):
    (frames / f'{i:04d}.jpg').write_bytes(jpeg)
  output = f'{bucket}/translations.jsonl'
  translation = subprocess.run(
      [sys.executable, '-m', 'sltjax.translate', f'--workdir={workdir}', f'--output={output}',
       str(frames)], cwd=REPO, capture_output=True, text=True, timeout=600,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert translation.returncode == 0, translation.stderr[-3000:]
  [line] = [json.loads(l) for l in storage.read_text(output).splitlines()]
  assert line['input'] == str(frames) and isinstance(line['translation'], str)
  assert f'{frames}: {line["translation"]}' in translation.stdout


@pytest.mark.slow
def test_two_processes_share_a_bucket_workdir_like_one_process(bucket, toy_corpus, tmp_path):
  config = tiny_config(toy_corpus, total_steps=20, eval_every_steps=20, checkpoint_every_steps=20)
  single = tmp_path / 'single'
  assert run_main(config, single, devices=2).returncode == 0
  config.data.path = f'{bucket}/corpus'
  storage.copy_files(toy_corpus, config.data.path)
  workdir, port = f'{bucket}/multi', free_port()
  workers = [run_main(config, workdir, f'--coordinator_address=localhost:{port}',
                      '--num_processes=2', f'--process_id={i}', background=True)
             for i in range(2)]
  outputs = [w.communicate(timeout=600)[0] for w in workers]
  assert [w.returncode for w in workers] == [0, 0], outputs
  assert 'over 2 devices in 2 processes' in outputs[0]
  losses = lambda run: [m['loss'] for m in read_metrics(run) if m['split'] == 'train']
  np.testing.assert_allclose(losses(workdir), losses(single), rtol=2e-5)  # as test_main's
  dev = [m for m in read_metrics(workdir) if m['split'] == 'dev']
  assert len(dev) == 1  # written once, by process 0
  assert dev[0]['bleu4'] == pytest.approx(
      next(m for m in read_metrics(single) if m['split'] == 'dev')['bleu4'], abs=1e-6)
  assert_same_predictions(workdir, single, steps=(20,))


def test_a_missing_bucket_or_a_bad_name_fails_before_work_naming_the_path(bucket, toy_corpus):
  missing = f'gs://sltjax-missing-{bucket[-12:]}'
  result = run_main(tiny_config(toy_corpus), f'{missing}/run')
  assert result.returncode == 2, result.stderr[-2000:]
  assert (f'error: {missing}/run: the bucket {missing} does not exist. Create it (gcloud storage '
          f'buckets create {missing}) or fix the path.') in result.stderr
  assert not storage.path(missing).exists()  # never created by the run
  result = run_main(tiny_config(f'{missing}/corpus'), f'{bucket}/run')
  assert result.returncode == 2 and f'error: {missing}/corpus: the bucket' in result.stderr
  assert not storage.path(f'{bucket}/run').exists()  # refused before the workdir was made
  result = run_main(tiny_config(toy_corpus), 'gs://Bad_Bucket/run')
  assert result.returncode == 2
  assert "gs://Bad_Bucket/run: 'Bad_Bucket' is not a valid bucket name" in result.stderr


class RefusingStorage(http.server.BaseHTTPRequestHandler):
  """A Cloud Storage endpoint that refuses as Google's does: every request without valid
  credentials (401), or, with `writes_only`, uploads by an account without write access (403)
  while listings succeed."""
  writes_only = False

  def respond(self, code: int, body: dict) -> None:
    data = json.dumps(body).encode()
    self.send_response(code)
    self.send_header('Content-Type', 'application/json')
    self.send_header('Content-Length', str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def refuse(self):
    route = self.path.split('?')[0]
    if self.writes_only and self.command == 'GET':  # an empty bucket
      if route.endswith('/o'):
        self.respond(200, {'kind': 'storage#objects', 'items': []})
      elif '/o/' in route:
        self.respond(404, {'error': {'code': 404, 'message': 'No such object.'}})
      else:
        self.respond(200, {'kind': 'storage#bucket', 'name': 'refusing-bucket'})
      return
    self.rfile.read(int(self.headers.get('Content-Length') or 0))
    code, who, permission = ((403, 'runner@project.iam.gserviceaccount.com', 'objects.create')
                             if self.writes_only else (401, 'Anonymous caller', 'objects.list'))
    message = (f'{who} does not have storage.{permission} access to the Google Cloud Storage '
               f"bucket. Permission 'storage.{permission}' denied on resource (or it may not "
               'exist).')
    self.respond(code, {'error': {'code': code, 'message': message, 'errors': [
        {'message': message, 'domain': 'global', 'reason': 'forbidden'}]}})

  do_GET = do_POST = do_PUT = do_DELETE = refuse

  def log_message(self, *args):  # pylint: disable=arguments-differ
    pass


@contextlib.contextmanager
def refusing_storage(writes_only: bool):
  """A RefusingStorage server on localhost for the duration; yields its endpoint."""
  handler = type('Handler', (RefusingStorage,), {'writes_only': writes_only})
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    yield f'http://127.0.0.1:{server.server_address[1]}'
  finally:
    server.shutdown()


@pytest.mark.parametrize('writes_only', [False, True], ids=['no_credentials', 'read_only'])
def test_missing_credentials_or_permission_fail_before_work_naming_the_path(
    writes_only, toy_corpus):
  with refusing_storage(writes_only) as endpoint:
    result = run_main(tiny_config(toy_corpus), 'gs://refusing-bucket/run',
                      env={**storage.emulator_environment(endpoint)})
  assert result.returncode == 2, result.stderr[-2000:]
  if writes_only:
    assert ('error: gs://refusing-bucket/run: permission denied to write it (Forbidden: '
            in result.stderr)
    assert 'Grant this account Storage Object Admin on gs://refusing-bucket.' in result.stderr
  else:
    assert ('error: gs://refusing-bucket/run: no valid Google Cloud credentials to write it '
            '(Anonymous caller does not have storage.objects.list access') in result.stderr
    assert 'gcloud auth application-default login' in result.stderr
  assert 'Traceback' not in result.stderr and 'Mesh' not in result.stdout + result.stderr


def test_an_index_is_refused_up_front_where_it_cannot_be_written(monkeypatch):
  """`retrieve index` into a bucket this account may only read fails before any video is
  embedded; `retrieve search` there needs only reads."""
  import gcsfs  # pylint: disable=import-outside-toplevel
  from sltjax import retrieve  # pylint: disable=import-outside-toplevel
  from sltjax.errors import UserError  # pylint: disable=import-outside-toplevel
  with refusing_storage(writes_only=True) as endpoint:
    for key, value in storage.emulator_environment(endpoint).items():
      monkeypatch.setenv(key, value)
    gcsfs.GCSFileSystem.clear_instance_cache()  # clients made for another endpoint
    try:
      assert retrieve.Index('gs://refusing-bucket/index', write=False).videos == []
      with pytest.raises(UserError, match='gs://refusing-bucket/index: permission denied to '
                         'write it'):
        retrieve.Index('gs://refusing-bucket/index', write=True)
    finally:
      gcsfs.GCSFileSystem.clear_instance_cache()


@pytest.fixture(params=['local', 'bucket'])
def folder(request, tmp_path):
  """A folder on local disk, or in a bucket of the emulator."""
  if request.param == 'local':
    return str(tmp_path / 'folder')
  return request.getfixturevalue('bucket') + '/folder'


def test_files_are_written_whole_and_folders_copied_with_their_marker_last(folder, monkeypatch):
  storage.write_text(f'{folder}/a/b.txt', 'first')
  storage.write_text(f'{folder}/a/b.txt', 'second')  # replaces, leaving no temporary behind
  storage.write_bytes(f'{folder}/c.bin', b'\x00\x01')
  assert storage.files_under(folder) == ['a/b.txt', 'c.bin']
  assert storage.read_text(f'{folder}/a/b.txt') == 'second'

  copied, copy_file = [], storage.copy_file
  monkeypatch.setattr(storage, 'copy_file', lambda source, target: (
      copied.append(os.path.basename(str(target))), copy_file(source, target)))
  storage.copy_files(folder, f'{folder}-copy', last=('c.bin',))
  monkeypatch.undo()
  assert copied == ['b.txt', 'c.bin']  # the marker after every other file
  assert storage.path(f'{folder}-copy/c.bin').read_bytes() == b'\x00\x01'

  target = f'{folder}-moved'
  storage.copy_folder(folder, target)
  assert storage.is_complete(target) and storage.files_under(target) == ['a/b.txt', 'c.bin']
  storage.write_text(f'{storage.staging_folder(target)}/a/b.txt', 'half')  # a move cut short
  assert not storage.is_complete(target)
  storage.copy_folder(folder, target)  # redone from the start
  assert storage.is_complete(target) and storage.read_text(f'{target}/a/b.txt') == 'second'
  assert storage.files_under(target) == ['a/b.txt', 'c.bin']


def test_metrics_features_and_indexes_live_in_a_bucket_as_on_disk(folder):
  from sltjax import metric_writers, retrieve  # pylint: disable=import-outside-toplevel
  from sltjax.data import features  # pylint: disable=import-outside-toplevel
  writer = metric_writers.MetricWriter(folder)
  for step in (10, 20, 30):
    writer.write(step, 'train', {'loss': step / 10})
  writer.write_predictions('dev_step30', ['ein satz', 'zwei'])
  writer.close()
  metric_writers.MetricWriter(folder, resume_step=20).close()  # a resumed run drops step 30
  assert [m['step'] for m in read_metrics(folder)] == [10, 20]
  assert storage.read_text(f'{folder}/predictions/dev_step30.txt') == 'ein satz\nzwei\n'
  assert any(name.startswith('tensorboard/events.out.tfevents')
             for name in storage.files_under(folder))

  rows = [np.full((n, 3), n, np.float32) for n in (2, 5)]
  index = {'dataset': 'd', 'id': ['a', 'b'], 'gloss': ['A', 'B'], 'text': ['x', 'y']}
  assert features.write_split(f'{folder}/features', 'dev', iter(rows), index) == 2
  assert features.split_complete(f'{folder}/features', 'dev')
  stored = features.open_split(f'{folder}/features', 'dev', expected_dim=3)
  np.testing.assert_array_equal(stored.features(1), rows[1])
  assert storage.files_under(f'{folder}/features') == ['dev.array_record', 'dev.json']

  def interrupted():  # a rewrite that stops half-way leaves the finished split as it was
    yield rows[0]
    raise KeyboardInterrupt
  with pytest.raises(KeyboardInterrupt):
    features.write_split(f'{folder}/features', 'dev', interrupted(), index)
  np.testing.assert_array_equal(
      features.open_split(f'{folder}/features', 'dev', expected_dim=3).features(1), rows[1])
  assert storage.files_under(f'{folder}/features') == ['dev.array_record', 'dev.json']

  search_index = retrieve.Index(f'{folder}/index', write=True)
  search_index.add('gs://b/w', 7, 'model', [({'input': 'v.mp4', 'frames': 3}, rows[0])])
  reopened = retrieve.Index(f'{folder}/index', write=True)
  assert [v['input'] for v in reopened.videos] == ['v.mp4']
  np.testing.assert_array_equal(reopened.features()[0], rows[0])


def test_weights_in_a_bucket_are_read_through_one_local_copy(bucket, tmp_path, monkeypatch):
  monkeypatch.setattr(storage, 'DOWNLOADS', str(tmp_path / 'downloads'))
  storage.write_bytes(f'{bucket}/xglm/model.safetensors', b'weights')
  storage.write_text(f'{bucket}/xglm/config.json', '{}')
  storage.write_bytes(f'{bucket}/s3d.pt', b'torch')
  folder = storage.local_copy(f'{bucket}/xglm')
  assert folder == str(tmp_path / 'downloads' / bucket[len('gs://'):] / 'xglm')
  assert sorted(os.listdir(folder)) == ['config.json', 'model.safetensors']
  assert open(storage.local_copy(f'{bucket}/s3d.pt'), 'rb').read() == b'torch'
  storage.write_bytes(f'{bucket}/s3d.pt', b'changed')
  assert open(storage.local_copy(f'{bucket}/s3d.pt'), 'rb').read() == b'torch'  # made once
  assert storage.local_copy(str(tmp_path / 'local.pt')) == str(tmp_path / 'local.pt')
  assert sorted(os.listdir(tmp_path / 'downloads' / bucket[len('gs://'):])) == ['s3d.pt', 'xglm']
