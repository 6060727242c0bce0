"""C2RL end to end on a small synthetic_signs build: the model's masking, the logit-scale clamp
inside the update, same-sentence positives, pretraining that resumes bitwise and scores
retrieval, Sign2Text and SLRet started from it (on extracted features and on frames), and the
translate and retrieve commands on real and broken videos."""
import json
import math
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sltjax import config_validation, experiments, train, workdirs
from sltjax.checkpointing import read_best_variables
from sltjax.errors import MissingInputError, UserError
from sltjax.experiments.retrieval import same_sentence
from sltjax.metrics import RETRIEVAL_METRIC_NAMES
from sltjax.models.mbart import MBartConfig
from sltjax.models.systems.c2rl import (C2RLPretraining, SignRetriever, SignTranslator,
                                        VisualEncoderConfig)
from sltjax.optim import make_optimizer
from tests.conftest import (MBART_DIR, REPO, SHARED_DATA, apply_overrides,
                            assert_resumed_bitwise, assert_same_metrics, run_main,
                            save_mbart_with_tokenizer, shrink_video_config, timeless,
                            train_killed_and_resumed)

pytestmark = pytest.mark.xdist_group('c2rl')  # one worker builds the shared workdirs once
VIDEOS = SHARED_DATA / 'videos'


def tiny_c2rl_config(data_dir, variant='runlocal', **overrides):
  """configs/c2rl.py's runlocal variants shrunk to seconds."""
  from configs.c2rl import get_config  # pylint: disable=import-outside-toplevel
  return shrink_video_config(get_config(variant), data_dir, 16, **overrides)


VISUAL = VisualEncoderConfig(backbone_width=0.125, d_model=16, layers=1, heads=2, ffn_dim=32,
                             max_frames=16)
TEXT = MBartConfig(vocab_size=30, d_model=16, encoder_layers=1, decoder_layers=1,
                   encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                   decoder_ffn_dim=32, max_position_embeddings=32)


def test_padded_frames_change_nothing_valid_and_shapes_follow_the_configs():
  rng = np.random.default_rng(0)
  frames = jnp.asarray(rng.normal(size=(2, 6, 32, 32, 3)), jnp.float32)
  mask = jnp.array([[1] * 6, [1, 1, 1, 0, 0, 0]])
  changed = frames.at[1, 3:].set(5.0)
  model = C2RLPretraining(VISUAL, TEXT, rngs=nnx.Rngs(0))
  assert float(model.logit_scale[...]) == pytest.approx(math.log(1 / 0.07))
  visual = nnx.jit(lambda model, frames: model.visual(frames, mask))
  video, video_mask = visual(model, frames)
  assert video.shape == (2, 6, 16)
  np.testing.assert_array_equal(video_mask, mask)
  np.testing.assert_allclose(visual(model, changed)[0][1, :3], video[1, :3], atol=1e-5)
  ids = jnp.array([[5, 6, 2, 27], [7, 2, 27, 1]])
  forward = nnx.jit(lambda model, frames: model(frames, mask, ids, (ids != 1).astype(jnp.int32),
                                                ids))
  out = forward(model, frames)
  assert out['text'].shape == (2, 4, 16) and out['logits'].shape == (2, 4, 30)
  np.testing.assert_allclose(forward(model, changed)['logits'][1], out['logits'][1], atol=1e-4)
  with pytest.raises(ValueError, match='must equal the visual'):
    C2RLPretraining(VISUAL, MBartConfig(**{**TEXT.__dict__, 'd_model': 8,
                                           'encoder_attention_heads': 2}), rngs=nnx.Rngs(0))

  # The downstream models' shapes (traced, not run).
  shape = lambda f, *args: nnx.eval_shape(f, *args).shape
  wide = MBartConfig(**{**TEXT.__dict__, 'd_model': 24})
  translator = SignTranslator(VISUAL, wide, rngs=nnx.Rngs(0))
  features = jnp.asarray(rng.normal(size=(2, 6, 16)), jnp.float32)
  assert shape(lambda m: m(features, mask, ids), translator) == (2, 4, 30)
  assert shape(lambda m: m(frames, mask, ids), translator) == (2, 4, 30)
  retriever = SignRetriever(VISUAL, wide, rngs=nnx.Rngs(0))
  assert len(retriever.video_encoder.decoder_layers) == 0  # encoders only
  assert shape(lambda m: m.encode_video(features, mask)[0], retriever) == (2, 6, 24)
  assert shape(lambda m: m.encode_text(ids, (ids != 1).astype(jnp.int32)), retriever) == (2, 4, 24)


