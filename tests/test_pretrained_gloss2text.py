"""From a Hugging Face checkpoint to a fine-tuned Gloss2Text model: trim_vocab and convert
commands, configs/gloss2text.py:pretrained with init.model, frozen embeddings."""
import json
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs.gloss2text import get_config
from sltjax import config_validation, train, workdirs
from sltjax.convert.hf import hf_name, load_mbart, to_hf_state_dict
from sltjax.data.tokenizers import MBartTokenizer, train_sentencepiece
from tests.conftest import REPO, save_mbart_with_tokenizer

torch = pytest.importorskip('torch')


def run_module(module, *args):
  result = subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


@pytest.fixture(scope='module')
def pretrained_dir(tmp_path_factory, toy_corpus):
  """HF model (tokenizer trained on the toy corpus) -> trim_vocab -> convert, by the commands."""
  root = tmp_path_factory.mktemp('pretrained')
  texts = (toy_corpus / 'train.de').read_text().splitlines()
  glosses = (toy_corpus / 'train.gloss').read_text().splitlines()
  train_sentencepiece(texts + [g.lower() for g in glosses], str(root / 'hf'), vocab_size=200)
  save_mbart_with_tokenizer(root / 'hf', MBartTokenizer(str(root / 'hf')).vocab_size)
  files = lambda suffix: ','.join(str(toy_corpus / f'{s}.{suffix}') for s in ('train', 'dev'))
  run_module('sltjax.convert.trim_vocab', f'--model={root / "hf"}', f'--output={root / "trimmed"}',
             f'--texts={files("de")}', f'--glosses={files("gloss")}')
  out = run_module('sltjax.convert', f'--model={root / "trimmed"}', f'--output={root / "sltjax"}')
  assert 'Wrote' in out
  return root


def pretrained_config(toy_corpus, init_from, **overrides):
  config = get_config('pretrained')
  config.data.path = str(toy_corpus)
  config.data.length_buckets = (16, 32)
  config.init.model = str(init_from)
  config.update(total_steps=30, batch_size=8, log_every_steps=10, eval_every_steps=30,
                checkpoint_every_steps=30)
  config.optimizer.learning_rate = 3e-3
  config.eval.batch_size = 8
  config.eval.max_new_tokens = 8
  config.eval.num_beams = 2
  for key, value in overrides.items():
    section, name = key.split('.')
    config[section][name] = value
  return config


def best_params(workdir):
  step = max(int(p.name) for p in (workdir / 'best').iterdir())
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(workdir / 'best' / str(step) / 'params')['params']


def test_fine_tuning_starts_from_the_converted_weights_and_freezes_embeddings(
    pretrained_dir, toy_corpus, tmp_path):
  config = pretrained_config(toy_corpus, pretrained_dir / 'sltjax',
                             **{'optimizer.frozen': 'shared|embed_positions'})
  config_validation.validate(config)
  best = train.train_and_evaluate(config, str(tmp_path))
  assert set(best) >= {'bleu4', 'rougeL_signjoey'}
  # The workdir keeps the tokenizer it decodes with, whatever happens to init.model's directory.
  assert (tmp_path / 'tokenizer' / 'sentencepiece.bpe.model').read_bytes() == (
      pretrained_dir / 'sltjax' / 'sentencepiece.bpe.model').read_bytes()
  start = to_hf_state_dict(load_mbart(str(pretrained_dir / 'trimmed')))
  params = best_params(tmp_path)
  for frozen in ('shared', 'encoder_embed_positions', 'decoder_embed_positions'):
    np.testing.assert_array_equal(params[frozen]['embedding']['value'],
                                  start[hf_name((frozen, 'embedding'))])
  trained_fc1 = params['encoder_layers']['0']['fc1']['kernel']['value']
  assert not np.allclose(trained_fc1, start['model.encoder.layers.0.fc1.weight'].T)


def test_the_pretrained_variant_needs_its_start(toy_corpus):
  with pytest.raises(ValueError, match='init.model is empty'):
    config_validation.validate(get_config('pretrained'))


def test_the_moved_init_from_key_is_named_and_old_workdirs_read_it_as_init_model(tmp_path):
  config = get_config('pretrained')
  config.model.init_from = '/pretrained/mbart'
  with pytest.raises(ValueError, match='model.init_from is now init.model'):
    config_validation.validate(config)
  (tmp_path / 'config.json').write_text(json.dumps(
      {'model': {'init_from': '/pretrained/mbart', 'dropout': 0.3}, 'seed': 0}))
  saved = workdirs.load_config(str(tmp_path))
  assert saved.system == 'gloss2text' and saved.init.model == '/pretrained/mbart'
  assert 'init_from' not in saved.model


def test_a_tokenizer_of_another_vocabulary_is_refused(pretrained_dir, toy_corpus, tmp_path):
  train_sentencepiece((toy_corpus / 'train.de').read_text().splitlines(), str(tmp_path / 'other'),
                      vocab_size=100)
  config = pretrained_config(toy_corpus, pretrained_dir / 'sltjax',
                             **{'tokenizer.path': str(tmp_path / 'other')})
  with pytest.raises(ValueError, match='use the tokenizer that was trimmed with it'):
    train.build_experiment(config, str(tmp_path))


def test_convert_writes_a_pretrained_directory_into_a_bucket(pretrained_dir, bucket):
  from sltjax import storage  # pylint: disable=import-outside-toplevel
  from sltjax.checkpointing import read_best_variables  # pylint: disable=import-outside-toplevel
  from sltjax.convert import pretrained  # pylint: disable=import-outside-toplevel
  target = f'{bucket}/pretrained/mbart'
  run_module('sltjax.convert', f'--model={pretrained_dir / "trimmed"}', f'--output={target}')
  assert storage.is_complete(target)
  assert pretrained.read_architecture(target) == pretrained.read_architecture(
      str(pretrained_dir / 'sltjax'))
  assert {'sentencepiece.bpe.model', 'tokenizer_config.json', 'model_config.json'} <= set(
      storage.files_under(target))
  local, remote = read_best_variables(str(pretrained_dir / 'sltjax')), read_best_variables(target)
  assert remote.keys() == local.keys()
  for key, value in local.items():
    np.testing.assert_array_equal(remote[key], value, err_msg=str(key))
