"""MMTLB end to end on a small synthetic_signs build: encoder inputs, each stage trains a few
steps and resumes, later stages start from earlier ones, and translate reads real videos."""
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sltjax import config_validation, experiments, train, translate
from sltjax.checkpointing import read_best_variables
from sltjax.data import batching, features, text
from sltjax.errors import UserError
from sltjax.experiments.video import open_dataset_split
from sltjax.models.mbart import MBartConfig
from sltjax.models.systems.mmtlb import MMTLB, MMTLBConfig
from tests.conftest import REPO, SHARED_DATA, shrink_video_config, tiny_config

pytestmark = pytest.mark.xdist_group("mmtlb")  # one worker builds the shared workdirs once


def tiny_mmtlb_config(data_dir, stage='sign2text', **overrides):
  """configs/mmtlb.py:runlocal shrunk to seconds (one frame bucket, tiny crops)."""
  from configs.mmtlb import get_config  # pylint: disable=import-outside-toplevel
  config = get_config('runlocal' if stage == 'sign2text' else 'runlocal_sign2gloss')
  config.stage = stage
  return shrink_video_config(config, data_dir, 32, **overrides)


def test_runlocal_trains_mbart_at_the_full_rate_and_the_release_at_a_hundredth():
  """From scratch every module learns at the base rate; the release fine-tunes mBART at 1/100
  (a merged-not-replaced param_groups once left runlocal's mBART at 2e-5: BLEU 0)."""
  from configs.mmtlb import get_config  # pylint: disable=import-outside-toplevel
  assert dict(get_config('sign2text').optimizer.param_groups) == {'^translation/': 0.01}
  for variant in ('runlocal', 'runlocal_sign2gloss'):
    assert dict(get_config(variant).optimizer.param_groups) == {}, variant
    assert get_config(variant).optimizer.frozen == '', variant


def test_release_recipes_sum_each_sentence_loss_as_the_release_and_runlocal_averages_tokens(
    synthetic_signs_dir, tmp_path):
  """The release sums CTC and cross entropy over each sentence and divides both by the batch;
  averaging the cross entropy per token (as sltjax did) weighed translation ~1/20 of
  recognition on PHOENIX-length sentences."""
  from configs.gloss2text import get_config as gloss2text_config  # pylint: disable=import-outside-toplevel
  from configs.mmtlb import get_config  # pylint: disable=import-outside-toplevel
  assert get_config('sign2text').translation_loss_per == 'sentence'
  pretrained = gloss2text_config('pretrained')
  assert (pretrained.translation_loss_per, pretrained.batch_size) == ('sentence', 64)
  assert pretrained.optimizer.frozen == '^shared/'  # the release freezes its embeddings
  assert get_config('runlocal').translation_loss_per == 'token'
  experiment = experiments.create(tiny_mmtlb_config(synthetic_signs_dir), str(tmp_path))
  model = experiment.merge(*experiment.fresh_variables())
  batch = next(iter(experiment.train_dataset()))
  results = {}
  for per in ('token', 'sentence'):
    experiment.config.translation_loss_per = per
    results[per] = experiment.loss(model, batch, None)  # deterministic: no dropout rngs
  (token_loss, token), (sentence_loss, sentence) = results['token'], results['sentence']
  rows = len(batch['labels'])
  np.testing.assert_allclose(sentence['ce'], token['ce'] * token['tokens'] / rows, rtol=1e-6)
  np.testing.assert_allclose(sentence_loss, sentence['ctc'] + sentence['ce'], rtol=1e-6)
  np.testing.assert_allclose(token_loss, token['ctc'] + token['ce'], rtol=1e-6)
  assert token['tokens'] > 2 * rows  # so the two forms differ
  experiment.config.translation_loss_per = 'word'
  with pytest.raises(UserError, match="translation_loss_per='word': set \"sentence\""):
    config_validation.validate(experiment.config)


