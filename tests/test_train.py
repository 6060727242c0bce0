"""The trainer in-process on the toy corpus: learning, outputs, eval mode, NaN stop, optimizer."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from sltjax import train
from sltjax.metrics import METRIC_NAMES
from sltjax.models.mbart import MBart, MBartConfig
from sltjax.optim import make_optimizer
from tests.conftest import MBART_DIR, read_metrics, tiny_config


@pytest.fixture(scope='module')
def trained(toy_corpus, tmp_path_factory):
  """A 200-step run with evaluations at steps 100 and 200."""
  workdir = tmp_path_factory.mktemp('trained')
  config = tiny_config(toy_corpus, total_steps=200, eval_every_steps=100,
                       checkpoint_every_steps=100, log_every_steps=20)
  best = train.train_and_evaluate(config, str(workdir))
  return config, workdir, best


def test_loss_goes_down_and_learns_the_task(trained):
  _, workdir, best = trained
  losses = [m['loss'] for m in read_metrics(workdir) if m['split'] == 'train']
  assert len(losses) == 10
  assert losses[-1] < 0.7 * losses[0], losses  # label smoothing 0.1 puts the floor near 1.3
  assert best['bleu1'] > 40 and best['bleu4'] > 5, best  # an untrained model scores ~0


def test_outputs_in_the_workdir(trained):
  config, workdir, best = trained
  entries = read_metrics(workdir)
  assert [(m['step'], m['split']) for m in entries if m['split'] != 'train'] == [
      (100, 'dev'), (200, 'dev'), (best_step(entries), 'dev_best')]
  dev = [m for m in entries if m['split'] == 'dev']
  assert {'bleu1', 'bleu4', 'bleu4_13a', 'chrf', 'rougeL_signjoey', 'rougeL_f'} <= set(dev[0])
  for step in (100, 200):
    lines = (workdir / 'predictions' / f'dev_step{step}.txt').read_text().splitlines()
    assert len(lines) == 24
  assert list((workdir / 'tensorboard').glob('events.out.tfevents.*'))
  assert (workdir / 'tokenizer' / 'vocab.json').exists()
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['100', '200']
  assert [p.name for p in (workdir / 'best').iterdir()] == [str(best_step(entries))]


def best_step(entries):
  dev = [m for m in entries if m['split'] == 'dev']
  return max(dev, key=lambda m: (m['bleu4'], -m['step']))['step']


def test_eval_mode_rescores_the_best_checkpoint(trained, toy_corpus):
  config, workdir, best = trained
  metrics = train.evaluate_checkpoint(config, str(workdir))
  assert metrics == pytest.approx(best)
  step = best_step(read_metrics(workdir))
  assert (workdir / 'predictions' / f'dev_best_step{step}.txt').read_text() == (
      workdir / 'predictions' / f'dev_step{step}.txt').read_text()
  # any split present under data.path, here the training split
  config.eval.split = 'train'
  assert train.evaluate_checkpoint(config, str(workdir))['bleu1'] > 40  # as learned as dev
  config.eval.split = 'test'
  with pytest.raises(FileNotFoundError, match=r"Split 'test': missing .*Splits present .*\['dev', 'train'\]"):
    train.evaluate_checkpoint(config, str(workdir))


def test_training_refuses_to_choose_checkpoints_on_the_test_split(toy_corpus, tmp_path):
  config = tiny_config(toy_corpus, **{'eval.split': 'test'})
  with pytest.raises(ValueError, match=r"eval.split='test' while training would choose the best "
                                       r'checkpoint on the test set.*--mode=eval'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(toy_corpus, tmp_path,
                                                               monkeypatch):
  monkeypatch.chdir(tmp_path.parent)  # a relative workdir, as users type it
  config = tiny_config(toy_corpus, total_steps=20, eval_every_steps=20, checkpoint_every_steps=10)
  train.train_and_evaluate(config, tmp_path.name)
  assert [p.name for p in (tmp_path / 'best').iterdir()] == ['20']
  config.total_steps = 40
  config.optimizer.learning_rate = math.nan
  with pytest.raises(train.NonFiniteLossError,
                     match='diverged at step 21.*last good checkpoint \\(step 20\\) is kept'):
    train.train_and_evaluate(config, tmp_path.name)
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['10', '20']
  exp = train.build_experiment(config, tmp_path.name)
  restored = exp.checkpointer.latest.restore(
      20, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  leaves = jax.tree.leaves(restored.state['params'])
  assert leaves and all(np.isfinite(x).all() for x in leaves)


def test_param_groups_scale_and_freeze():
  model = MBart(MBartConfig(vocab_size=20, d_model=8, encoder_layers=1, decoder_layers=1,
                            encoder_attention_heads=2, decoder_attention_heads=2,
                            encoder_ffn_dim=16, decoder_ffn_dim=16, max_position_embeddings=8),
                rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  config = tiny_config('.', **{'optimizer.name': 'sgd', 'optimizer.grad_clip_norm': 0.0,
                               'schedule.kind': 'constant', 'schedule.warmup_steps': 0,
                               'optimizer.learning_rate': 0.1})
  config.optimizer.param_groups = {'^shared/': 0.0, 'decoder_layers/0/fc1/': 10.0}
  tx, _ = make_optimizer(config, params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  flat = dict(nnx.to_flat_state(updates))
  assert np.all(flat[('shared', 'embedding')][...] == 0)
  np.testing.assert_allclose(flat[('decoder_layers', 0, 'fc1', 'kernel')][...], -1.0, rtol=1e-6)
  np.testing.assert_allclose(flat[('encoder_layers', 0, 'fc1', 'kernel')][...], -0.1, rtol=1e-6)
  config.optimizer.param_groups = {'decoder/typo': 0.0}
  with pytest.raises(ValueError, match=r"patterns \['decoder/typo'\] match no parameter"):
    make_optimizer(config, params)


@pytest.mark.skipif(not MBART_DIR.exists(), reason=f'shared mBART tokenizer not found at {MBART_DIR}')
def test_trains_and_decodes_with_the_pretrained_mbart_vocabulary(toy_corpus, tmp_path):
  config = tiny_config(toy_corpus, total_steps=10, eval_every_steps=10, checkpoint_every_steps=10,
                       **{'tokenizer.kind': 'mbart', 'tokenizer.path': str(MBART_DIR),
                          'data.lowercase_source': True})
  best = train.train_and_evaluate(config, str(tmp_path))
  assert set(best) == set(METRIC_NAMES) - {'bleu4_zh'}  # evaluated and scored
  exp = train.build_experiment(config, str(tmp_path))
  assert exp.tokenizer.vocab_size == exp.model_config.vocab_size == 2454
  # The workdir keeps its own copy of the pretrained vocabulary.
  assert (tmp_path / 'tokenizer' / 'sentencepiece.bpe.model').read_bytes() == (
      MBART_DIR / 'sentencepiece.bpe.model').read_bytes()
  assert len((tmp_path / 'predictions' / 'dev_step10.txt').read_text().splitlines()) == 24


def test_frozen_parameters_get_no_gradient_and_no_backward_pass(toy_corpus, tmp_path):
  """Freezing the encoder leaves it bitwise unchanged, keeps its gradients out of the clipping
  norm (grad_norm is the trainable part's), and removes its backward pass from the compiled
  step (fewer FLOPs)."""
  from sltjax.optim import make_optimizer  # pylint: disable=import-outside-toplevel,reimported

  def compiled_step(config):
    exp = train.build_experiment(config, str(tmp_path))
    tx, schedule = make_optimizer(config, exp.abstract_params)
    params, rest = exp.init_variables()
    state = {'params': params, 'rest': rest, 'opt_state': tx.init(params),
             'step': jnp.array(0, jnp.int32)}
    shardings = jax.tree.map(lambda x: x.sharding, state)
    step = train.make_train_step(exp, tx, schedule, shardings)
    batch = exp.global_batch(next(iter(exp.train_dataset())))
    return step, state, batch

  no_warmup = {'schedule.warmup_steps': 0}  # step 0 must update
  free_step, free_state, batch = compiled_step(tiny_config(toy_corpus, **no_warmup))
  frozen_config = tiny_config(toy_corpus, **no_warmup, **{'optimizer.frozen': '^encoder_'})
  frozen_step, frozen_state, _ = compiled_step(frozen_config)
  flops = lambda step, state: step.lower(state, batch).compile().cost_analysis()['flops']
  assert flops(frozen_step, frozen_state) < 0.9 * flops(free_step, free_state)
  before = jax.tree.map(np.asarray, frozen_state['params'])
  after, metrics = frozen_step(frozen_state, batch)
  for path, value in nnx.to_flat_state(after['params']):
    unchanged = np.array_equal(value[...], dict(nnx.to_flat_state(before))[path][...])
    assert unchanged == str(path[0]).startswith('encoder_'), path
  assert 0 < float(metrics['grad_norm'])


def test_the_experiment_constrains_parameters_after_every_update(toy_corpus, tmp_path):
  """Experiment.constrain runs inside the jitted step, after the optimizer (as C2RL clamps its
  logit scale): the clamped parameter never leaves its bound, the others train."""
  from sltjax.optim import make_optimizer  # pylint: disable=import-outside-toplevel,reimported
  config = tiny_config(toy_corpus, **{'schedule.warmup_steps': 0, 'optimizer.learning_rate': 0.5})
  exp = train.build_experiment(config, str(tmp_path))
  bound = 0.5  # below the layer norm's initial scale of 1
  exp.constrain = lambda params: jax.tree_util.tree_map_with_path(
      lambda path, p: jnp.minimum(p, bound) if 'decoder_layer_norm' in jax.tree_util.keystr(path)
      else p, params)
  tx, schedule = make_optimizer(config, exp.abstract_params)
  params, rest = exp.init_variables()
  state = {'params': params, 'rest': rest, 'opt_state': tx.init(params),
           'step': jnp.array(0, jnp.int32)}
  step = train.make_train_step(exp, tx, schedule, jax.tree.map(lambda x: x.sharding, state))
  batches = iter(exp.train_dataset())
  before = np.asarray(params['shared']['embedding'][...])
  for _ in range(3):
    state, _ = step(state, exp.global_batch(next(batches)))
  scale = np.asarray(state['params']['decoder_layer_norm']['scale'][...])
  assert scale.max() == bound and scale.min() < bound  # clamped above, free below
  assert not np.allclose(np.asarray(state['params']['shared']['embedding'][...]), before)
