"""IP-SLT's refinement as a plug-in: shapes and masks, weights shared across iterations, the
distillation teacher, inference through one prototype, starts, K = 0 equal to the base system,
and the plug-in on Gloss2Text, MMTLB Sign2Text and C2RL Sign2Text end to end."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sltjax import train, workdirs
from sltjax.config_validation import validate
from sltjax.checkpointing import read_best_variables
from sltjax.decoding import encoder_decoder_search
from sltjax.errors import UserError
from sltjax.losses import prototype_mse, token_distillation_kl
from sltjax.models import mbart
from sltjax.models.mbart import MBartConfig
from sltjax.models.systems import ipslt
from sltjax.models.systems.ipslt import IterativePrototypeMBart, PrototypeConfig
from tests.conftest import (apply_overrides, assert_resumed_bitwise, read_metrics, run_main,
                            shrink_video_config, tiny_config, train_killed_and_resumed)

pytestmark = pytest.mark.xdist_group('ipslt')

CFG = MBartConfig(vocab_size=30, d_model=16, encoder_layers=2, decoder_layers=2,
                  encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                  decoder_ffn_dim=32, max_position_embeddings=32)
PAD = 1
SOURCE = jnp.array([[5, 6, 7, 8, 2, 0], [9, 10, 2, 0, PAD, PAD], [11, 2, 0, PAD, PAD, PAD]])
DECODER_INPUTS = jnp.array([[0, 12, 13, 14], [0, 15, 16, PAD], [0, 17, PAD, PAD]])
LABELS = jnp.array([[12, 13, 14, 2], [15, 16, 2, PAD], [17, 2, PAD, PAD]])


def network(iterations=3, seed=0, **options):
  return ipslt.translation_network(CFG, PrototypeConfig(iterations=iterations, **options),
                                   rngs=nnx.Rngs(seed))


def loss_of(model, inputs_embeds, **kw):
  mask = (SOURCE != PAD).astype(jnp.int32)
  return model.translation_loss(mask, DECODER_INPUTS, LABELS, (LABELS != PAD).astype(jnp.float32),
                                inputs_embeds=inputs_embeds, label_smoothing=0.1, **kw)


def test_prototypes_keep_shape_and_ignore_padding_and_weights_do_not_grow_with_k():
  model = network(3)
  mask = (SOURCE != PAD).astype(jnp.int32)
  embeds = model.embed_tokens(SOURCE)
  prototypes = model.prototypes(None, mask, inputs_embeds=embeds)
  assert len(prototypes) == 4 and all(p.shape == (3, 6, 16) for p in prototypes)
  assert not np.allclose(prototypes[0], prototypes[3])  # the refinement changes the prototype
  # Padded source positions change nothing at valid ones, in any iteration or in the loss.
  noisy = jnp.where((mask == 0)[..., None], 100.0 * jnp.ones_like(embeds), embeds)
  for clean, changed in zip(prototypes, model.prototypes(None, mask, inputs_embeds=noisy)):
    np.testing.assert_allclose(np.where(mask[..., None], clean, 0),
                               np.where(mask[..., None], changed, 0), atol=1e-5)
  np.testing.assert_allclose(loss_of(model, embeds)[0], loss_of(model, noisy)[0], rtol=1e-5)
  # E2 and D2 serve every iteration: K changes no parameter.
  shapes = lambda m: {p: v.shape for p, v in nnx.to_flat_state(nnx.state(m, nnx.Param))}
  assert shapes(network(1)) == shapes(network(3)) == shapes(network(5))
  base = shapes(network(0))
  assert isinstance(network(0), mbart.MBart) and not isinstance(network(0),
                                                                 IterativePrototypeMBart)
  extra = {p[0] for p in set(shapes(model)) - set(base)}
  assert extra == {'refine_layers', 'refine_layer_norm', 'refined_decoder'}
  # Y^0 and Y^K (lm_iterations='first_last') get LM losses; Y^1, Y^2 are KL students.
  loss, metrics = loss_of(model, embeds)
  assert set(metrics) == {'ce_0', 'ce_1', 'ce_2', 'ce', 'distillation', 'tokens'}
  np.testing.assert_allclose(loss, metrics['ce_0'] + metrics['ce'] + metrics['distillation'],
                             rtol=1e-6)
  assert metrics['tokens'] == 9


@pytest.mark.parametrize('distillation', ['kl', 'mse'])
def test_the_distillation_teacher_gets_no_gradient(distillation):
  """The distillation term's gradient equals that of the same term against a constant teacher:
  nothing flows through the last iteration."""
  model = network(3, distillation=distillation, distill_initial=True)
  mask = (SOURCE != PAD).astype(jnp.int32)
  weights = (LABELS != PAD).astype(jnp.float32)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def outputs(params):
    m = nnx.merge(graphdef, params, rest)
    prototypes = m.prototypes(SOURCE, mask)
    return prototypes, m.iteration_logits(prototypes, mask, DECODER_INPUTS, [0, 1, 2, 3], None)

  prototypes, logits = outputs(params)
  teacher = (jax.lax.stop_gradient(logits[3]) if distillation == 'kl'
             else jax.lax.stop_gradient(prototypes[3]))

  def term(params):
    m = nnx.merge(graphdef, params, rest)
    return m.translation_loss(mask, DECODER_INPUTS, LABELS, weights, input_ids=SOURCE,
                              label_smoothing=0.0)[1]['distillation']

  def against_constant(params):
    prototypes, logits = outputs(params)
    if distillation == 'kl':
      return sum(token_distillation_kl(logits[k], teacher, weights) for k in (0, 1, 2)) / 3
    return sum(prototype_mse(prototypes[k], teacher, mask) for k in (0, 1, 2)) / 3

  np.testing.assert_allclose(term(params), against_constant(params), rtol=1e-6)
  for got, want in zip(jax.tree.leaves(jax.grad(term)(params)),
                       jax.tree.leaves(jax.grad(against_constant)(params))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)
  # The loss functions themselves: no gradient reaches the teacher.
  student, target = jnp.ones((1, 2, 5)), jnp.arange(10.0).reshape(1, 2, 5)
  assert not jax.grad(lambda t: token_distillation_kl(student, t, jnp.ones((1, 2))))(target).any()
  assert not jax.grad(lambda t: prototype_mse(student, t, jnp.ones((1, 2))))(target).any()


def test_no_distillation_at_k_1_unless_the_first_translation_is_a_student():
  assert PrototypeConfig(iterations=1).students() == ()
  assert PrototypeConfig(iterations=1, distill_initial=True).students() == (0,)
  assert PrototypeConfig(iterations=3, lm_iterations='all').lm_targets() == (0, 1, 2, 3)
  assert PrototypeConfig(iterations=3, lm_iterations='last').lm_targets() == (3,)
  assert PrototypeConfig(iterations=3, distillation='none').students() == ()
  _, metrics = loss_of(network(1), network(1).embed_tokens(SOURCE))
  assert 'distillation' not in metrics and set(metrics) == {'ce_0', 'ce', 'tokens'}


def test_inference_encodes_k_times_and_decodes_one_prototype_with_d2(monkeypatch):
  model = network(3, refine_layers=2)
  calls = {'refine': 0, 'decoder_layers': [], 'cross_kv': [], 'embed_source': 0}
  refine_call = ipslt.RefinementLayer.__call__
  decoder_call = mbart.DecoderLayer.__call__
  cross_kv = mbart.MBart.cross_attention_kv
  embed_source = mbart.MBart.embed_source

  def count_refine(self, *args):
    calls['refine'] += 1
    return refine_call(self, *args)

  def count_decoder(self, *args, **kw):
    calls['decoder_layers'].append(self)
    return decoder_call(self, *args, **kw)

  def count_cross_kv(self, encoder_out, decoder=None):
    calls['cross_kv'].append(decoder or self.decoder_parts())
    return cross_kv(self, encoder_out, decoder)

  def count_embed(self, *args, **kw):
    calls['embed_source'] += 1
    return embed_source(self, *args, **kw)

  monkeypatch.setattr(ipslt.RefinementLayer, '__call__', count_refine)
  monkeypatch.setattr(mbart.DecoderLayer, '__call__', count_decoder)
  monkeypatch.setattr(mbart.MBart, 'cross_attention_kv', count_cross_kv)
  monkeypatch.setattr(mbart.MBart, 'embed_source', count_embed)
  mask = (SOURCE != PAD).astype(jnp.int32)
  with jax.disable_jit():  # every decoding step runs (and is counted) in Python
    sequences = encoder_decoder_search(
        model, SOURCE, mask, decoder_start_token_id=0, eos_token_id=2, pad_token_id=PAD,
        num_beams=2, max_new_tokens=4, length_penalty=1.0, length_penalty_style='hf',
        early_stopping=False)
  assert sequences.shape == (3, 2, 5)
  assert calls['embed_source'] == 1  # E1 once
  assert calls['refine'] == 3 * 2  # E2 (2 layers) K = 3 times
  assert calls['cross_kv'] == [model.refined_decoder]  # one prototype decoded, by D2
  steps = len(calls['decoder_layers']) // 2
  assert 1 <= steps <= 4
  d2_layers = {id(layer) for layer in model.refined_decoder.layers}
  assert all(id(layer) in d2_layers for layer in calls['decoder_layers'])  # D1 never runs


def test_teacher_forced_output_is_what_inference_decodes():
  """The plug-in network's forward pass gives D2's logits on E^K, the last iteration the loss
  trains (greedy decoding follows its argmax)."""
  model = network(2)
  mask = (SOURCE != PAD).astype(jnp.int32)
  prototypes = model.prototypes(SOURCE, mask)
  logits = model.iteration_logits(prototypes, mask, DECODER_INPUTS, [2], None)[2]
  np.testing.assert_allclose(model(SOURCE, mask, DECODER_INPUTS), logits, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(model.encode(SOURCE, mask), prototypes[-1], rtol=1e-6)


def test_config_blocks_are_checked_and_variants_keep_their_base_system(tmp_path):
  from configs import ipslt as ipslt_configs  # pylint: disable=import-outside-toplevel
  systems = {v: ipslt_configs.get_config(v).system for v in ipslt_configs.VARIANTS}
  assert systems == {'gloss2text': 'gloss2text', 'gloss2text_pretrained': 'gloss2text',
                     'mmtlb_sign2text': 'mmtlb', 'c2rl_sign2text': 'c2rl',
                     'runlocal_gloss2text': 'gloss2text', 'runlocal_mmtlb_sign2text': 'mmtlb',
                     'runlocal_c2rl_sign2text': 'c2rl'}
  config = ipslt_configs.get_config('runlocal_mmtlb_sign2text')
  assert config.stage == 'sign2text' and config.model.prototype.iterations == 3
  assert ipslt_configs.get_config('mmtlb_sign2text,dataset=csl_daily').eval.char_level
  problems = ipslt.config_problems
  config.stage = 'sign2gloss'
  assert problems(config.model, False, 'MMTLB stage sign2gloss') == [
      'model.prototype (IP-SLT) refines the encoder of a translation network, and MMTLB stage '
      'sign2gloss has none: remove the block']
  config.model.prototype.itterations = 2
  assert problems(config.model, True, 'x')[0].startswith('model.prototype has no itterations')
  del config.model.prototype['itterations']
  config.model.prototype.distillation = 'l2'
  assert problems(config.model, True, 'x') == [
      "model.prototype.distillation='l2'; expected one of ('kl', 'mse', 'none')"]
  c2rl = ipslt_configs.get_config('runlocal_c2rl_sign2text')
  c2rl.stage = 'slret'
  with pytest.raises(UserError, match='system c2rl stage slret has none'):
    train.build_experiment(c2rl, str(tmp_path / 'slret'))
  # A decoder-only translator (Sign2GPT's XGLM) has no encoder to refine: one line says so.
  from configs import sign2gpt  # pylint: disable=import-outside-toplevel
  gpt = sign2gpt.get_config('runlocal_translation')
  gpt.model.prototype = ipslt_configs.prototype()
  with pytest.raises(UserError, match=r'^Invalid config: model.prototype \(IP-SLT\) refines the '
                     r'encoder of a translation network, and system sign2gpt stage translation '
                     r'has none: remove the block\.$'):
    validate(gpt)
  # A base system's workdir does not resume with the plug-in on (nor the other way round).
  saved = tiny_config('unused').to_dict()
  with_block = tiny_config('unused').to_dict()
  with_block['model']['prototype'] = ipslt_configs.prototype().to_dict()
  differences = workdirs.config_differences(saved, with_block)
  assert 'model.prototype.iterations: (absent) -> 3' in differences
  assert workdirs.config_differences(with_block, saved)


def g2t_config(corpus, iterations=None, **overrides):
  """The tests' tiny Gloss2Text, with the plug-in when `iterations` is given."""
  config = tiny_config(corpus, total_steps=8, log_every_steps=4, eval_every_steps=4,
                       checkpoint_every_steps=4)
  if iterations is not None:
    from configs.ipslt import prototype  # pylint: disable=import-outside-toplevel
    config.model.prototype = prototype(iterations=iterations)
  return apply_overrides(config, overrides)