def test_encoder_inputs_place_eos_and_language_after_the_valid_frames():
  cfg = MMTLBConfig(num_glosses=7, backbone='features', feature_dim=12, head_dim=16,
                    head_ffn_dim=32, mapper_hidden=16,
                    translation=MBartConfig(vocab_size=30, d_model=8, encoder_layers=1,
                                            decoder_layers=1, encoder_attention_heads=2,
                                            decoder_attention_heads=2, encoder_ffn_dim=16,
                                            decoder_ffn_dim=16, max_position_embeddings=32))
  model = MMTLB(cfg, rngs=nnx.Rngs(0))
  features = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 12)), jnp.float32)
  mask = jnp.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
  visual_of = nnx.jit(lambda model, features: model.visual(features, mask))
  visual = visual_of(model, features)
  assert visual['gloss_logits'].shape == (2, 5, 7) and visual['z'].shape == (2, 5, 16)
  embeds, embeds_mask = model.encoder_inputs(visual, eos_id=2, sign_lang_id=27)
  assert embeds.shape == (2, 7, 8)
  np.testing.assert_array_equal(embeds_mask, [[1] * 7, [1, 1, 1, 1, 0, 0, 0]])
  eos, lang = (np.asarray(model.translation.embed_tokens(jnp.array([i]))[0]) for i in (2, 27))
  np.testing.assert_allclose(embeds[0, 5], eos)
  np.testing.assert_allclose(embeds[0, 6], lang)
  np.testing.assert_allclose(embeds[1, 2], eos)
  np.testing.assert_allclose(embeds[1, 3], lang)
  mapped = model.mapper(visual['z'], visual['gloss_logits']) * np.sqrt(8)
  np.testing.assert_allclose(embeds[1, :2], mapped[1, :2], rtol=1e-6)
  # Padded frames change neither the valid rows' gloss logits nor the translation logits.
  changed = features.at[1, 2:].set(100.0)
  np.testing.assert_allclose(visual['gloss_logits'][1, :2],
                             visual_of(model, changed)['gloss_logits'][1, :2], atol=1e-5)
  decoder_ids = jnp.array([[27, 5, 6], [27, 7, 2]])
  logits_of = nnx.jit(lambda model, features: model(features, mask, decoder_ids)['logits'])
  np.testing.assert_allclose(logits_of(model, features)[1], logits_of(model, changed)[1],
                             atol=1e-4)
  csl = MMTLB(MMTLBConfig(**{**cfg.__dict__, 'mapper': 'gloss_probs'}), rngs=nnx.Rngs(0))
  assert csl.mapper.linear.kernel.shape == (7, 8)  # gloss probabilities -> d_model, no bias
  assert csl.encoder_inputs(csl.visual(features, mask), 2, 27)[0].shape == (2, 7, 8)


@pytest.fixture(scope='module')
def sign2gloss_workdir(synthetic_signs_dir, tmp_path_factory):
  """A Sign2Gloss run stopped after 2 of 4 steps, then resumed (the resume is checked here)."""
  workdir = tmp_path_factory.mktemp('s2g')
  config = tiny_mmtlb_config(synthetic_signs_dir, 'sign2gloss', total_steps=2,
                             **{'model.backbone': 'resnet18'})
  train.train_and_evaluate(config, str(workdir))
  config.total_steps = 4
  best = train.train_and_evaluate(config, str(workdir))
  return workdir, best


def test_sign2gloss_trains_resumes_and_scores_wer(sign2gloss_workdir):
  workdir, best = sign2gloss_workdir
  assert set(best) == {'wer', 'sub_rate', 'del_rate', 'ins_rate'}
  lines = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  train_steps = [l['step'] for l in lines if l['split'] == 'train']
  assert train_steps == [2, 4]  # the second run resumed at step 2
  assert all(np.isfinite(l['ctc']) for l in lines if l['split'] == 'train')
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['2', '4']
  predictions = (workdir / 'predictions' / 'dev_step4.gloss.txt').read_text().splitlines()
  assert len(predictions) == 6
  vocabulary = json.loads((workdir / 'glosses.json').read_text())['glosses'] + ['<unk>']
  assert all(g in vocabulary for line in predictions for g in line.split())


@pytest.mark.slow
def test_sign2text_starts_from_sign2gloss_and_sign2gloss2text_evaluates(
    sign2gloss_workdir, synthetic_signs_dir, tmp_path):
  s2g, _ = sign2gloss_workdir
  s2t = tmp_path / 's2t'
  config = tiny_mmtlb_config(synthetic_signs_dir, 'sign2text', total_steps=2,
                             eval_every_steps=2, **{'model.backbone': 'resnet18',
                                                    'init.visual': str(s2g)})
  best = train.train_and_evaluate(config, str(s2t))
  assert {'bleu4', 'wer', 'rougeL_signjoey'} <= set(best)
  assert (s2t / 'glosses.json').read_text() == (s2g / 'glosses.json').read_text()
  exp = train.build_experiment(config, str(s2t))
  params, _ = exp.init_variables()
  s2g_exp = train.build_experiment(tiny_mmtlb_config(
      synthetic_signs_dir, 'sign2gloss', **{'model.backbone': 'resnet18'}), str(s2g))
  s2g_params, _, _ = s2g_exp.eval_variables()
  np.testing.assert_array_equal(params['head']['classifier']['kernel'][...],
                                s2g_params['head']['classifier']['kernel'][...])
  # Sign2Gloss2Text: the Sign2Gloss model's glosses through a translation network.
  config = tiny_mmtlb_config(synthetic_signs_dir, 'sign2gloss2text',
                             **{'model.backbone': 'resnet18', 'init.visual': str(s2g),
                                'init.translation': str(s2t)})
  metrics = train.evaluate_checkpoint(config, str(tmp_path / 's2g2t'))
  assert {'bleu4', 'wer'} <= set(metrics)
  with pytest.raises(ValueError, match='only evaluates: run it with --mode=eval'):
    train.train_and_evaluate(config, str(tmp_path / 's2g2t'))


