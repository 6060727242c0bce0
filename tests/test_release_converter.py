"""python -m sltjax.convert.release on what MMTLB's released code writes and ships
(tests/mmtlb_release_checkpoint.py: a Sign2Text checkpoint saved by the release's training code,
its pruned mBART folder and its PHOENIX-2014T gloss vocabulary): the workdir it writes evaluates
and translates with the release's own outputs on the same inputs."""
import pathlib
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest

from sltjax import train, workdirs
from sltjax.checkpointing import read_best_variables
from sltjax.convert.release import mmtlb_release_name
from sltjax.convert.state_dict import torch_layout
from sltjax.convert.release_workdir import read_pickled_mapping, write_pruned_tokenizer
from sltjax.data.tokenizers import EOS_ID, PAD_ID, UNK_ID, PrunedMBartTokenizer, mbart_tokenizer
from sltjax.errors import UserError
from tests.conftest import REPO, subprocess_xla_flags
from tests.mmtlb_release_checkpoint import FOLDER, FRAMES, SENTENCES
from tests.mmtlb_release_golden import load_golden
from tests.s3d_golden import seeded_weights

pytest.importorskip('torch')  # the converter reads PyTorch checkpoints

GOLDEN = dict(np.load(FOLDER / 'golden.npz'))
CONFIG = 'configs/mmtlb.py:sign2text,dataset=phoenix2014t'


def convert(output, *extra, checkpoint=FOLDER / 's2t.ckpt'):
  """Runs the converter on the release's files; returns the CompletedProcess."""
  return subprocess.run(
      [sys.executable, '-m', 'sltjax.convert.release', '--system=mmtlb', f'--config={CONFIG}',
       f'--checkpoint={checkpoint}', f'--glosses={FOLDER / "gloss2ids_old.pkl"}',
       f'--mbart_dir={FOLDER / "mBart_de"}', f'--output={output}', *extra],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': subprocess_xla_flags(1), 'PATH': '/usr/bin:/bin',
           'HOME': str(pathlib.Path.home())})


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """The workdir written from the release's Sign2Text checkpoint (on features)."""
  root = tmp_path_factory.mktemp('release')
  # Greedy CTC, as the release validates: the glosses are then checked against its logits.
  result = convert(root / 'workdir', f'--config.data.features_dir={root / "features"}',
                   '--config.eval.ctc_beam_size=1')
  assert result.returncode == 0, result.stderr[-3000:]
  return root / 'workdir', result.stdout


def release_tokenizer(tmp_path) -> PrunedMBartTokenizer:
  map_ids = read_pickled_mapping(str(FOLDER / 'mBart_de' / 'map_ids.pkl'), 'map_ids')
  write_pruned_tokenizer(str(FOLDER / 'mBart_de'), map_ids, str(tmp_path), True)
  return mbart_tokenizer(str(tmp_path))


def test_pruned_tokenizer_gives_the_releases_ids(tmp_path):
  """The release's TextTokenizer labels (`X </s>`, the language code ignored as <pad>) of
  sentences inside and outside the pruned vocabulary's corpus (pieces without a row: <unk>)."""
  tokenizer = release_tokenizer(tmp_path)
  assert isinstance(tokenizer, PrunedMBartTokenizer)
  unknown = 0
  for text, labels in zip(GOLDEN['texts'], GOLDEN['labels']):
    expected = labels[:list(labels).index(EOS_ID)].tolist()
    assert tokenizer.encode(str(text)) == expected, text
    unknown += expected.count(UNK_ID)
    assert labels[len(expected) + 1:].tolist() == [PAD_ID] * (len(labels) - len(expected) - 1)
  assert unknown > 0  # the check covers pieces the pruned vocabulary lacks
  assert tokenizer.vocab_size == len(read_pickled_mapping(
      str(FOLDER / 'mBart_de' / 'map_ids.pkl'), 'map_ids'))
  first = str(GOLDEN['texts'][0])  # in the pruned corpus: decodes back whole
  assert tokenizer.decode(tokenizer.encode(first) + [EOS_ID, 5]) == first