def test_plugin_off_and_k_0_are_the_base_system(toy_corpus, tmp_path):
  base = train.train_and_evaluate(g2t_config(toy_corpus), str(tmp_path / 'base'))
  zero = train.train_and_evaluate(g2t_config(toy_corpus, iterations=0), str(tmp_path / 'k0'))
  assert zero == base
  assert read_metrics(tmp_path / 'k0') == read_metrics(tmp_path / 'base')
  for name in ('dev_step4.txt', 'dev_step8.txt'):
    assert ((tmp_path / 'k0' / 'predictions' / name).read_text()
            == (tmp_path / 'base' / 'predictions' / name).read_text())
  base_variables = read_best_variables(str(tmp_path / 'base'))
  zero_variables = read_best_variables(str(tmp_path / 'k0'))
  assert base_variables.keys() == zero_variables.keys()
  for key, value in base_variables.items():
    np.testing.assert_array_equal(zero_variables[key], value)


@pytest.fixture(scope='module')
def ipslt_g2t_workdir(toy_corpus, tmp_path_factory):
  """Gloss2Text + IP-SLT (K 2, MSE), trained, killed after its step-4 checkpoint and resumed."""
  workdir = tmp_path_factory.mktemp('ipslt_g2t')
  config = g2t_config(toy_corpus, iterations=2, **{'model.prototype.distillation': 'mse',
                                                   'model.prototype.lm_iterations': 'all'})
  workdirs.prepare(str(workdir), config, 'train')
  return workdir, config, *train_killed_and_resumed(config, workdir, last_step=8)


