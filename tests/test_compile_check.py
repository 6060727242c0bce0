"""--mode=compile: the training step compiled for a TPU slice on this CPU (libtpu), its report
checked against what the sharding and the model say it must be."""
import json
import math
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental.compilation_cache import compilation_cache

from configs import c2rl
from sltjax import compile_check, sharding
from sltjax.errors import UserError
from sltjax.models.xglm import XGLM, XGLMConfig
from sltjax.tpu_slices import GiB, Slice

pytest.importorskip('libtpu', reason='libtpu (pip install "sltjax[tpu]") compiles for TPUs')
REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module', autouse=True)
def no_persistent_cache():
  """Programs compiled for a TPU slice cannot be loaded back from JAX's persistent cache (no TPU
  client): kept out of it, as --mode=compile does, instead of written and warned about."""
  enabled = jax.config.jax_enable_compilation_cache
  jax.config.update('jax_enable_compilation_cache', False)
  compilation_cache.reset_cache()  # JAX decides once per process whether it uses the cache
  yield
  jax.config.update('jax_enable_compilation_cache', enabled)
  compilation_cache.reset_cache()


@pytest.mark.parametrize('name,jax_name,chips', [
    ('v5e-64', 'v5e:8x8', 64), ('v5litepod-16', 'v5e:4x4', 16), ('v5p-128', 'v5p:4x4x4', 64),
    ('v5p-8', 'v5p:2x2x1', 4), ('v4-32', 'v4:2x2x4', 16), ('v6e-256', 'v6e:16x16', 256),
    ('v5e:2x4', 'v5e:2x4', 8)])
def test_slice_names_count_chips_as_cloud_tpu_does(name, jax_name, chips):
  target = Slice.parse(name)
  assert (target.jax_name, target.chips) == (jax_name, chips)
  assert len(target.devices()) == chips


@pytest.mark.parametrize('name,message', [
    ('v5e-48', '48 chips is not a v5e slice shape'),
    ('v5p-7', 'count TensorCores, 2 per chip'),
    ('v5p:4x4', 'v5p slices have 3 axes'),
    ('h100-8', 'not a TPU slice name')])
def test_a_name_that_is_no_slice_says_why(name, message):
  with pytest.raises(UserError, match=message):
    Slice.parse(name)


def test_mesh_axes_that_split_a_torus_axis_still_lay_out():
  """8 x 8 over v5p-128's 4x4x4 torus: no product of physical axes is 8, which jax.make_mesh
  refuses on v5p (it splits physical axes only on v5e); the mesh splits one."""
  devices = Slice.parse('v5p-128').devices()
  with pytest.raises(NotImplementedError):
    jax.make_mesh((1, 8, 8), sharding.MESH_AXES, devices=devices)
  mesh = sharding.make_mesh({'data': 1, 'fsdp': 8, 'tensor': -1}, devices)
  assert dict(mesh.shape) == {'data': 1, 'fsdp': 8, 'tensor': 8}
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in devices)


def test_fsdp_chips_compute_only_their_own_rows():
  """A 1-layer XGLM's gradient on v5e-8 over fsdp 8, one sentence per chip: every chip's program
  holds its own row's activations and logits and gathers the weights (gradients reduce-scatter).
  Without the gathers at use (sharding.fsdp_gathered), XLA contracted weights split over their
  input dimension against the whole batch's activations: every layer held [8, 4, ...] on every
  chip (Sign2GPT's logits [global batch, 64, 256008] reached 11.6 GiB per chip on v5e-64)."""
  chips, length, vocab = 8, 4, 32768
  cfg = XGLMConfig(vocab_size=vocab, d_model=256, num_layers=1, attention_heads=4, ffn_dim=1024,
                   max_position_embeddings=64)
  mesh = sharding.make_mesh({'data': 1, 'fsdp': -1, 'tensor': 1},
                            Slice.parse(f'v5e-{chips}').devices())
  graphdef, state = nnx.split(nnx.eval_shape(lambda: XGLM(cfg, rngs=nnx.Rngs(0))))
  state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
                       sharding.named_shardings(state, mesh))
  ids = jax.ShapeDtypeStruct((chips, length), jnp.int32, sharding=sharding.batch_sharding(mesh))

  def loss(state, ids):
    with sharding.tracing_mesh(mesh):
      return nnx.merge(graphdef, state)(ids).mean()

  hlo = jax.jit(jax.grad(loss)).lower(state, ids).compile().as_text()
  # The only whole-batch arrays feed the embedding's gradient, scatter-added where the table's
  # columns live: every row's ids, and this chip's 256 / 8 columns of every row (all-to-all).
  whole_batch = set(re.findall(rf'\w+\[{chips},{length}\b[\d,]*\]', hlo))
  assert whole_batch <= {f's32[{chips},{length}]', f'f32[{chips},{length},{cfg.d_model // chips}]'}
  assert f'f32[{length},{vocab}]' in hlo  # this chip's row of logits
  assert f'f32[{vocab},{cfg.d_model}]' in hlo  # the gathered embedding table


