"""Sign2GPT end to end on a small synthetic_signs build: the stand-in networks load in
transformers as they do here, the XGLM tokenizer's sequence formats, the recipe's optimizer
pieces, both stages resuming bitwise, the pseudo-gloss pictures, stage 2 started from stage 1
with the LM frozen, and translate on its workdir."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sltjax import config_validation, experiments, optim, stand_ins, train, workdirs
from sltjax.checkpointing import read_best_variables
from sltjax.convert.dinov2 import load_dinov2, save_dinov2
from sltjax.convert.xglm import load_xglm, save_xglm
from sltjax.data import batching, synthetic_signs
from sltjax.data.sign_labels import SignLabels
from sltjax.data.tokenizers import GlossVocabulary, XGLMTokenizer
from sltjax.errors import UserError
from sltjax.experiments.sign2gpt import ordered_by_time
from sltjax.models.backbones.dinov2 import DINOv2, DINOv2Config
from sltjax.models.xglm import XGLM, XGLMConfig
from tests.conftest import (REPO, SHARED_DATA, assert_resumed_bitwise, shrink_video_config,
                            train_killed_and_resumed)

pytestmark = pytest.mark.xdist_group('sign2gpt')  # one worker builds the shared workdirs once
VIDEOS = SHARED_DATA / 'videos'
SENTENCES = [synthetic_signs.sample_sentence(np.random.default_rng(i))[1] for i in range(300)]


@pytest.fixture(scope='module')
def pretrained_dir(tmp_path_factory):
  """Random tiny 'downloaded' networks in Hugging Face format: xglm/ (with the stand-ins'
  tokenizer of the synthetic sentences) and dinov2/ (28 px: 2 x 2 patches)."""
  root = tmp_path_factory.mktemp('pretrained')
  tokenizer_dir = root / 'tokenizer'
  tokenizer_dir.mkdir()
  stand_ins.train_tokenizer(SENTENCES, str(tokenizer_dir))
  vocab = XGLMTokenizer(str(tokenizer_dir)).vocab_size
  xglm = XGLM(XGLMConfig(vocab_size=vocab, d_model=16, num_layers=2, attention_heads=2,
                         ffn_dim=32, max_position_embeddings=64), rngs=nnx.Rngs(1))
  save_xglm(xglm, str(root / 'xglm'), str(tokenizer_dir))
  dinov2 = DINOv2(DINOv2Config(hidden_size=16, num_layers=3, num_heads=2, image_size=28),
                  rngs=nnx.Rngs(2))
  save_dinov2(dinov2, str(root / 'dinov2'))
  return root


def tiny_config(data_dir, pretrained, variant='runlocal', **overrides):
  """configs/sign2gpt.py's runlocal variants shrunk to seconds."""
  from configs.sign2gpt import get_config  # pylint: disable=import-outside-toplevel
  config = shrink_video_config(get_config(variant), data_dir, 16, **{
      'data.crop_size': 28, 'data.eval_resize': 28,
      'model.backbone_weights': str(pretrained / 'dinov2'),
      'model.lm_weights': str(pretrained / 'xglm'), 'tokenizer.path': str(pretrained / 'xglm'),
      'model.frames.dim': 16, 'model.signs.dim': 16, 'model.signs.heads': 2,
      'eval.figures': 2, **overrides})
  return config


