"""python -m sltjax.convert.release --system=sign2gpt on what Sign2GPT's released code writes
(tests/sign2gpt_release_checkpoint.py: a stage-2 checkpoint saved as the release's ignite
Checkpoint saves it, the XGLM folder it reads its tokenizer and config from, three clips and the
release's own translations of them): the workdir it writes translates the clips as the release
does, through python -m sltjax.translate."""
import json
import pathlib
import subprocess
import sys

import pytest

from tests.conftest import REPO, subprocess_xla_flags
from tests.sign2gpt_release_checkpoint import FOLDER

torch = pytest.importorskip('torch')  # the converter reads PyTorch checkpoints

CHECKPOINT = FOLDER / 'best_checkpoint.pt'
# The fixture's frames are 28 px (DINOv2's position grid is 42 px: Meta's interpolation runs);
# float32, as the release computed the golden translations.
SETTINGS = ('--config.data.crop_size=28', '--config.model.dtype=float32')
ENV = {'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': subprocess_xla_flags(1), 'PATH': '/usr/bin:/bin',
       'HOME': str(pathlib.Path.home())}


def run(module: str, *args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', module, *map(str, args)], cwd=REPO,
                        capture_output=True, text=True, timeout=300, env=ENV)


def convert(output, *extra, checkpoint=CHECKPOINT) -> subprocess.CompletedProcess:
  return run('sltjax.convert.release', '--system=sign2gpt',
             '--config=configs/sign2gpt.py:translation', *SETTINGS, f'--checkpoint={checkpoint}',
             f'--output={output}', *extra)


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """The workdir written from the release's stage-2 checkpoint, and the converter's stdout."""
  workdir = tmp_path_factory.mktemp('sign2gpt_release') / 'workdir'
  result = convert(workdir, f'--lm_dir={FOLDER / "xglm"}')
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result.stdout


def test_converted_workdir_translates_the_clips_as_the_release(converted, tmp_path):
  workdir, stdout = converted
  for setting in ('--config.model.frames.lora_last_layers=1', '--config.model.frames.dim=32',
                  '--config.model.signs.stage_depths=(2,2)', '--config.eval.max_new_tokens=63'):
    assert setting in stdout
  assert 'python -m sltjax.translate' in stdout
  frames = json.loads((workdir / 'architectures.json').read_text())['frames']
  assert (frames['hidden_size'], frames['num_layers'], frames['image_size'],
          frames['interpolation']) == (64, 2, 42, 'meta')
  out = tmp_path / 'translations.jsonl'
  result = run('sltjax.translate', f'--workdir={workdir}', FOLDER / 'clips', f'--output={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  ours = {pathlib.Path(row['input']).name: row['translation']
          for row in map(json.loads, out.read_text().splitlines())}
  golden = json.loads((FOLDER / 'golden.json').read_text())['translations']
  assert ours == {clip: item['text'] for clip, item in golden.items()}
  assert len(set(ours.values())) == 3  # the clips' visual tokens decide the sentence


def test_a_checkpoint_missing_or_adding_tensors_is_refused_with_each_named(tmp_path):
  state = torch.load(CHECKPOINT, weights_only=True)
  lora = 'lang_model.model.layers.1.self_attn.adaptor_lora_wv_l2.weight'
  del state['model'][lora]
  state['model']['post_model.fc2.weight'] = torch.zeros(3, 3)
  torch.save(state, tmp_path / 'broken.pt')
  result = convert(tmp_path / 'w', f'--lm_dir={FOLDER / "xglm"}',
                   checkpoint=tmp_path / 'broken.pt')
  assert result.returncode == 2, result.stderr[-2000:]
  assert f'missing {lora} (for lm/layers/1/visual_adaptor/value_b' in result.stderr
  assert 'unexpected post_model.fc2.weight (3, 3)' in result.stderr
  assert not (tmp_path / 'w').exists() and not list(tmp_path.glob('w.*'))  # nothing half-written


def test_stage1_checkpoints_and_a_missing_lm_dir_are_refused(tmp_path):
  result = convert(tmp_path / 'w')
  assert result.returncode == 2
  assert 'needs --lm_dir, the XGLM folder the release loaded' in result.stderr
  torch.save({'model': {'post_model.vocab_embedding': torch.zeros(300, 5, 1)}},
             tmp_path / 'stage1.pt')
  result = convert(tmp_path / 'w', f'--lm_dir={FOLDER / "xglm"}',
                   checkpoint=tmp_path / 'stage1.pt')
  assert result.returncode == 2
  assert 'is a stage-1 (pseudo-gloss) checkpoint: convert the stage-2 checkpoint' in result.stderr
  assert not (tmp_path / 'w').exists()