def test_gloss2text_with_the_plugin_resumes_bitwise_and_evaluates(ipslt_g2t_workdir):
  workdir, config, best, uninterrupted, logs = ipslt_g2t_workdir
  assert_resumed_bitwise(workdir, uninterrupted, logs)
  train_lines = [line for line in read_metrics(workdir) if line['split'] == 'train']
  assert {'ce_0', 'ce_1', 'ce', 'distillation'} <= set(train_lines[-1])
  assert any(key[:2] == ('params', 'refined_decoder') for key in uninterrupted)
  assert train.evaluate_checkpoint(config, str(workdir)) == best


def test_refinement_starts_as_copies_unless_a_start_brings_it(ipslt_g2t_workdir, toy_corpus,
                                                             tmp_path):
  ipslt_workdir, *_ = ipslt_g2t_workdir
  base = tmp_path / 'base'
  train.train_and_evaluate(g2t_config(toy_corpus, total_steps=4), str(base))
  config = g2t_config(toy_corpus, iterations=3, **{'init.model': str(base),
                                                   'model.encoder_layers': 2})
  with pytest.raises(UserError, match='architecture differs'):  # E1 must match the start's
    train.build_experiment(config, str(tmp_path / 'deeper')).init_variables()
  config = g2t_config(toy_corpus, iterations=3, **{'init.model': str(base)})
  params, _ = train.build_experiment(config, str(tmp_path / 'from_base')).init_variables()
  started = read_best_variables(str(base))

  def value(*path):
    node = params
    for key in path:
      node = node[key]
    return np.asarray(node[...])

  np.testing.assert_array_equal(value('encoder_layers', 0, 'fc1', 'kernel'),
                                started[('params', 'encoder_layers', '0', 'fc1', 'kernel')])
  for copy, origin in ((('refine_layers', 0, 'fc1', 'kernel'), ('encoder_layers', 0, 'fc1',
                                                                  'kernel')),
                       (('refine_layers', 0, 'cross_attn', 'q_proj', 'kernel'),
                        ('encoder_layers', 0, 'self_attn', 'q_proj', 'kernel')),
                       (('refine_layer_norm', 'scale'), ('encoder_layer_norm', 'scale')),
                       (('refined_decoder', 'layers', 0, 'encoder_attn', 'v_proj', 'kernel'),
                        ('decoder_layers', 0, 'encoder_attn', 'v_proj', 'kernel')),
                       (('refined_decoder', 'embed_positions', 'embedding'),
                        ('decoder_embed_positions', 'embedding'))):
    np.testing.assert_array_equal(value(*copy), value(*origin), err_msg=str(copy))
  # A start that holds the refinement (an IP-SLT workdir) brings it instead.
  config = g2t_config(toy_corpus, iterations=3, **{'init.model': str(ipslt_workdir)})
  params, _ = train.build_experiment(config, str(tmp_path / 'from_ipslt')).init_variables()
  trained = read_best_variables(str(ipslt_workdir))
  np.testing.assert_array_equal(value('refine_layers', 0, 'fc1', 'kernel'),
                                trained[('params', 'refine_layers', '0', 'fc1', 'kernel')])
  assert not np.array_equal(value('refine_layers', 0, 'fc1', 'kernel'),
                            value('encoder_layers', 0, 'fc1', 'kernel'))