def test_stand_ins_load_in_transformers_as_here(tmp_path):
  """The runlocal networks are real Hugging Face directories: transformers' tokenizer, XGLM and
  DINOv2 read them and compute what sltjax computes."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  loss = stand_ins.train_xglm(str(tmp_path / 'xglm'), sentences=200, steps=30, d_model=32)
  assert np.isfinite(loss)
  ours = XGLMTokenizer(str(tmp_path / 'xglm'))
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / 'xglm'))
  for sentence in SENTENCES[:20] + ['there will be hail in paris']:  # unknown words included
    assert hf_tokenizer(sentence).input_ids == [ours.eos_id] + ours.encode(sentence)
  assert len(hf_tokenizer) == ours.vocab_size
  hf_lm = transformers.XGLMForCausalLM.from_pretrained(str(tmp_path / 'xglm')).eval()
  ids = np.array([[ours.eos_id] + ours.encode(SENTENCES[0])])
  with torch.no_grad():
    expected = hf_lm(torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(np.asarray(load_xglm(str(tmp_path / 'xglm'))(ids)), expected,
                             atol=1e-4)

  report = stand_ins.train_dinov2(str(tmp_path / 'dinov2'), videos=4, steps=3, batch_size=8,
                                  hidden_size=16, num_layers=2)
  assert 0 <= report['dinov2_held_out_accuracy'] <= 1
  hf_vision = transformers.Dinov2Model.from_pretrained(str(tmp_path / 'dinov2')).eval()
  images = np.random.default_rng(0).normal(size=(2, 56, 56, 3)).astype(np.float32)
  with torch.no_grad():
    expected = hf_vision(torch.tensor(images.transpose(0, 3, 1, 2))).last_hidden_state.numpy()
  np.testing.assert_allclose(np.asarray(load_dinov2(str(tmp_path / 'dinov2')).images(images)),
                             expected, atol=1e-4)


def test_rendered_frames_are_labelled_with_the_gloss_they_show():
  frames, labels = synthetic_signs.render_labelled(['TODAY', 'NORTH', 'RAIN'], 3, 1, 32)
  assert len(frames) == len(labels)
  np.testing.assert_array_equal(np.stack(frames),
                                np.stack(synthetic_signs.render(['TODAY', 'NORTH', 'RAIN'], 3, 1,
                                                                32)))
  signed = [l for i, l in enumerate(labels) if l and (i == 0 or labels[i - 1] != l)]
  assert signed == ['TODAY', 'NORTH', 'RAIN']  # each sign once, in order
  assert labels[0] is None and labels[-1] is None  # resting hands before and after


def test_xglm_targets_are_the_sentence_between_end_of_sentence_tokens(pretrained_dir):
  tokenizer = XGLMTokenizer(str(pretrained_dir / 'xglm'))
  assert tokenizer.lang_id('en_XX') == tokenizer.eos_id == 2
  words = tokenizer.encode('there will be fog')
  extra = np.arange(6, dtype=np.float32).reshape(2, 3)
  labels = SignLabels(['A', 'B'], ['there will be fog', 'fog'], tokenizer, GlossVocabulary([]),
                      'en_XX', (8,), record_labels={'targets': extra})
  out = labels.arrays(np.array([0, batching.PAD_INDEX]), np.array([0, 1]))
  assert len(words) == 4  # whole words
  np.testing.assert_array_equal(out['decoder_input_ids'][0], [2, *words, 2, 1, 1])
  np.testing.assert_array_equal(out['labels'][0], [*words, 2, 2, 1, 1])
  np.testing.assert_array_equal(out['label_weights'][0], [1] * 5 + [0] * 3)
  np.testing.assert_array_equal(out['targets'], [extra[0], [0, 0, 0]])  # filler rows: zeros
  assert tokenizer.decode(out['labels'][0]) == 'there will be fog'
  with pytest.raises(ValueError, match=r"record_labels\['targets'\] has 2 rows for 1 records"):
    SignLabels(['A'], ['fog'], tokenizer, GlossVocabulary([]), 'en_XX', (8,),
               record_labels={'targets': extra})


def test_recipe_pieces_decay_only_matrices_clip_values_and_warm_up_from_a_fraction(
    synthetic_signs_dir, pretrained_dir):
  from configs.sign2gpt import get_config  # pylint: disable=import-outside-toplevel
  config = get_config('translation')
  opt, sched = config.optimizer, config.schedule
  epoch = -(-7096 // 8)
  assert (opt.name, opt.learning_rate, opt.weight_decay, opt.decay, opt.grad_clip_norm,
          opt.grad_clip_value, config.batch_size, config.total_steps) == (
              'adamw', 3e-4, 1e-3, 'matrices', 1.0, 1.0, 8, 100 * epoch)
  assert (sched.warmup_steps, sched.warmup_init_factor, sched.end_factor) == (5 * epoch, 0.01,
                                                                             0.01)
  assert (config.eval.num_beams, config.eval.max_new_tokens, config.label_smoothing,
          config.model.dtype) == (4, 64, 0.1, 'bfloat16')
  assert get_config('pseudo_gloss,dataset=csl_daily').pseudo_glosses.language == 'zh'
  # After stage 1, the started encoders go on at the release's 3e-4 (0.1 x runlocal's 3e-3).
  assert dict(get_config('translation,runlocal').optimizer.param_groups) == {
      'visual_adaptor/gate': 10.0, '^(frames|sign_encoder)/': 0.1}
  assert dict(get_config('scratch,runlocal').optimizer.param_groups) == {
      'visual_adaptor/gate': 10.0}
  data = config.data  # the release's frames (albumentations, strength 0.2)
  assert (data.eval_crop, data.random_crop_scale, data.random_crop_ratio, data.rotation_degrees,
          data.rotation_prob, data.hflip_prob, data.colour_jitter_prob, data.brightness,
          data.contrast, data.saturation, data.hue, data.grayscale_prob) == (
              'squash', (0.875, 1.0), (0.9, 1.1), 5.0, 0.3, 0.5, 0.3, 0.16, 0.16, 0.16, 0.04, 0.2)
  schedule = optim.learning_rate_schedule(config)
  assert float(schedule(0)) == pytest.approx(3e-6, rel=1e-4)
  assert float(schedule(5 * epoch)) == pytest.approx(3e-4, rel=1e-4)
  assert float(schedule(config.total_steps)) == pytest.approx(3e-6, rel=1e-4)

  # AdamW's decoupled decay reaches the matrix only; every gradient entry is clipped to 1 first.
  config = tiny_config(synthetic_signs_dir, pretrained_dir, **{
      'optimizer.frozen': '', 'optimizer.weight_decay': 0.5, 'optimizer.grad_clip_norm': 0.0,
      'optimizer.learning_rate': 0.1, 'schedule.warmup_steps': 0})
  params = {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones((2,))}
  tx, _ = optim.make_optimizer(config, params)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates['kernel'], -0.1 * 0.5 * np.ones((2, 2)))
  np.testing.assert_array_equal(updates['bias'], 0.0)
  config.optimizer.update(name='sgd', weight_decay=0.0)
  tx, _ = optim.make_optimizer(config, params)
  huge = {'kernel': jnp.full((2, 2), 50.0), 'bias': jnp.array([50.0, -0.5])}
  got, _ = tx.update(huge, tx.init(params), params)
  np.testing.assert_allclose(got['kernel'], np.full((2, 2), -0.1))
  np.testing.assert_allclose(got['bias'], [-0.1, 0.05])


def test_configs_give_clear_errors(synthetic_signs_dir, pretrained_dir):
  def problems(**overrides):
    with pytest.raises(UserError) as error:
      config_validation.validate(tiny_config(synthetic_signs_dir, pretrained_dir, **overrides))
    return str(error.value)

  assert 'eval.best_metric must be one of' in problems(**{'eval.best_metric': 'bleu4'})
  assert 'stage=' in problems(stage='captioning')
  assert 'reads frames' in problems(**{'data.features_dir': '/somewhere'})
  assert 'needs the XGLM it adapts' in problems(**{'stage': 'translation',
                                                   'eval.best_metric': 'bleu4',
                                                   'model.lm_weights': ''})
  assert 'init.visual is not a start' in problems(**{'init.visual': 'w'})


def test_spatial_trainables_are_the_papers_271872():
  """DINOv2 ViT-S/14 with LoRA (rank 4) on blocks 9-11's fused qkv, proj, fc1 and fc2, the
  projection to 512 and its BatchNorm: the paper's 271,872 trainable spatial parameters (LoRA
  on separate q, k and v gave 281,088)."""
  from sltjax.models.systems.sign2gpt import FrameEncoder, FrameEncoderConfig  # pylint: disable=import-outside-toplevel
  encoder = nnx.eval_shape(lambda: FrameEncoder(FrameEncoderConfig(), rngs=nnx.Rngs(0)))
  trained = sum(v.size for p, v in nnx.to_flat_state(nnx.state(encoder, nnx.Param))
                if p[0] != 'backbone' or str(p[-1]).startswith('lora_'))
  assert trained == 271_872


def test_real_data_needs_the_languages_word_vectors(synthetic_signs_dir, pretrained_dir,
                                                    tmp_path):
  """The prototypes are the language's FastText vectors; vectors trained on the pseudo-glosses
  (a substitute) replaced them silently when none was given."""
  from configs.sign2gpt import get_config  # pylint: disable=import-outside-toplevel
  assert get_config('pseudo_gloss').pseudo_glosses.word_vectors == ''
  assert get_config('runlocal').pseudo_glosses.word_vectors == 'trained'
  config = tiny_config(synthetic_signs_dir, pretrained_dir, **{'pseudo_glosses.word_vectors': ''})
  with pytest.raises(UserError, match=(
      r"pseudo_glosses.word_vectors is empty: Sign2GPT's prototypes are the language's word "
      r"vectors, FastText cc\.(\w+)\.300\.bin \(https://dl\.fbaipublicfiles\.com/fasttext/"
      r"vectors-crawl/cc\.\1\.300\.bin\.gz, unzipped\); pass "
      r"--config.pseudo_glosses.word_vectors=FILE, or =trained")):
    experiments.create(config, str(tmp_path)).word_vectors  # pylint: disable=expression-not-assigned


def test_pseudo_glosses_are_ordered_by_where_the_model_places_them():
  weights = np.zeros((5, 3))
  weights[4, 0] = weights[1, 1] = 1.0
  weights[[2, 3], 2] = 0.5
  assert ordered_by_time(weights, [0, 1, 2]) == [1, 2, 0]


@pytest.fixture(scope='module')
def stage1_workdir(synthetic_signs_dir, pretrained_dir, tmp_path_factory):
  """4 pseudo-gloss steps, killed after step 2's checkpoint and resumed."""
  workdir = tmp_path_factory.mktemp('sign2gpt_stage1')
  config = tiny_config(synthetic_signs_dir, pretrained_dir)
  workdirs.prepare(str(workdir), config, 'train')
  return workdir, *train_killed_and_resumed(config, workdir)