def test_model_flops_count_products_and_convolutions_exactly():
  def f(x, w, k):
    y = jnp.einsum('btd,de->bte', x, w)  # 2 * 2*5*8*16
    z = jax.lax.conv_general_dilated(y[..., None], k, (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jax.lax.scan(lambda c, _: (c @ w @ w.T, None), x, length=3)[0].sum() + z.sum()
  args = (np.zeros((2, 5, 8), np.float32), np.zeros((8, 16), np.float32),
          np.zeros((3, 3, 1, 4), np.float32))
  flops = compile_check.jaxpr_matmul_flops(jax.make_jaxpr(f)(*args).jaxpr)
  product = 2 * 2 * 5 * 8 * 16
  conv = 2 * (2 * 5 * 16 * 4) * (3 * 3 * 1)  # every output: a 3x3x1 window
  scanned = 3 * 2 * product  # c @ w, then @ w.T, three times
  assert flops == product + conv + scanned


def test_collectives_are_read_from_the_optimised_hlo():
  hlo = '\n'.join([
      '%ar = f32[1024,1024]{1,0} all-reduce(f32[1024,1024]{1,0} %g), to_apply=%add',
      '%ags = (bf16[8,256]{1,0}, bf16[64,256]{1,0}) all-gather-start(bf16[8,256]{1,0} %w)',
      '%agd = bf16[64,256]{1,0} all-gather-done((bf16[8,256], bf16[64,256]) %ags)',
      '%rs = f32[128]{0} reduce-scatter(f32[1024]{0} %x), dimensions={0}',
      '%t = (f32[4]{0}, f32[6]{0}) all-reduce(f32[4]{0} %a, f32[6]{0} %b), to_apply=%add',
      # XLA:TPU's reduce-scatter: a fusion calling a collective computation.
      '%all-reduce-scatter.3 (input.3: f32[8,32,64]) -> f32[8,8,64] {',
      '  %f = f32[8,8,64]{2,1,0} fusion(%g), kind=kCustom, calls=%all-reduce-scatter.3, '
      'metadata={op_name="jit(step)/transpose(jvp())/dot_general"}',
      # One all-gather spread by XLA:TPU over a chain of async collective fusions: each link
      # repeats it whole, with its channel_id (31 links of XGLM's embedding table on v5e-16).
      *[f'  %all-gather.{i} = bf16[512,64]{{1,0}} all-gather(bf16[512,16]{{1,0}} %p.{i}), '
        'channel_id=9, dimensions={1}, frontend_attributes={chain_id="44"}' for i in range(3)],
      '  %all-gather.7 = bf16[512,64]{1,0} all-gather(bf16[512,16]{1,0} %q), channel_id=10'])
  assert compile_check.collective_bytes(hlo) == {
      'all-gather': 64 * 256 * 2 + 2 * 512 * 64 * 2, 'reduce-scatter': 1024 * 4 + 8 * 32 * 64 * 4,
      'all-reduce': 1024 * 1024 * 4 + 10 * 4, 'all-to-all': 0, 'collective-permute': 0}


@pytest.fixture(scope='module')
def data_parallel_report():
  """C2RL's laptop pretraining at width 128, four-way data parallel on a v5e-4 slice."""
  config = c2rl.get_config('runlocal')
  config.batch_size = 8
  config.mesh = {'data': -1, 'fsdp': 1, 'tensor': 1}
  return compile_check.compile_report(config, 'v5e:2x2'), config


def test_data_parallel_step_all_reduces_the_trained_gradients(data_parallel_report):
  report, _ = data_parallel_report
  assert report['fits'] and report['chips'] == 4 and report['mesh']['data'] == 4
  params_bytes = 4 * report['parameters']  # float32, replicated on every chip
  assert report['argument_breakdown']['parameters'] == params_bytes
  # SGD's momentum, and the schedule's step count.
  assert report['argument_breakdown']['optimizer_state'] - params_bytes in (0, 4, 8)
  expected = report['expected_collective_bytes']
  assert expected['all-reduce'] == 4 * report['trained_parameters'] == params_bytes
  compiled = report['collective_bytes']
  # The gradients, plus what the loss sums over the global batch (BatchNorm's statistics, CLCL's
  # video-text similarities): a few % here.
  assert expected['all-reduce'] <= compiled['all-reduce'] < 1.1 * expected['all-reduce']
  # Gathers and scatters are of activations (CLCL compares every video with every text), none
  # of a weight.
  assert compiled['reduce-scatter'] < 0.05 * expected['all-reduce']
  assert compiled['all-gather'] < 0.6 * expected['all-reduce']
  assert all('dot_general' in c['op'] or c['kind'] == 'all-reduce'
             for c in report['largest_collectives'])
  # XLA's argument buffers hold the state and the batch, in the chip's tiled layout (at this
  # width most of a buffer is padding: 3 colour channels and 64-wide rows fill 128-lane tiles).
  arguments = report['hbm_breakdown']['arguments']
  assert sum(report['argument_breakdown'].values()) <= arguments


def test_report_estimates_a_step_and_prints_its_json_last(data_parallel_report):
  report, _ = data_parallel_report
  chip = Slice.parse('v5e-4').chip
  assert report['estimated_step_seconds'] == max(report['bound_seconds'].values()) > 0
  assert report['bound_seconds']['compute'] == pytest.approx(
      report['flops_per_chip'] / chip.peak_bf16_flops)
  # XLA counts every operation but only the in-bounds taps of a padded convolution; the model
  # count products and convolutions, padding included (most of a 48-pixel frame's 3x3 taps).
  assert 0.7 < report['model_flops_per_step'] / report['flops_per_step'] < 1.4
  assert 0 < report['estimated_mfu'] <= 1
  table = compile_check.format_report(report, 'configs/c2rl.py:runlocal')
  assert 'v5e-4' in table and 'all-reduce' in table and 'fits' in table


def test_fsdp_shards_parameters_and_gathers_them(data_parallel_report):
  dp_report, config = data_parallel_report
  config.mesh = {'data': 1, 'fsdp': -1, 'tensor': 1}
  report = compile_check.compile_report(config, 'v5e:2x2', evaluation=False)
  expected = report['expected_collective_bytes']
  # Weights with an `embed` or `conv_out` axis are split four ways.
  sharded = expected['all-gather'] // 2
  assert 0 < sharded < 4 * report['parameters']
  assert report['argument_breakdown']['parameters'] == (
      dp_report['argument_breakdown']['parameters'] - sharded + sharded // 4)
  assert expected['reduce-scatter'] == sharded
  compiled = report['collective_bytes']
  # Weights, not activations, are gathered: no more than each split weight forward and backward
  # (less: XLA keeps some from forward to backward, and the video side's vocabulary is unused).
  assert 0 < compiled['all-gather'] <= expected['all-gather']
  assert compiled['reduce-scatter'] > 0  # gradients return to their split


def test_tensor_parallel_chips_embed_their_own_frames(data_parallel_report):
  """Four-way tensor parallel on the same slice: the batch is not split over `tensor`, yet each
  chip runs ResNet on a quarter of the frames (sharding.constrain_frames), not on all of them."""
  dp_report, config = data_parallel_report
  config.mesh = {'data': 1, 'fsdp': 1, 'tensor': -1}
  report = compile_check.compile_report(config, 'v5e:2x2', evaluation=False)
  assert report['mesh']['tensor'] == 4
  # Without the constraint: 3.5x the data-parallel step's FLOPs (5.13e9 against 1.46e9).
  assert report['flops_per_step'] < 1.25 * dp_report['flops_per_step']


@pytest.mark.slow
def test_a_step_that_does_not_fit_exits_2_with_one_line():
  run = subprocess.run(
      [sys.executable, '-m', 'sltjax.main', '--config=configs/c2rl.py:runlocal', '--mode=compile',
       '--topology=v5e-4', '--config.batch_size=4096', '--config.data.crop_size=224'],
      capture_output=True, text=True, cwd=REPO, timeout=900)
  assert run.returncode == 2, run.stderr[-2000:]
  error = [line for line in run.stderr.splitlines() if line.startswith('error:')]
  assert len(error) == 1 and 'GiB per chip on v5e-4' in error[0], run.stderr[-2000:]
  assert '--config.mesh.fsdp=N' in error[0] and '--config.batch_size' in error[0]
  report = json.loads(run.stdout.strip().splitlines()[-1])
  assert not report['fits'] and report['hbm_bytes_per_chip'] > 16 * GiB
  assert math.isclose(report['hbm_capacity_bytes'], 16 * GiB)


def test_evaluation_functions_embed_each_chips_own_frames_too(tmp_path):
  """Experiment.jitted traces evaluation functions over the mesh as the train step is traced:
  C2RL's retrieval embeddings on four-way tensor parallel cost what data parallel costs."""
  from sltjax.experiments import shapes_only  # pylint: disable=import-outside-toplevel
  target = Slice.parse('v5e:2x2')
  flops = {}
  for axis in ('data', 'tensor'):
    config = c2rl.get_config('runlocal')
    config.batch_size = config.eval.batch_size = 8
    config.mesh = {'data': 1, 'fsdp': 1, 'tensor': 1, axis: -1}
    exp = shapes_only.create(config, target.devices(), str(tmp_path / axis))
    embed = exp.jitted('embed', lambda params, rest, batch, exp=exp: exp.encode_video(
        exp.merge(params, rest), *exp.model_inputs(batch))[0])
    batch = {k: v for k, v in shapes_only.batch_shapes(exp).items()
             if k in ('frames', 'frame_mask')}
    variables = exp.abstract_variables()
    compiled = embed.lower(variables['params'], variables['rest'], batch).compile()
    flops[axis] = compiled.cost_analysis()['flops']
  # Without the frames' constraint the tensor-parallel chips each embed every frame: ~4x.
  assert flops['tensor'] < 1.25 * flops['data']


def test_the_report_compiles_evaluation_beside_the_step(data_parallel_report):
  """Pretraining's evaluation embeds the dev clips (retrieval): compiled for the slice on
  eval.batch_size rows rounded up to the four data-parallel chips."""
  report, config = data_parallel_report
  evaluation = report['evaluation']
  assert evaluation['program'] == 'video_embeddings' and 'beams' not in evaluation
  assert evaluation['rows'] == -(-config.eval.batch_size // 4) * 4
  assert evaluation['fits'] and evaluation['flops_per_chip'] > 0
  assert 0 < evaluation['hbm_bytes_per_chip'] < report['hbm_bytes_per_chip']
  assert 'Evaluation (video_embeddings:' in compile_check.format_report(report, 'c2rl')


def test_translating_stages_compile_their_beam_search(tmp_path):
  """Sign2Text's evaluation program is its beam search, compiled with the config's beams and
  length; XLA counts the search loop's body once, which more beams make costlier."""
  from sltjax.experiments import shapes_only  # pylint: disable=import-outside-toplevel
  target = Slice.parse('v5e:2x2')
  reports = {}
  for beams in (1, 4):
    config = c2rl.get_config('slt,runlocal')
    config.eval.batch_size, config.eval.num_beams = 6, beams
    exp = shapes_only.create(config, target.devices(), str(tmp_path / str(beams)))
    reports[beams] = compile_check.evaluation_report(exp, target)
  assert reports[4]['program'] == 'translate' and reports[4]['beams'] == 4
  assert reports[4]['max_new_tokens'] == config.eval.max_new_tokens
  assert reports[4]['fits'] and reports[4]['rows'] == 8  # 6 clips padded to 4 chips' multiple
  assert reports[4]['flops_per_chip'] > reports[1]['flops_per_chip'] > 0
