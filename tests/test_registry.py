"""The system registry, workdirs and user errors: a plug-in system defined in a test module trains
through sltjax.main with no edit to any shared file; errors a user can fix end with their message
alone (status 2); a damaged newest checkpoint is skipped on resume and a damaged best/ is named."""
import importlib
import json
import os
import subprocess
import sys

import pytest

from sltjax import experiments, workdirs
from sltjax import main as main_module
from sltjax.config_validation import validate
from sltjax.errors import UserError
from sltjax.experiments.base import TRANSLATE_VIDEOS
from tests.conftest import (COMPILATION_CACHE, MBART_DIR, REPO, SHARED_DATA, needs_shared_data,
                            read_metrics)

PLUGIN_CONFIG = 'tests/plugin/linear_regression_config.py'


def main(workdir, *flags, config=PLUGIN_CONFIG):
  return subprocess.run(
      [sys.executable, '-m', 'sltjax.main', f'--config={config}', f'--workdir={workdir}',
       f'--compilation_cache={COMPILATION_CACHE}', *flags],
      cwd=REPO, env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, capture_output=True, text=True,
      timeout=300)


def assert_user_error(result, *fragments):
  """Exit status 2 and one 'error: ...' message, no traceback."""
  assert result.returncode == 2, result.stderr
  assert 'Traceback' not in result.stderr
  assert 'error: ' in result.stderr
  for fragment in fragments:
    assert fragment in result.stderr


def dev_mse(workdir):
  return {m['step']: m['mse'] for m in read_metrics(workdir) if m['split'] == 'dev'}