def test_stage1_resumes_bitwise_keeps_dinov2_frozen_and_draws_where_glosses_are(
    stage1_workdir, pretrained_dir):
  workdir, best, uninterrupted, logs = stage1_workdir
  assert set(best) == {'pseudo_gloss_f1', 'pseudo_gloss_class_f1'}
  assert_resumed_bitwise(workdir, uninterrupted, logs)
  # The vocabulary: sorted, from the train split, without glosses of >= 40% of its sentences.
  vocabulary = json.loads((workdir / 'pseudo_glosses.json').read_text())
  assert vocabulary['language'] == 'en'
  glosses = vocabulary['pseudo_glosses']
  assert glosses == sorted(glosses) and {'rain', 'snow', 'fog'} & set(glosses)
  assert not {'will', 'be', 'the', 'in'} & set(glosses)  # auxiliaries, determiners, adpositions
  assert np.load(workdir / 'word_vectors.npy').shape == (len(glosses), 300)
  # DINOv2's released weights are unchanged; its LoRA and everything after it trained.
  released = nnx.state(load_dinov2(str(pretrained_dir / 'dinov2')))
  for path, value in nnx.to_flat_state(released):
    key = ('params', 'frames', 'backbone', *map(str, path))
    np.testing.assert_array_equal(uninterrupted[key], value.get_value(), err_msg=str(path))
  lora_keys = [k for k in uninterrupted if 'lora_b' in k]
  assert lora_keys and all('layers' in k and k[k.index('layers') + 1] in ('1', '2')
                           for k in lora_keys)  # the last 2 of 3 blocks
  assert any(np.any(uninterrupted[k] != 0) for k in lora_keys)
  lines = (workdir / 'predictions' / 'dev_step4.pseudo_gloss.txt').read_text().splitlines()
  assert len(lines) == 6 and all(set(l.split()) <= set(glosses) for l in lines)
  pictures = sorted((workdir / 'predictions' / 'dev_step4.pseudo_gloss_time').iterdir())
  assert len(pictures) == 2
  assert all(p.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and p.stat().st_size > 1000
             for p in pictures)