def test_clips_of_one_sentence_are_positives():
  ids = jnp.array([[5, 6, 2], [7, 2, 1], [5, 6, 2], [5, 6, 1]])
  np.testing.assert_array_equal(same_sentence(ids), [[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0],
                                                     [0, 0, 0, 1]])


def test_the_paper_recipe_refuses_to_start_its_resnet_from_random_weights_unasked(
    synthetic_signs_dir, tmp_path):
  """C2RL's ResNet-18 starts from ImageNet: without weights the paper variant says so before
  training (it used to train from random weights without a word); 'scratch' is the explicit
  choice runlocal makes."""
  from configs.c2rl import get_config  # pylint: disable=import-outside-toplevel
  assert get_config('pretrain').model.backbone_weights == ''
  assert get_config('runlocal').model.backbone_weights == 'scratch'
  config = tiny_c2rl_config(synthetic_signs_dir, **{'model.backbone_weights': ''})
  experiment = experiments.create(config, str(tmp_path))
  with pytest.raises(UserError, match=(
      r"model.backbone_weights is empty: C2RL .* starts its backbone from ImageNet weights "
      r"\(torchvision's resnet18-f37072fd.pth, https://download.pytorch.org/models/"
      r"resnet18-f37072fd.pth\). Pass --config.model.backbone_weights=FILE, or "
      r"--config.model.backbone_weights=scratch")):
    experiment.init_variables()
  config.model.backbone_weights = 'scratch'
  assert experiments.create(config, str(tmp_path)).converted_parts() == {}


def test_configs_give_the_papers_recipes_and_clear_errors(synthetic_signs_dir, tmp_path):
  from configs.c2rl import get_config  # pylint: disable=import-outside-toplevel
  pretrain = get_config()
  assert (pretrain.stage, pretrain.optimizer.name, pretrain.optimizer.momentum,
          pretrain.optimizer.learning_rate, pretrain.batch_size) == ('pretrain', 'sgd', 0.9,
                                                                     1e-2, 64)
  assert pretrain.total_steps == 200 * math.ceil(7096 / 64)
  assert pretrain.data.sampling == 'c2rl' and pretrain.eval.best_metric == 't2v_r1'
  assert get_config('slt,dataset=csl_daily').eval.char_level
  assert dict(get_config('slt').optimizer.param_groups) == {'^translation/': 0.01}
  assert get_config('slt').batch_size == get_config('slret').batch_size == 128
  slt = tiny_c2rl_config(synthetic_signs_dir, 'runlocal_slt', **{'init.visual': ''})
  with pytest.raises(UserError, match='set init.visual to a C2RL pretraining workdir'):
    config_validation.validate(slt)
  slt.optimizer.frozen = ''  # Sign2Text without pretraining: the encoder trains from scratch
  config_validation.validate(slt)
  wrong = tiny_c2rl_config(synthetic_signs_dir, **{'eval.best_metric': 'bleu4'})
  with pytest.raises(UserError, match='eval.best_metric must be one of'):
    config_validation.validate(wrong)
  missing = tiny_c2rl_config(tmp_path / 'nothing', **{'data.name': 'phoenix2014t',
                                                      'tokenizer.kind': 'word'})
  with pytest.raises(MissingInputError, match=(
      r"phoenix2014t is not built under data_dir='.*nothing'. Build it with\n"
      r'  python -m sltjax.data.build --dataset=phoenix2014t --data_dir=.*nothing '
      '--manual_dir=RELEASE')):
    train.train_and_evaluate(missing, str(tmp_path / 'w'))
  missing.data.data_dir = ''  # the paper's variants, as shipped
  with pytest.raises(MissingInputError, match=(
      'config.data.data_dir is not set: build phoenix2014t with\n'
      '  python -m sltjax.data.build --dataset=phoenix2014t --data_dir=DIR --manual_dir=RELEASE\n'
      'then pass --config.data.data_dir=DIR.')):
    train.train_and_evaluate(missing, str(tmp_path / 'w'))