def test_mmtlb_sign2text_with_the_plugin_trains_evaluates_and_translates(synthetic_signs_dir,
                                                                         tmp_path):
  from configs.ipslt import get_config  # pylint: disable=import-outside-toplevel
  from sltjax import translate  # pylint: disable=import-outside-toplevel
  from sltjax.experiments.video import open_dataset_split  # pylint: disable=import-outside-toplevel
  config = get_config('runlocal_mmtlb_sign2text')
  config.init.visual = config.init.translation = ''  # from scratch: the tiny run needs no stages
  config.optimizer.frozen = ''
  config = shrink_video_config(config, synthetic_signs_dir, 32, **{
      'model.backbone': 'resnet18', 'model.prototype.iterations': 2})
  workdir = tmp_path / 's2t'
  workdirs.prepare(str(workdir), config, 'train')
  best = train.train_and_evaluate(config, str(workdir))
  assert {'bleu4', 'wer'} <= set(best)
  last = [line for line in read_metrics(workdir) if line['split'] == 'train'][-1]
  assert {'ctc', 'ce_0', 'ce_1', 'ce', 'distillation'} <= set(last)
  exp = translate.load_experiment(str(workdir))
  assert 'IP-SLT (K=2' in exp.describe()
  params, rest, _ = exp.eval_variables()
  batch = next(iter(exp.eval_batches(open_dataset_split(exp.config.data, 'dev'))))
  expected = (workdir / 'predictions' / 'dev_step4.txt').read_text().splitlines()
  assert exp.predict(params, rest, batch)['text'] == expected