def test_converted_workdir_translates_as_the_release(converted):
  """Gloss logits, recognised glosses and beam-5 translations of the workdir's best checkpoint
  equal the release's on the same features."""
  workdir, stdout = converted
  assert '--config.model.suffix=own' in stdout and '--mode=eval' in stdout
  config = workdirs.load_config(str(workdir))
  assert (config.model.backbone, config.model.suffix, config.data.lowercase_gloss) == (
      'features', 'own', True)
  exp = train.build_experiment(config, str(workdir))
  params, rest, step = exp.eval_variables()
  assert step == 0
  batch = {'frames': GOLDEN['features'], 'frame_mask': np.ones((SENTENCES, FRAMES), np.int32)}
  out = jax.device_get(exp.visual_fn()(params, rest, exp.global_batch(batch)))
  # sltjax's classes: blank, <unk>, then the release's other ids in order (for PHOENIX-2014T's
  # gloss2ids_old.pkl the same order: <si> 0, <unk> 1).
  release = jax.nn.log_softmax(GOLDEN['gloss_logits'], axis=-1)
  np.testing.assert_allclose(out['gloss_log_probs'], release, atol=2e-5 * np.abs(release).max())
  predictions = exp.predict(params, rest, batch)
  assert predictions['text'] == [str(t) for t in GOLDEN['translations']]
  names = read_pickled_mapping(str(FOLDER / 'gloss2ids_old.pkl'), 'glosses')
  names = {i: g for g, i in names.items()}
  for row, logits in enumerate(GOLDEN['gloss_logits']):  # greedy CTC on the release's logits
    best = logits.argmax(-1)
    collapsed = [int(i) for j, i in enumerate(best) if i != 0 and (j == 0 or i != best[j - 1])]
    assert predictions['gloss'][row] == ' '.join(names[i] for i in collapsed)
  assert any(predictions['gloss'])


def test_converter_refuses_to_overwrite_a_workdir(tmp_path):
  (tmp_path / 'taken').mkdir()
  (tmp_path / 'taken' / 'notes.txt').write_text('mine')
  result = convert(tmp_path / 'taken', f'--config.data.features_dir={tmp_path}')
  assert result.returncode == 2
  assert 'exists and is not empty' in result.stderr and 'nothing was changed' in result.stderr
  assert (tmp_path / 'taken' / 'notes.txt').read_text() == 'mine'


def test_converter_names_the_config_a_checkpoint_needs(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'sltjax.convert.release', '--config=configs/mmtlb.py:sign2gloss',
       f'--checkpoint={FOLDER / "s2t.ckpt"}', f'--glosses={FOLDER / "gloss2ids_old.pkl"}',
       f'--output={tmp_path / "w"}'], cwd=REPO, capture_output=True, text=True, timeout=300,
      env={'JAX_PLATFORMS': 'cpu', 'PATH': '/usr/bin:/bin'})
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'is a sign2text checkpoint: pass --config=configs/mmtlb.py:sign2text' in result.stderr
  assert not (tmp_path / 'w').exists()


def test_pickled_code_is_refused(tmp_path):
  """A .pkl that would build an object (run code) is refused, not loaded."""
  path = tmp_path / 'map_ids.pkl'
  path.write_bytes(pickle.dumps({1: pathlib.PurePosixPath('x')}))
  with pytest.raises(UserError, match='names pathlib.PurePosixPath.*does not run pickled code'):
    read_pickled_mapping(str(path), 'map_ids')


@pytest.mark.slow
def test_sign2gloss_backbone_makes_a_video_workdir(tmp_path):
  """--backbone_checkpoint: the S3D of a release-named Sign2Gloss checkpoint (the golden's S3D
  names and shapes, seeded weights) joins the Sign2Text checkpoint; every backbone tensor lands
  where the release's naming says."""
  import torch  # pylint: disable=import-outside-toplevel
  weights = {'recognition_network.visual_backbone.' + k: v
             for k, v in seeded_weights(load_golden()['s3d_shapes']).items()}
  torch.save({'global_step': 1, 'model_state': {k: torch.from_numpy(np.asarray(v))
                                                for k, v in weights.items()}},
             tmp_path / 's2g.ckpt')
  result = convert(tmp_path / 'video', f'--backbone_checkpoint={tmp_path / "s2g.ckpt"}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'python -m sltjax.translate' in result.stdout
  assert workdirs.load_config(str(tmp_path / 'video')).model.backbone == 's3d'
  checked = 0
  for path, value in read_best_variables(str(tmp_path / 'video')).items():
    if path[1] != 'backbone':
      continue
    sltjax_path = tuple(int(p) if p.isdigit() else p for p in path[1:])
    expected = torch_layout(sltjax_path, weights[mmtlb_release_name(sltjax_path)])
    np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-7)
    checked += 1
  assert checked == len([k for k in weights if not k.endswith('num_batches_tracked')])