def test_sign2text_and_sign2gloss2text_take_translation_from_a_gloss2text_workdir(
    sign2gloss_workdir, synthetic_signs_dir, tmp_path):
  """MMTLB's recipe: configs/gloss2text.py trained on the dataset's (gloss, text) pairs supplies
  the translation network and tokenizer of Sign2Text and Sign2Gloss2Text."""
  s2g, _ = sign2gloss_workdir
  config = tiny_mmtlb_config(synthetic_signs_dir, 'sign2text', **{
      'model.backbone': 'resnet18', 'init.visual': str(s2g)})
  corpus = str(tmp_path / 'corpus')
  for split in ('train', 'dev'):
    labels = open_dataset_split(config.data, split)
    text.write_parallel(corpus, split, labels.glosses, labels.texts, target_suffix='en')
  g2t = tmp_path / 'g2t'
  network = config.model.translation
  train.train_and_evaluate(tiny_config(corpus, total_steps=2, eval_every_steps=2, **{
      'data.target_suffix': 'en', 'tokenizer.src_lang': 'en_XX', 'tokenizer.tgt_lang': 'en_XX',
      'model.max_position_embeddings': network.max_position_embeddings,
      'model.encoder_layers': network.encoder_layers,
      'model.decoder_layers': network.decoder_layers}), str(g2t))
  config.init.translation = str(g2t)
  exp = train.build_experiment(config, str(tmp_path / 's2t'))
  assert os.listdir(g2t / 'tokenizer') == ['vocab.json']  # the word vocabulary
  for name in os.listdir(g2t / 'tokenizer'):
    assert (tmp_path / 's2t' / 'tokenizer' / name).read_bytes() == (
        g2t / 'tokenizer' / name).read_bytes()
  params, _ = exp.init_variables()
  g2t_params = read_best_variables(str(g2t))
  translation = {tuple(map(str, path)): variable[...]
                 for path, variable in nnx.to_flat_state(params['translation'])}
  for path in (('shared', 'embedding'), ('decoder_layers', '0', 'fc1', 'kernel')):
    np.testing.assert_array_equal(translation[path], g2t_params[('params', *path)])
  config.stage = 'sign2gloss2text'
  assert {'bleu4', 'wer'} <= set(train.evaluate_checkpoint(config, str(tmp_path / 's2g2t')))
  # CSL-Daily's mapper: each gloss's row starts at the mean embedding of its lowercased words.
  config.stage = 'sign2text'
  config.model.update(mapper='gloss_probs', mapper_init='gloss_embeddings')
  exp = train.build_experiment(config, str(tmp_path / 's2t_csl'))
  kernel = np.asarray(exp.init_variables()[0]['mapper']['linear']['kernel'][...])
  embedding = np.asarray(g2t_params[('params', 'shared', 'embedding')])
  assert kernel.shape == (exp.glosses.size, embedding.shape[1])
  np.testing.assert_array_equal(kernel[:2], 0)  # blank, <unk>
  for row, gloss in enumerate(exp.glosses.glosses, start=2):
    ids = exp.tokenizer.encode(gloss.lower())
    np.testing.assert_allclose(kernel[row], embedding[ids].mean(axis=0), rtol=1e-6)