def truncate_files(directory):
  """Cuts every file of a checkpoint item in half, as a disk that filled up would leave it."""
  count = 0
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      size = os.path.getsize(path)
      if size > 16:
        with open(path, 'r+b') as f:
          f.truncate(size // 2)
        count += 1
  assert count


@pytest.fixture(scope='module')
def plugin_runs(tmp_path_factory):
  """The plug-in trained to 60 steps (checkpoints 30, 60) and a reference run to 90 steps."""
  root = tmp_path_factory.mktemp('plugin')
  for name, steps in (('run', 60), ('reference', 90)):
    result = main(root / name, f'--config.total_steps={steps}')
    assert result.returncode == 0, result.stderr
  return root


@pytest.mark.slow
def test_plugin_system_trains_and_keeps_the_lowest_mse_as_best(plugin_runs):
  mse = dev_mse(plugin_runs / 'run')
  assert set(mse) == {30, 60} and mse[60] < mse[30] < 5.0  # it learns the weights
  best_meta = json.loads(next((plugin_runs / 'run' / 'best').glob('*/meta/metadata')).read_text())
  assert best_meta['mse'] == min(mse.values())  # lower is better: the registered direction
  saved = json.loads((plugin_runs / 'run' / 'config.json').read_text())
  assert saved['system'] == 'tests.plugin.linear_regression'


@pytest.mark.slow
def test_resume_skips_a_damaged_newest_checkpoint_and_keeps_it(plugin_runs, tmp_path):
  workdir = tmp_path / 'run'
  subprocess.run(['cp', '-r', str(plugin_runs / 'run'), str(workdir)], check=True)
  truncate_files(workdir / 'checkpoints' / '60' / 'state')
  result = main(workdir, '--config.total_steps=90')
  assert result.returncode == 0, result.stderr
  assert 'checkpoint of step 60 is unreadable' in result.stderr
  assert 'Resumed from step 30' in result.stderr + result.stdout
  assert (workdir / 'damaged_checkpoints' / '60' / 'state').is_dir()  # moved, not deleted
  # Redone from step 30, the run ends exactly where an uninterrupted one does.
  assert dev_mse(workdir)[90] == dev_mse(plugin_runs / 'reference')[90]


@pytest.mark.slow
def test_eval_on_a_damaged_best_checkpoint_names_it(plugin_runs, tmp_path):
  workdir = tmp_path / 'run'
  subprocess.run(['cp', '-r', str(plugin_runs / 'run'), str(workdir)], check=True)
  best = next((workdir / 'best').iterdir())
  truncate_files(best / 'params')
  assert_user_error(main(workdir, '--mode=eval'), f'The best checkpoint {best} cannot be read',
                    'restore them from a copy')


def test_user_errors_print_their_message_alone(tmp_path):
  assert_user_error(main(tmp_path / 'a', '--config.optimizer.learnig_rate=1'),
                    '--config.optimizer.learnig_rate: tests/plugin/linear_regression_config.py '
                    'has no key optimizer.learnig_rate; the nearest keys it has: '
                    'optimizer.learning_rate,')
  assert_user_error(main(tmp_path / 'b', '--config.data.train_size=4'),
                    'data.train_size=4 is smaller than batch_size')
  assert_user_error(main(tmp_path / 'c', '--config.system=nosuchsystem'),
                    "config.system='nosuchsystem' is not a registered system; built in: "
                    'c2rl, gfslt, gloss2text, mmtlb, sign2gpt (or the import path')
  assert_user_error(main(tmp_path / 'd', '--config.model.init_from=/pretrained/mbart',
                         config='configs/gloss2text.py:pretrained'),
                    '--config.model.init_from is now --config.init.model.')
  assert_user_error(main(tmp_path / 'e', config='configs/mmtlb.py:sign2text,datset=csl_daily'),
                    "unknown option 'datset'")
  assert_user_error(main(tmp_path / 'f', config='configs/mmtlb_typo.py:sign2text'),
                    '--config=configs/mmtlb_typo.py: no such config file (the shipped ones: '
                    'configs/c2rl.py, configs/gfslt.py, configs/gloss2text.py, configs/ipslt.py, '
                    'configs/mmtlb.py')
  assert not any(tmp_path.iterdir())  # nothing written before the config is valid
  # A valid config, but nothing to evaluate: the message alone (orbax's cleanup thread, which
  # opening the checkpoints starts, once failed at exit after it).
  assert_user_error(main(tmp_path / 'g', '--mode=eval'),
                    f'No best checkpoint under {tmp_path}/g/best: train first')


def test_a_key_the_variant_lacks_is_named_with_what_it_takes_instead(tmp_path):
  """A data key of another kind of dataset names the variant, what it reads, and the choices of
  the same file that have the key (without building or reading anything)."""
  assert_user_error(
      main(tmp_path / 'a', '--config.data.path=/corpus', config='configs/gloss2text.py:runlocal'),
      '--config.data.path: configs/gloss2text.py:runlocal has no key data.path; the nearest keys '
      'it has: data.data_dir,', 'This variant reads the built video dataset synthetic_signs from '
      'data.data_dir. data.path exists in --config=configs/gloss2text.py:runlocal,'
      'dataset=phoenix2014t or --config=configs/gloss2text.py:runlocal,dataset=csl_daily')
  assert_user_error(
      main(tmp_path / 'b', '--config.data.path=/corpus',
           config='configs/mmtlb.py:runlocal_sign2gloss'),
      'configs/mmtlb.py:runlocal_sign2gloss has no key data.path',
      'This variant reads the built video dataset synthetic_signs from data.data_dir.')
  assert_user_error(
      main(tmp_path / 'c', '--config.data.data_dir=/tfds',
           config='configs/gloss2text.py:runlocal,dataset=phoenix2014t'),
      'This variant reads text files from data.path. data.data_dir exists in '
      '--config=configs/gloss2text.py:runlocal,dataset=synthetic_signs')
  assert_user_error(main(tmp_path / 'd', '--config.optimizr.learning_rate=1'),
                    'linear_regression_config.py has no key optimizr.learning_rate; the nearest '
                    'keys it has: optimizer,')
  assert not any(tmp_path.iterdir())


def test_a_missing_pretrained_network_is_named_with_its_key(synthetic_signs_dir, tmp_path):
  """Found when the run reads it (resuming, evaluating and translating do not need it); the
  message alone, with no thread of the checkpoint library left to fail at exit."""
  data = f'--config.data.data_dir={synthetic_signs_dir}'
  assert_user_error(main(tmp_path / 'mmtlb', data,
                         f'--config.model.backbone_weights={tmp_path}/s3d.pt',
                         config='configs/mmtlb.py:runlocal'),
                    f'error: model.backbone_weights={tmp_path}/s3d.pt not found: set it to the '
                    'downloaded checkpoint file or directory.\n')
  result = main(tmp_path / 'sign2gpt', data, f'--config.model.backbone_weights={tmp_path}/dinov2',
                config='configs/sign2gpt.py:runlocal')
  assert_user_error(result, f'model.backbone_weights={tmp_path}/dinov2 not found: set it to a '
                    "downloaded DINOv2 (facebook/dinov2-small, or Meta's "
                    "dinov2_vits14_pretrain.pth), or make the runlocal variants' synthetic "
                    'stand-ins first: python -m sltjax.stand_ins '
                    '--output_dir=pretrained/synthetic_signs.')
  assert result.stderr.strip().splitlines()[-1].startswith('error: ')
  result = main(tmp_path / 'c2rl', data, '--config.tokenizer.kind=mbart',
                f'--config.tokenizer.path={tmp_path}/mbart', config='configs/c2rl.py:runlocal')
  assert_user_error(result, f'error: tokenizer.path={tmp_path}/mbart: {tmp_path}/mbart/'
                    'sentencepiece.bpe.model not found: an mBART tokenizer directory holds '
                    'sentencepiece.bpe.model (as saved by transformers).\n')


@pytest.mark.parametrize('module, flags, message', [
    ('sltjax.convert', ['--model={tmp}/hf', '--output={tmp}/out'],
     '{tmp}/hf/config.json not found: point to a Hugging Face model directory'),
    ('sltjax.convert.trim_vocab', ['--model={tmp}/hf', '--output={tmp}/out', '--texts={tmp}/t.txt',
                                   '--glosses={tmp}/g.txt'],
     '{tmp}/t.txt not found: --texts and --glosses take text files'),
])
def test_conversion_commands_name_a_missing_input_in_one_line(tmp_path, module, flags, message):
  result = subprocess.run(
      [sys.executable, '-m', module, *(f.format(tmp=tmp_path) for f in flags)], cwd=REPO,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, capture_output=True, text=True, timeout=300)
  assert_user_error(result, 'error: ' + message.format(tmp=tmp_path))
  assert not (tmp_path / 'out').exists()


def test_a_tokenizer_path_the_run_would_ignore_is_refused():
  shipped = main_module.shipped_configs()
  assert {'configs/mmtlb.py', 'configs/c2rl.py', 'configs/sign2gpt.py', 'configs/gfslt.py',
          'configs/gloss2text.py', 'configs/ipslt.py'} <= set(shipped)
  for path in shipped:  # none of the shipped variants is refused for it
    module = importlib.import_module(f'configs.{os.path.basename(path)[:-3]}')
    for variant in module.VARIANTS:
      try:  # paper variants also want the user's paths (init, data)
        validate(module.get_config(variant))
      except UserError as e:
        assert 'tokenizer.path' not in str(e), (path, variant)
  from configs.c2rl import get_config  # pylint: disable=import-outside-toplevel
  config = get_config('runlocal')  # a word vocabulary built from the training texts
  config.tokenizer.path = 'pretrained/mbart_phoenix'
  with pytest.raises(UserError, match=r"tokenizer.path='pretrained/mbart_phoenix' is read only "
                     r"when tokenizer.kind is one of \['mbart', 'xglm'\]; kind='word'"):
    validate(config)


def test_a_workdir_of_another_run_is_refused_and_left_as_it_was(tmp_path):
  from configs.gloss2text import get_config  # pylint: disable=import-outside-toplevel
  legacy = get_config('runlocal').to_dict()
  del legacy['system']  # written before config.system existed
  (tmp_path / 'config.json').write_text(json.dumps(legacy))
  before = (tmp_path / 'config.json').read_text()
  assert_user_error(main(tmp_path), "these keys differ:\n  batch_size: 32 -> 8",
                    "system: 'gloss2text' -> 'tests.plugin.linear_regression'")
  assert (tmp_path / 'config.json').read_text() == before


def test_legacy_workdirs_load_as_gloss2text(tmp_path):
  from configs.gloss2text import get_config  # pylint: disable=import-outside-toplevel
  config = get_config('runlocal')
  legacy = config.to_dict()
  del legacy['system']  # written before config.system existed, with the key init.model had then
  legacy['model']['init_from'] = legacy.pop('init')['model']
  (tmp_path / 'config.json').write_text(json.dumps(legacy))
  loaded = workdirs.load_config(str(tmp_path))
  assert loaded.system == 'gloss2text' and 'init_from' not in loaded.model
  assert loaded.to_dict() == json.loads(config.to_json())
  assert experiments.experiment_class(loaded.system).system == 'gloss2text'
  changed = config.copy_and_resolve_references()
  changed.eval.num_beams, changed.total_steps = 7, 9000  # evaluation and length may change
  assert workdirs.config_differences(config.to_dict(), json.loads(changed.to_json())) == []
  changed.model.d_model = 128
  assert workdirs.config_differences(config.to_dict(), json.loads(changed.to_json())) == [
      'model.d_model: 64 -> 128']


def test_default_workdir_names_config_variant_and_dataset():
  from configs import gloss2text, mmtlb  # pylint: disable=import-outside-toplevel
  assert workdirs.default_workdir('configs/mmtlb.py:runlocal', mmtlb.get_config('runlocal')) == (
      os.path.join('workdirs', 'mmtlb_runlocal_synthetic_signs'))
  assert workdirs.default_workdir('configs/gloss2text.py', gloss2text.get_config()) == (
      os.path.join('workdirs', 'gloss2text_default_phoenix2014t'))
  argument = 'configs/mmtlb.py:sign2text,dataset=csl_daily'
  assert workdirs.default_workdir(argument, mmtlb.get_config(argument.partition(':')[2])) == (
      os.path.join('workdirs', 'mmtlb_sign2text_csl_daily'))


def test_the_dataset_choice_sets_names_languages_and_the_metric_protocol():
  from configs import gloss2text, mmtlb  # pylint: disable=import-outside-toplevel
  phoenix, csl = mmtlb.get_config('sign2text'), mmtlb.get_config('sign2text,dataset=csl_daily')
  assert (phoenix.data.name, phoenix.tokenizer.tgt_lang, phoenix.model.mapper) == (
      'phoenix2014t', 'de_DE', 'mlp')
  assert (phoenix.eval.char_level, phoenix.eval.sacrebleu_tokenize, phoenix.eval.gloss_cleanup) == (
      False, '13a', 'phoenix2014t')
  assert (csl.data.name, csl.tokenizer.src_lang, csl.tokenizer.tgt_lang) == (
      'csl_daily', 'zh_CN', 'zh_CN')
  assert (csl.eval.char_level, csl.eval.sacrebleu_tokenize, csl.eval.gloss_cleanup) == (
      True, 'zh', 'none')
  assert (csl.model.mapper, csl.model.mapper_init) == ('gloss_probs', 'gloss_embeddings')
  assert csl.total_steps == 40 * 2301  # 18,401 training videos, batch 8
  with pytest.raises(UserError, match='reads the glosses\' embeddings from the translation model'):
    validate(csl)
  assert mmtlb.get_config('runlocal').data.name == 'synthetic_signs'
  assert mmtlb.get_config('runlocal_staged,dataset=phoenix2014t').init.visual == (
      'workdirs/mmtlb_runlocal_sign2gloss_phoenix2014t')
  text_csl = gloss2text.get_config('pretrained,dataset=csl_daily')
  assert (text_csl.data.target_suffix, text_csl.eval.char_level) == ('zh', True)
  for bad, message in (('sign2text,datset=csl_daily', "unknown option 'datset'"),
                       ('sign2text,dataset=csl', "unknown dataset 'csl'"),
                       ('sign2text,sign2gloss', 'two variants'),
                       ('sign2gloss2text,runlocal', "'sign2gloss2text' has no runlocal form"),
                       ('runlocal_gloss2text', 'is now configs/gloss2text.py:mmtlb,runlocal')):
    with pytest.raises(ValueError, match=message):
      mmtlb.get_config(bad)


@needs_shared_data
def test_phoenix_sizes_the_compile_check_assumes_are_the_real_corpus_and_tokenizer():
  """--mode=compile builds PHOENIX-2014T's models from DATASETS, without the data: its sizes must
  be the real corpus's (steps per epoch, the longest frame bucket, CTC's classes) and the trimmed
  mBART's (embedding and classifier rows)."""
  from configs.common import DATASETS  # pylint: disable=import-outside-toplevel
  from transformers import MBartTokenizer  # pylint: disable=import-outside-toplevel

  from sltjax.data.tokenizers import GlossVocabulary  # pylint: disable=import-outside-toplevel
  phoenix = DATASETS['phoenix2014t']
  splits = {}
  for split in ('train', 'dev'):
    with open(SHARED_DATA / 'phoenix2014t' / f'{split}.jsonl', encoding='utf-8') as f:
      splits[split] = [json.loads(line) for line in f]
  assert phoenix.train_videos == len(splits['train']) == 7096
  assert phoenix.longest_video == max(row['num_frames'] for rows in splits.values()
                                      for row in rows)
  assert phoenix.glosses == GlossVocabulary.build(row['gloss'] for row in splits['train']).size
  assert phoenix.mbart_pieces == len(MBartTokenizer.from_pretrained(str(MBART_DIR)))


def test_the_stage_and_runlocal_are_separate_parts_and_old_spellings_say_the_new_one(capsys):
  from configs import c2rl, common, mmtlb  # pylint: disable=import-outside-toplevel
  common._NOTED.clear()  # pylint: disable=protected-access
  new = c2rl.get_config('slt,runlocal')
  assert capsys.readouterr().err == ''
  assert (new.stage, new.variant, new.data.name, new.init.visual) == (
      'slt', 'runlocal_slt', 'synthetic_signs', 'workdirs/c2rl_runlocal_synthetic_signs')
  assert c2rl.get_config('runlocal,slt,dataset=phoenix2014t').data.name == 'phoenix2014t'
  assert c2rl.get_config('pretrain,runlocal').variant == c2rl.get_config('runlocal').variant == (
      'runlocal')
  old = c2rl.get_config('runlocal_slt')
  assert old.to_dict() == new.to_dict()
  assert capsys.readouterr().err == (
      'note: configs/c2rl.py:runlocal_slt is now spelled configs/c2rl.py:slt,runlocal.\n')
  c2rl.get_config('runlocal_slt')  # once per process
  assert capsys.readouterr().err == ''
  # Both spellings name the same default workdir, so a run resumes under either.
  assert (workdirs.default_workdir('configs/mmtlb.py:staged,runlocal',
                                   mmtlb.get_config('staged,runlocal'))
          == workdirs.default_workdir('configs/mmtlb.py:runlocal_staged',
                                      mmtlb.get_config('runlocal_staged'))
          == os.path.join('workdirs', 'mmtlb_runlocal_staged_synthetic_signs'))


def test_commands_ask_the_experiment_what_it_can_do(toy_corpus, tmp_path):
  from sltjax import translate  # pylint: disable=import-outside-toplevel
  from tests.conftest import tiny_config  # pylint: disable=import-outside-toplevel
  config = tiny_config(toy_corpus)
  validate(config)
  (tmp_path / 'config.json').write_text(config.to_json_best_effort())
  with pytest.raises(UserError, match=r"translating videos is not possible with this "
                     r"'gloss2text' model \(Gloss2Text: gloss sentences -> text\); it can: only "
                     'train and evaluate'):
    translate.load_experiment(str(tmp_path))
  assert TRANSLATE_VIDEOS not in experiments.create(config, str(tmp_path)).capabilities()