def test_c2rl_sign2text_with_the_plugin_trains_and_evaluates(synthetic_signs_dir, tmp_path):
  from configs.ipslt import get_config  # pylint: disable=import-outside-toplevel
  config = get_config('runlocal_c2rl_sign2text')
  config.init.visual = ''
  config.optimizer.frozen = ''  # the encoder trains from scratch: no pretraining workdir needed
  config = shrink_video_config(config, synthetic_signs_dir, 16, **{
      'model.prototype.iterations': 1, 'model.prototype.distill_initial': True})
  best = train.train_and_evaluate(config, str(tmp_path / 'slt'))
  assert 'bleu4' in best
  last = [line for line in read_metrics(tmp_path / 'slt') if line['split'] == 'train'][-1]
  assert {'ce_0', 'ce', 'distillation'} <= set(last)


@pytest.mark.slow
def test_eight_devices_and_remat_give_the_single_device_loss(toy_corpus, tmp_path):
  """configs/ipslt.py through sltjax.main, on 1 device and on data 2 x fsdp 2 x tensor 2 of 8
  with every layer (the refinement's included) rematerialised."""
  from configs.ipslt import get_config  # pylint: disable=import-outside-toplevel
  argument = 'configs/ipslt.py:runlocal_gloss2text,dataset=phoenix2014t'
  config = get_config(argument.partition(':')[2])
  reference = tiny_config(toy_corpus, total_steps=12, log_every_steps=4, eval_every_steps=0,
                          checkpoint_every_steps=12)
  reference.model.prototype = config.model.prototype
  reference.model.prototype.iterations = 2
  one = run_main(reference, tmp_path / 'one', base_argument=argument)
  assert one.returncode == 0, one.stderr
  eight = run_main(reference, tmp_path / 'eight', '--config.mesh.data=2', '--config.mesh.fsdp=2',
                   '--config.mesh.tensor=2', '--config.model.remat=full', devices=8,
                   base_argument=argument)
  assert eight.returncode == 0, eight.stderr
  losses = lambda w: [m['loss'] for m in read_metrics(w) if m['split'] == 'train']
  assert len(losses(tmp_path / 'one')) == 3
  np.testing.assert_allclose(losses(tmp_path / 'eight'), losses(tmp_path / 'one'), rtol=1e-4)