def test_extract_features_then_sign2text_on_them(sign2gloss_workdir, synthetic_signs_dir,
                                                 tmp_path):
  s2g, _ = sign2gloss_workdir
  s2g_config = tiny_mmtlb_config(synthetic_signs_dir, 'sign2gloss',
                                 **{'model.backbone': 'resnet18'})
  assert train.extract_features(s2g_config, str(s2g)) == {'dev': 6, 'test': 4, 'train': 24}
  directory = s2g / 'features'
  # The stored features are the best checkpoint's backbone outputs on the eval clips.
  exp = train.build_experiment(s2g_config, str(s2g))
  params, rest, _ = exp.eval_variables()
  dev = exp.open_split('dev')
  batch = next(iter(batching.make_dataset(batching.eval_plan(len(dev), 6),
                                          exp.loader(dev, train=False), 0)))
  model = exp.merge(params, rest)
  expected, mask = model.backbone(*exp.model_inputs(batch), train=False)
  dim = expected.shape[-1]  # the tiny ResNet's width
  stored = features.open_split(str(directory), 'dev', expected_dim=dim)
  assert stored.ids == dev.ids and stored.texts == dev.texts and stored.glosses == dev.glosses
  for row in range(6):
    length = int(mask[row].sum())
    assert stored.num_frames[row] == length == batch['num_frames'][row]
    np.testing.assert_allclose(stored.features(row), expected[row, :length], rtol=1e-5,
                               atol=1e-5)
  # A rerun keeps complete splits; an interrupted split (no index yet) is redone.
  before = (directory / 'train.array_record').stat().st_mtime_ns
  (directory / 'test.json').unlink()
  (directory / 'test.array_record.tmp').write_bytes(b'partial')
  assert train.extract_features(s2g_config, str(s2g)) == {'test': 4}
  assert (directory / 'train.array_record').stat().st_mtime_ns == before
  assert not (directory / 'test.array_record.tmp').exists()
  with pytest.raises(ValueError, match=f'features have {dim} channels but model.feature_dim=832'):
    features.open_split(str(directory), 'dev', expected_dim=832)
  # Sign2Text on the features: the head starts from Sign2Gloss, and it trains and scores.
  s2t = tmp_path / 's2t_features'
  config = tiny_mmtlb_config(synthetic_signs_dir, 'sign2text', total_steps=2, eval_every_steps=2,
                             **{'model.backbone': 'features', 'model.feature_dim': dim,
                                'data.features_dir': str(directory), 'init.visual': str(s2g)})
  best = train.train_and_evaluate(config, str(s2t))
  assert {'bleu4', 'wer'} <= set(best)
  assert len((s2t / 'predictions' / 'dev_step2.txt').read_text().splitlines()) == 6
  s2t_params, _ = train.build_experiment(config, str(s2t)).init_variables()
  np.testing.assert_array_equal(s2t_params['head']['classifier']['kernel'][...],
                                params['head']['classifier']['kernel'][...])
  (s2t / 'config.json').write_text(config.to_json_best_effort())
  with pytest.raises(ValueError, match=r'translating videos is not possible with this .mmtlb. model \(MMTLB sign2text on features\)'):
    translate.load_experiment(str(s2t))


def test_feature_configs_need_a_features_dir_and_a_trained_backbone(synthetic_signs_dir,
                                                                     tmp_path):
  config = tiny_mmtlb_config(synthetic_signs_dir, 'sign2text', **{'model.backbone': 'features'})
  with pytest.raises(ValueError, match='set data.features_dir'):
    config_validation.validate(config)
  config = tiny_mmtlb_config(synthetic_signs_dir, 'sign2gloss', **{'data.frame_glosses': False,
                                                                     'loss.frame_gloss_weight': 1.0})
  with pytest.raises(ValueError, match='loss.frame_gloss_weight needs the frames\' glosses'):
    config_validation.validate(config)
  config = tiny_mmtlb_config(synthetic_signs_dir, 'sign2gloss', **{'model.backbone': 'resnet18'})
  with pytest.raises(ValueError, match='features of a random network are meaningless'):
    train.extract_features(config, str(tmp_path / 'untrained'))
  assert not (tmp_path / 'untrained' / 'features').exists()


@pytest.fixture(scope='module')
def sign2text_workdir(synthetic_signs_dir, tmp_path_factory):
  """The README's end-to-end model (S3D backbone), a few steps."""
  workdir = tmp_path_factory.mktemp('s2t_s3d')
  config = tiny_mmtlb_config(synthetic_signs_dir, 'sign2text')
  best = train.train_and_evaluate(config, str(workdir))
  with open(workdir / 'config.json', 'w', encoding='utf-8') as f:  # as sltjax.main writes it
    f.write(config.to_json_best_effort())
  return workdir, best


def test_sign2text_end_to_end_with_s3d(sign2text_workdir):
  workdir, best = sign2text_workdir
  assert {'bleu4', 'wer'} <= set(best)
  texts = (workdir / 'predictions' / 'dev_step4.txt').read_text().splitlines()
  assert len(texts) == 6


def _translate(workdir, *inputs, output=None):
  command = [sys.executable, '-m', 'sltjax.translate', f'--workdir={workdir}', *map(str, inputs)]
  if output:
    command.append(f'--output={output}')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)