def test_logit_scale_is_clamped_at_ln_100_inside_the_train_step(synthetic_signs_dir, tmp_path):
  config = tiny_c2rl_config(synthetic_signs_dir)
  exp = train.build_experiment(config, str(tmp_path))
  params, rest = exp.init_variables()
  params['logit_scale'] = params['logit_scale'].replace(jnp.asarray(6.0))
  tx, schedule = make_optimizer(config, exp.abstract_params)
  state = {'params': params, 'rest': rest, 'opt_state': tx.init(params),
           'step': jnp.array(0, jnp.int32)}
  shardings = jax.tree.map(lambda x: x.sharding, state)
  step = train.make_train_step(exp, tx, schedule, shardings)
  state, metrics = step(state, exp.global_batch(next(iter(exp.train_dataset()))))
  assert float(metrics['logit_scale']) == 6.0  # the loss saw the unclamped value
  assert float(state['params']['logit_scale'][...]) == pytest.approx(math.log(100), abs=1e-6)


@pytest.fixture(scope='module')
def pretraining_workdir(synthetic_signs_dir, tmp_path_factory):
  """4 pretraining steps, killed after step 2's checkpoint and resumed."""
  workdir = tmp_path_factory.mktemp('c2rl_pretrain')
  return workdir, *train_killed_and_resumed(tiny_c2rl_config(synthetic_signs_dir), workdir)


def test_pretraining_resumes_bitwise_and_scores_retrieval(pretraining_workdir):
  workdir, best, uninterrupted, logs = pretraining_workdir
  assert set(best) == set(RETRIEVAL_METRIC_NAMES)
  assert_resumed_bitwise(workdir, uninterrupted, logs)
  train_logs = [l for l in timeless(logs) if l['split'] == 'train']
  assert {'icl', 'ecl', 'logit_scale', 'loss'} <= set(train_logs[-1])
  assert all(np.isfinite(l['loss']) for l in train_logs)
  # Each dev video's top-ranked sentence is a dev sentence.
  predictions = (workdir / 'predictions' / 'dev_step4.txt').read_text().splitlines()
  assert len(predictions) == 6


@pytest.fixture(scope='module')
def slret_workdir(pretraining_workdir, synthetic_signs_dir, tmp_path_factory):
  """SLRet on the frames, through the frozen pretrained encoder."""
  pretraining, *_ = pretraining_workdir
  workdir = tmp_path_factory.mktemp('c2rl_slret')
  config = tiny_c2rl_config(synthetic_signs_dir, 'runlocal_slret',
                            **{'init.visual': str(pretraining)})
  workdirs.prepare(str(workdir), config, 'train')
  return workdir, train.train_and_evaluate(config, str(workdir))


def test_slret_keeps_the_pretrained_encoder_and_scores_retrieval(slret_workdir,
                                                                 pretraining_workdir):
  workdir, best = slret_workdir
  assert set(best) == set(RETRIEVAL_METRIC_NAMES)
  pretrained = read_best_variables(str(pretraining_workdir[0]))
  trained = read_best_variables(str(workdir))
  visual = [k for k in pretrained if k[1] == 'visual']
  assert visual
  for key in visual:  # frozen: the encoder (and its BatchNorm statistics) as pretraining left it
    np.testing.assert_array_equal(trained[key], pretrained[key], err_msg=str(key))
  assert os.path.isfile(workdir / 'tokenizer' / 'vocab.json')


def test_slt_on_extracted_features_translates_videos(pretraining_workdir, synthetic_signs_dir,
                                                     tmp_path):
  pretraining, *_ = pretraining_workdir
  config = tiny_c2rl_config(synthetic_signs_dir)
  written = train.extract_features(config, str(pretraining))
  assert written == {'dev': 6, 'test': 4, 'train': 24}
  slt_config = tiny_c2rl_config(synthetic_signs_dir, 'runlocal_slt', **{
      'init.visual': str(pretraining), 'data.features_dir': str(pretraining / 'features')})
  workdir = tmp_path / 'slt'
  workdirs.prepare(str(workdir), slt_config, 'train')  # config.json, as sltjax.main writes it
  best = train.train_and_evaluate(slt_config, str(workdir))
  assert 'bleu4' in best
  # Features of another workdir than init.visual are refused.
  other = apply_overrides(slt_config.copy_and_resolve_references(),
                          {'init.visual': str(workdir)})
  with pytest.raises(UserError, match='start from the workdir that extracted them'):
    train.train_and_evaluate(other, str(tmp_path / 'other'))
  # The workdir holds the encoder: translating goes from frames, as evaluation on features does.
  from sltjax import translate  # pylint: disable=import-outside-toplevel
  exp = translate.load_experiment(str(workdir))
  params, rest, _ = exp.eval_variables()
  from sltjax.experiments.video import open_dataset_split  # pylint: disable=import-outside-toplevel
  dev = open_dataset_split(exp.config.data, 'dev')
  batch = next(iter(exp.eval_batches(dev)))
  from_frames = exp.predict(params, rest, batch)['text']
  expected = (workdir / 'predictions' / 'dev_step4.txt').read_text().splitlines()
  assert from_frames == expected


