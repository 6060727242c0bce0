"""The command line: config errors before any work, config.json, kill -9 and resume, multi-device
runs equal to the single-device run (multi-process runs: test_cloud_storage's and test_c2rl's)."""
import json
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import orbax.checkpoint as ocp

from tests.conftest import REPO, read_metrics, run_main, tiny_config


def test_unknown_config_key_fails_before_work(toy_corpus, tmp_path):
  result = run_main(tiny_config(toy_corpus), tmp_path / 'w', '--config.optimizer.learnig_rate=1')
  assert result.returncode != 0
  assert 'learnig_rate' in result.stderr and 'learning_rate' in result.stderr  # names a suggestion
  assert not (tmp_path / 'w').exists()


def test_invalid_values_fail_with_every_problem_listed(toy_corpus, tmp_path):
  result = run_main(tiny_config(toy_corpus), tmp_path / 'w', '--config.total_steps=0',
                    '--config.batch_size=-2', '--config.eval.best_metric=bleu')
  assert result.returncode != 0
  assert ('Invalid config: total_steps=0 must be a positive integer; batch_size=-2 must be a '
          "positive integer; eval.best_metric='bleu' is not one of ['bleu1'") in result.stderr
  assert not (tmp_path / 'w').exists()


def wait_for(predicate, process, timeout=300):
  start = time.time()
  while not predicate():
    if process.poll() is not None:
      raise AssertionError('run finished before the kill point:\n' + process.stdout.read())
    if time.time() - start > timeout:
      raise AssertionError('kill point never reached')
    time.sleep(0.005)


@pytest.mark.slow
@pytest.mark.xdist_group('g2t_reference')
def test_kill_9_anywhere_then_resume_is_bitwise_identical(g2t_reference, toy_corpus, tmp_path):
  config, reference = g2t_reference
  total = config.total_steps
  config_json = json.loads((reference / 'config.json').read_text())
  assert config_json['total_steps'] == total and config_json['data']['path'] == str(toy_corpus)

  workdir = tmp_path / 'interrupted'
  checkpoints = workdir / 'checkpoints'
  # 1. killed in the middle of writing the step-20 checkpoint
  process = run_main(config, workdir, background=True)
  wait_for(lambda: checkpoints.exists() and any(
      p.name.startswith('20') and 'tmp' in p.name for p in checkpoints.iterdir()), process)
  process.send_signal(signal.SIGKILL)
  process.wait()
  # 2. preempted (SIGTERM) between checkpoints: saves where it stands and exits with 143
  process = run_main(config, workdir, background=True)
  wait_for(lambda: (checkpoints / '20').exists(), process)
  process.send_signal(signal.SIGTERM)
  output = process.communicate(timeout=120)[0]
  assert process.returncode == 143, output
  saved = int(re.search(r'Preempted: saved step (\d+)', output).group(1))
  assert 20 < saved < total and (checkpoints / str(saved)).exists()
  # 3. killed between checkpoints, after the next regular checkpoint, while training on
  resume_from = saved
  if (saved // 10 + 1) * 10 < total:
    resume_from = (saved // 10 + 1) * 10
    process = run_main(config, workdir, background=True)
    wait_for(lambda: (checkpoints / str(resume_from)).exists(), process)
    time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
  # 4. run to the end
  result = run_main(config, workdir)
  assert result.returncode == 0, result.stderr
  assert f'Resumed from step {resume_from} ' in result.stderr + result.stdout
  assert read_metrics(workdir) == read_metrics(reference)
  for step in (20, 40, 60):
    name = f'dev_step{step}.txt'
    assert (workdir / 'predictions' / name).read_text() == (
        reference / 'predictions' / name).read_text()


def train_losses(workdir):
  return np.array([m['loss'] for m in read_metrics(workdir) if m['split'] == 'train'])


@pytest.fixture(scope='module')
def one_device_run(toy_corpus, tmp_path_factory):
  """(config, workdir) of 20 float32 steps on one device: what the sharded runs must track."""
  config = tiny_config(toy_corpus, total_steps=20, eval_every_steps=0, checkpoint_every_steps=20)
  workdir = tmp_path_factory.mktemp('one_device')
  assert run_main(config, workdir).returncode == 0
  return config, workdir


@pytest.mark.slow
@pytest.mark.xdist_group('one_device_run')
def test_eight_devices_give_the_single_device_loss(one_device_run, tmp_path):
  config, one = one_device_run
  result = run_main(config, tmp_path / 'eight', '--config.mesh.data=2', '--config.mesh.fsdp=2',
                    '--config.mesh.tensor=2', devices=8)
  assert result.returncode == 0, result.stderr
  assert "Mesh {'data': 2, 'fsdp': 2, 'tensor': 2} over 8 devices" in result.stdout + result.stderr
  np.testing.assert_allclose(train_losses(tmp_path / 'eight'), train_losses(one), rtol=2e-5)


def free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.xdist_group('one_device_run')
def test_bfloat16_with_remat_on_fsdp_and_tensor_axes_tracks_float32(one_device_run, tmp_path):
  """bf16 compute + full remat, parameters over fsdp=2 x tensor=4 of 8 devices, against the
  single-device float32 run: the same losses to bf16 precision, float32 master weights."""
  config, float32 = one_device_run
  result = run_main(config, tmp_path / 'bf16', '--config.mesh.data=1', '--config.mesh.fsdp=2',
                    '--config.mesh.tensor=4', '--config.model.dtype=bfloat16',
                    '--config.model.remat=full', devices=8)
  assert result.returncode == 0, result.stderr
  np.testing.assert_allclose(train_losses(tmp_path / 'bf16'), train_losses(float32), rtol=0.02)
  with ocp.StandardCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(tmp_path / 'bf16' / 'checkpoints' / '20' / 'state')
  kernel = metadata.item_metadata['params']['encoder_layers']['0']['fc1']['kernel']['value']
  assert kernel.dtype == np.float32


def python_output(script: str) -> str:
  """The stdout of `script` run by a fresh Python in the repository, which must succeed."""
  result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          check=False, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_every_module_imports_into_one_process():
  """Command-line modules that are also libraries (translate, build, trim_vocab, ...) are imported
  together by tests and notebooks; none may claim a flag name another one defines."""
  script = ('import pkgutil, importlib, sltjax\n'
            'names = [m.name for m in pkgutil.walk_packages(sltjax.__path__, "sltjax.")]\n'
            'for name in names: importlib.import_module(name)\n'
            'print(len(names))\n')
  assert int(python_output(script).split()[-1]) > 40


def test_a_training_process_starts_without_torch_nltk_or_scipy():
  """tensorboardX imports torch whenever it is installed and rouge-score imports nltk and
  scipy.stats (2-4 s of every run's start): the entry point and the experiments import neither,
  and torch still imports afterwards."""
  script = ('import sys\n'
            'import sltjax.main, sltjax.train, sltjax.metric_writers, sltjax.experiments.mmtlb\n'
            'print(sorted(m for m in ("torch", "nltk", "scipy") if m in sys.modules))\n'
            'import torch\n'
            'print(float(torch.ones(2).sum()))\n')
  assert python_output(script).split() == ['[]', '2.0']