VIDEOS = SHARED_DATA / 'videos'


def test_folders_give_the_videos_and_frame_folders_under_them(tmp_path):
  """As PHOENIX-2014T ships its clips (split/<id>/1/*.png) and as collections of videos are
  kept; a path naming no clip stays, for its error line."""
  for folder in ('phoenix/test/b/1', 'phoenix/test/a/1', 'phoenix/test/a/1/nested', 'videos/x'):
    (tmp_path / folder).mkdir(parents=True)
  for name in ('phoenix/test/a/1/images0001.png', 'phoenix/test/a/1/nested/clip.mp4',
               'phoenix/test/b/1/images0001.JPG', 'phoenix/test/notes.txt', 'videos/b.MP4',
               'videos/x/a.webm', 'videos/x/c.txt'):
    (tmp_path / name).write_bytes(b'')
  (tmp_path / 'empty').mkdir()
  paths = [tmp_path / p for p in ('phoenix', 'videos', 'phoenix/test/a/1', 'empty', 'missing.mp4',
                                  'videos/b.MP4')]
  assert translate.expand_inputs(list(map(str, paths))) == [str(tmp_path / p) for p in (
      'phoenix/test/a/1', 'phoenix/test/b/1', 'videos/b.MP4', 'videos/x/a.webm',
      'phoenix/test/a/1', 'empty', 'missing.mp4', 'videos/b.MP4')]


@pytest.mark.skipif(not VIDEOS.exists(), reason=f'shared videos not found at {VIDEOS}')
def test_translate_real_videos_and_report_broken_inputs(sign2text_workdir, tmp_path):
  workdir, _ = sign2text_workdir
  empty = tmp_path / 'empty.mp4'
  empty.write_bytes(b'')
  text = tmp_path / 'notes.mov'
  text.write_text('not a video')
  no_frames = tmp_path / 'no_frames'
  no_frames.mkdir()
  inputs = [VIDEOS / 'FOOTBALL.mp4', empty, VIDEOS / 'test_video.mp4', text,
            VIDEOS / 'phoenix_frames', no_frames, tmp_path / 'missing.webm']
  result = _translate(workdir, *inputs, output=tmp_path / 'out.jsonl')
  assert result.returncode == 1, result.stderr
  lines = [json.loads(l) for l in (tmp_path / 'out.jsonl').read_text().splitlines()]
  assert [l['input'] for l in lines] == list(map(str, inputs))
  translated = [l for l in lines if 'error' not in l]
  assert [l['input'] for l in translated] == [str(inputs[i]) for i in (0, 2, 4)]
  assert all(isinstance(l['translation'], str) and isinstance(l['glosses'], str)
             for l in translated)
  assert translated[0]['fps'] == pytest.approx(29.97, abs=0.01)
  errors = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
  assert len(errors) == 4
  for path in (empty, text, no_frames, tmp_path / 'missing.webm'):
    assert any(str(path) in e for e in errors), (path, errors)
  assert '3 of 7 inputs translated' in result.stderr
  assert f'{VIDEOS / "FOOTBALL.mp4"}:' in result.stdout
  ok = _translate(workdir, VIDEOS)  # the folder: its two videos and its frame folder
  assert ok.returncode == 0, ok.stderr
  assert '3 of 3 inputs translated' in ok.stderr
  assert f'{VIDEOS / "phoenix_frames"}:' in ok.stdout


@pytest.mark.skipif(not VIDEOS.exists(), reason=f'shared videos not found at {VIDEOS}')
def test_translating_in_batches_gives_each_input_its_result_alone(sign2text_workdir):
  """Batches mix inputs of one length bucket and fill up with copies; no input's glosses or text
  may change with its batch (checked on real videos and frames, batches of 1, 2 and 4)."""
  workdir, _ = sign2text_workdir
  exp = translate.load_experiment(str(workdir))
  params, rest, _ = exp.eval_variables()
  paths = [str(VIDEOS / 'FOOTBALL.mp4'), str(VIDEOS / 'test_video.mp4'),
           str(VIDEOS / 'phoenix_frames'), str(VIDEOS / 'missing.mp4'), str(VIDEOS / 'FOOTBALL.mp4')]
  alone = translate.translate_all(exp, params, rest, paths, None, batch_size=1)
  assert alone[3] == {'input': paths[3], 'error': f'{paths[3]}: no such file or folder.'}
  assert alone[0] == alone[4]
  for batch_size in (2, 4):
    assert translate.translate_all(exp, params, rest, paths, None, batch_size) == alone