def _retrieve(workdir, *args):
  command = [sys.executable, '-m', 'sltjax.retrieve', f'--workdir={workdir}', *map(str, args)]
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.skipif(not VIDEOS.exists(), reason=f'shared videos not found at {VIDEOS}')
def test_retrieve_indexes_videos_resumes_reports_broken_ones_and_refuses_a_stale_index(
    slret_workdir, tmp_path):
  workdir, _ = slret_workdir
  index = tmp_path / 'index'
  broken = tmp_path / 'broken.mp4'
  broken.write_bytes(b'not a video')
  first = _retrieve(workdir, 'index', f'--index={index}', VIDEOS / 'FOOTBALL.mp4', broken)
  assert first.returncode == 1, first.stderr
  errors = [l for l in first.stderr.splitlines() if l.startswith('error: ')]
  assert len(errors) == 1 and str(broken) in errors[0]
  meta = json.loads((index / 'index.json').read_text())
  assert meta['workdir'] == str(workdir) and meta['step'] == 4
  assert [v['input'] for v in meta['videos']] == [str(VIDEOS / 'FOOTBALL.mp4')]
  # Rerun over the whole folder: FOOTBALL.mp4 is kept, the other video and the frame folder
  # are added.
  second = _retrieve(workdir, 'index', f'--index={index}', VIDEOS)
  assert second.returncode == 0, second.stderr
  meta = json.loads((index / 'index.json').read_text())
  assert [v['input'] for v in meta['videos']] == [str(VIDEOS / 'FOOTBALL.mp4'),
                                                  str(VIDEOS / 'phoenix_frames'),
                                                  str(VIDEOS / 'test_video.mp4')]
  assert '2 videos added, 0 failed, 3 indexed' in second.stderr
  search = _retrieve(workdir, 'search', f'--index={index}', 'the weather is nice', '--top=5')
  assert search.returncode == 0, search.stderr
  ranked = [json.loads(l) for l in search.stdout.splitlines()]
  assert [r['rank'] for r in ranked] == [1, 2, 3]
  assert {r['input'] for r in ranked} == {v['input'] for v in meta['videos']}
  assert ranked[0]['score'] >= ranked[1]['score']
  texts = tmp_path / 'texts.txt'
  texts.write_text('the weather is nice\nrain in the north\nsnow tomorrow\n')
  per_video = [json.loads(l) for l in _retrieve(
      workdir, 'search', f'--index={index}', f'--texts={texts}', '--top=3').stdout.splitlines()]
  assert [v['input'] for v in per_video] == [v['input'] for v in meta['videos']]
  for video in per_video:
    assert [t['rank'] for t in video['texts']] == [1, 2, 3]
    assert sorted(t['text'] for t in video['texts']) == sorted(texts.read_text().split('\n')[:3])
    scores = [t['score'] for t in video['texts']]
    assert scores == sorted(scores, reverse=True)
  # The sentence's score against each video is the same both ways.
  for video in per_video:
    nice = next(t for t in video['texts'] if t['text'] == 'the weather is nice')
    searched = next(r for r in ranked if r['input'] == video['input'])
    assert nice['score'] == pytest.approx(searched['score'], rel=1e-5)
  # An index of another checkpoint is refused.
  meta['step'] = 2
  (index / 'index.json').write_text(json.dumps(meta))
  stale = _retrieve(workdir, 'search', f'--index={index}', 'the weather is nice')
  assert stale.returncode == 2
  assert 'checkpoint step 2' in stale.stderr and 'Build a new index' in stale.stderr


@pytest.mark.slow
def test_two_processes_pretrain_as_one_with_negatives_from_the_global_batch(synthetic_signs_dir,
                                                                           pretraining_workdir,
                                                                           tmp_path):
  """Each process holds half of every batch; ICL's negatives still span the global batch, so
  the losses and the dev retrieval scores equal the one-device run of `pretraining_workdir`."""
  from tests.test_main import free_port  # pylint: disable=import-outside-toplevel
  *_, logs = pretraining_workdir
  port = free_port()
  workers = [run_main(tiny_c2rl_config(synthetic_signs_dir), tmp_path,
                      f'--coordinator_address=localhost:{port}', '--num_processes=2',
                      f'--process_id={i}', background=True,
                      base_argument='configs/c2rl.py:runlocal') for i in range(2)]
  outputs = [w.communicate(timeout=600)[0] for w in workers]
  assert [w.returncode for w in workers] == [0, 0], outputs[0][-3000:]
  assert 'over 2 devices in 2 processes' in outputs[0]
  assert_same_metrics(tmp_path, logs, ('loss', 'icl', 'ecl', *RETRIEVAL_METRIC_NAMES))