@pytest.fixture(scope='module')
def stage2_workdir(stage1_workdir, synthetic_signs_dir, pretrained_dir, tmp_path_factory):
  """4 translation steps from stage 1, killed after step 2's checkpoint and resumed, with XGLM's
  layers rematerialised (the adapters' cross-attention inside them)."""
  workdir = tmp_path_factory.mktemp('sign2gpt_stage2')
  config = tiny_config(synthetic_signs_dir, pretrained_dir, 'runlocal_translation',
                       **{'init.pretraining': str(stage1_workdir[0]), 'model.remat': 'full'})
  workdirs.prepare(str(workdir), config, 'train')  # config.json, as sltjax.main writes it
  return workdir, *train_killed_and_resumed(config, workdir)


def test_stage2_starts_from_stage1_keeps_the_lm_frozen_and_resumes_bitwise(
    stage1_workdir, stage2_workdir, pretrained_dir):
  workdir, best, uninterrupted, logs = stage2_workdir
  assert 'bleu4' in best
  assert_resumed_bitwise(workdir, uninterrupted, logs)
  start = read_best_variables(str(stage1_workdir[0]))
  # The released XGLM is unchanged, the adapters moved (gates away from 0 included).
  released = nnx.state(load_xglm(str(pretrained_dir / 'xglm')))
  for path, value in nnx.to_flat_state(released):
    np.testing.assert_array_equal(uninterrupted[('params', 'lm', *map(str, path))], value.get_value(),
                                  err_msg=str(path))
  gates = [v for k, v in uninterrupted.items() if k[-1] == 'gate']
  assert len(gates) == 2 and any(np.any(g != 0) for g in gates)
  assert not any(k[1] == 'head' for k in uninterrupted)  # the prototype head is dropped
  # Stage 2 starts from stage 1's frame and sign encoders, values included.
  config = workdirs.load_config(str(workdir))
  exp = train.build_experiment(config, str(workdir))
  params, _ = exp.init_variables()
  assert exp.lm_config.remat == 'full'
  started = {('params', *map(str, path)): np.asarray(v.get_value())
             for path, v in nnx.to_flat_state(params)}
  copied = [k for k in start if k[0] == 'params' and k[1] in ('frames', 'sign_encoder')]
  assert len(copied) > 10
  for key in copied:
    np.testing.assert_array_equal(started[key], start[key], err_msg=str(key))
  assert json.loads((workdir / 'architectures.json').read_text())['lm']['num_layers'] == 2


@pytest.mark.skipif(not VIDEOS.exists(), reason=f'shared videos not found at {VIDEOS}')
def test_translate_reads_a_stage2_workdir_and_refuses_a_stage1_one(stage1_workdir,
                                                                   stage2_workdir):
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  videos = [str(VIDEOS / 'test_video.mp4'), str(VIDEOS / 'FOOTBALL.mp4')]
  done = subprocess.run([sys.executable, '-m', 'sltjax.translate',
                         f'--workdir={stage2_workdir[0]}', *videos], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stdout + done.stderr
  lines = [l for l in done.stdout.splitlines() if l.startswith(tuple(videos))]
  assert len(lines) == 2
  refused = subprocess.run([sys.executable, '-m', 'sltjax.translate',
                            f'--workdir={stage1_workdir[0]}', videos[0]], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
  assert refused.returncode != 0
  assert 'translating videos is not possible' in refused.stdout + refused.stderr