@pytest.mark.slow
def test_fsdp_and_tensor_parallel_pretrain_as_one_device(synthetic_signs_dir, pretraining_workdir,
                                                         tmp_path):
  """8 fake devices, fsdp 2 x tensor 4, each device's ResNet on its eighth of the frames
  (sharding.constrain_frames), convolution kernels split over fsdp: the losses and dev retrieval
  scores are the one-device run's. (Without the kernels gathered at use, layers/conv.py's
  whole_kernel_conv, XLA made ResNet's gradients 4x too large: step 4's loss 4.8601 against
  4.8577.)"""
  *_, logs = pretraining_workdir
  result = run_main(tiny_c2rl_config(synthetic_signs_dir), tmp_path, '--config.mesh.data=1',
                    '--config.mesh.fsdp=2', '--config.mesh.tensor=4', devices=8,
                    base_argument='configs/c2rl.py:runlocal')
  assert result.returncode == 0, result.stderr[-3000:]
  assert_same_metrics(tmp_path, logs, ('loss', 'icl', 'ecl', *RETRIEVAL_METRIC_NAMES))


@pytest.mark.skipif(not MBART_DIR.exists(), reason=f'mBART tokenizer not found at {MBART_DIR}')
def test_downstream_stages_start_from_a_converted_mbart_with_the_pretraining_tokenizer(
    synthetic_signs_dir, tmp_path):
  """Pretraining tokenizes with the converted mBART's tokenizer; Sign2Text fills `translation/`
  from it and SLRet both of its encoders, each an exact copy of the converted weights."""
  from sltjax.convert.hf import load_mbart  # pylint: disable=import-outside-toplevel
  from sltjax.convert.pretrained import save_pretrained  # pylint: disable=import-outside-toplevel
  from sltjax.data.tokenizers import TOKENIZER_FILES, MBartTokenizer  # pylint: disable=import-outside-toplevel
  hf = tmp_path / 'hf'
  hf.mkdir()
  for name in TOKENIZER_FILES:
    if (MBART_DIR / name).exists():
      shutil.copy(MBART_DIR / name, hf)
  save_mbart_with_tokenizer(hf, MBartTokenizer(str(hf)).vocab_size)
  converted = tmp_path / 'mbart'
  save_pretrained(load_mbart(str(hf)), str(converted), str(hf))
  language = {'tokenizer.src_lang': 'de_DE', 'tokenizer.tgt_lang': 'de_DE'}
  pretraining = tmp_path / 'pretrain'
  train.train_and_evaluate(tiny_c2rl_config(
      synthetic_signs_dir, total_steps=2, eval_every_steps=2, **language,
      **{'tokenizer.kind': 'mbart', 'tokenizer.path': str(converted)}), str(pretraining))
  assert sorted(os.listdir(pretraining / 'tokenizer')) == sorted(
      n for n in TOKENIZER_FILES if (hf / n).exists())
  source = read_best_variables(str(converted))
  for variant, prefixes in (('runlocal_slt', ('translation',)),
                            ('runlocal_slret', ('video_encoder', 'text_encoder'))):
    config = tiny_c2rl_config(synthetic_signs_dir, variant, **language, **{
        'tokenizer.kind': 'mbart', 'init.visual': str(pretraining),
        'init.mbart': str(converted)})
    exp = train.build_experiment(config, str(tmp_path / variant))
    assert exp.tokenizer.vocab_size == MBartTokenizer(str(hf)).vocab_size
    params, _ = exp.init_variables()
    flat = {tuple(map(str, path)): v for path, v in nnx.to_flat_state(params)}
    for prefix in prefixes:
      copied = [p for p in flat if p[0] == prefix]
      assert any('encoder_layers' in p for p in copied)
      for path in copied:
        np.testing.assert_array_equal(flat[path][...], source[('params', *path[1:])],
                                      err_msg=str(path))
    # The pretrained encoder's 64-wide features -> the converted mBART's width (16).
    assert flat[('projection', 'kernel')].shape == (64, 16)
