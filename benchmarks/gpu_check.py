r"""Each system's real training step at paper width on this machine's accelerator: step time,
peak memory and MFU in float32 and bfloat16 (random weights and batches, no files needed).

  python benchmarks/gpu_check.py [--systems=...] [--dtypes=float32,bfloat16] [--frames=128]
      [--steps=5] [--layers=0] [--peak_tflops=0]

The step is the one training runs (sltjax/train.py's make_train_step on the experiment
sltjax/experiments/shapes_only.py builds from the paper config: the config's optimizer, losses,
global batch and mesh over the local devices), fed random batches of the config's shapes with
the frame count capped at --frames (the papers' longest clips take 256-400). --layers > 0 cuts
the mBART / XGLM stacks to that many layers (say so when reporting). model.dtype (compute) is
set per run; parameters stay float32.

MFU = the model's matrix-product and convolution FLOPs (sltjax/compile_check.py) / step time /
the device's dense bfloat16 peak (--peak_tflops, else the table below by device kind), for both
dtypes, so that the two rows compare. Prints one markdown row per (system, dtype), then JSON.
On a CPU it runs too (tiny sizes: the test suite does), with MFU against --peak_tflops.
"""
import ast
import json
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, '.')
from configs import c2rl, common, ipslt, mmtlb, sign2gpt  # pylint: disable=wrong-import-position
from sltjax import compile_check, train  # pylint: disable=wrong-import-position
from sltjax.experiments import shapes_only  # pylint: disable=wrong-import-position
from sltjax.optim import make_optimizer  # pylint: disable=wrong-import-position

SYSTEMS = {
    'mmtlb_sign2text': lambda: mmtlb.get_config('sign2text'),
    'c2rl_pretrain': lambda: c2rl.get_config('pretrain'),
    'c2rl_slt': lambda: c2rl.get_config('slt'),
    'sign2gpt_translation': lambda: sign2gpt.get_config('translation'),
    'ipslt_mmtlb_sign2text': lambda: ipslt.get_config('mmtlb_sign2text'),
}
# Dense bfloat16 peak FLOP/s by device kind (NVIDIA's datasheets: H100 SXM5 and H200 SXM,
# 989.4 TFLOP/s without sparsity).
PEAK_BF16 = {'NVIDIA H100 80GB HBM3': 989.4e12, 'NVIDIA H200': 989.4e12}

_SYSTEMS = flags.DEFINE_list('systems', list(SYSTEMS), 'Paper configs to step.')
_DTYPES = flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes.')
_FRAMES = flags.DEFINE_integer('frames', 128, 'Cap on the frames per video (before buckets).')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps (after one compiling step).')
_LAYERS = flags.DEFINE_integer('layers', 0, '> 0: mBART / XGLM layers cut to this many.')
_BATCH = flags.DEFINE_integer('batch', 0, '> 0: the global batch instead of the paper\'s.')
_PEAK = flags.DEFINE_float('peak_tflops', 0.0, 'Dense bf16 peak of the device (TFLOP/s).')
_OVERRIDES = flags.DEFINE_multi_string('set', [], 'KEY=VALUE config overrides (python '
                                       'literals), e.g. --set=data.crop_size=112.')


def paper_config(system: str, dtype: str):
  config = SYSTEMS[system]()
  config.shapes.longest_video = min(config.shapes.longest_video, _FRAMES.value)
  config.mesh = {'data': -1, 'fsdp': 1, 'tensor': 1}
  if _BATCH.value:
    config.batch_size = _BATCH.value
  for block in _blocks(config.model):
    if 'dtype' in block:
      block.dtype = dtype
    if _LAYERS.value:
      for field in ('encoder_layers', 'decoder_layers', 'num_layers', 'layers'):
        if field in block:
          block[field] = min(block[field], _LAYERS.value)
  return common.apply_overrides(config, {key: ast.literal_eval(value) for key, value in
                                         (o.split('=', 1) for o in _OVERRIDES.value)})


def _blocks(block) -> list:
  """`block` and every config block under it (config.model's networks)."""
  found = [block]
  for value in block.values():
    if hasattr(value, 'items'):
      found += _blocks(value)
  return found


def random_batch(exp, rng: np.random.Generator) -> dict[str, jax.Array]:
  """A batch of the experiment's shapes: random frames and ids, every frame and the first
  quarter of the label positions real."""
  out = {}
  for name, spec in shapes_only.batch_shapes(exp).items():
    shape, dtype = spec.shape, np.dtype(spec.dtype)
    if name == 'frames':
      value = (rng.integers(0, 256, shape) if dtype == np.uint8 else rng.normal(size=shape))
    elif name in ('frame_mask', 'label_weights'):
      value = np.ones(shape)
    elif name == 'gloss_mask':
      value = np.arange(shape[1])[None] < max(1, shape[1] // 4)
    elif name == 'num_frames':
      value = np.full(shape, batch_frames(exp))
    elif name in ('gloss_ids', 'frame_gloss_ids'):
      value = rng.integers(1, exp.glosses.size, shape)
    elif name in ('decoder_input_ids', 'labels'):
      value = rng.integers(3, exp.tokenizer.vocab_size, shape)
    elif name == 'index':
      value = np.arange(shape[0])
    else:  # multi-hot record labels (Sign2GPT's pseudo-glosses)
      value = rng.random(shape) < 0.01
    out[name] = jax.device_put(value.astype(dtype), spec.sharding)
  return out


def batch_frames(exp) -> int:
  return shapes_only.batch_shapes(exp)['frames'].shape[1]


def measure(system: str, dtype: str) -> dict:
  config = paper_config(system, dtype)
  with tempfile.TemporaryDirectory() as workdir:
    exp = shapes_only.create(config, jax.devices(), workdir)
    tx, schedule = make_optimizer(config, exp.abstract_params)
    abstract = train.abstract_train_state(exp, tx)
    step = train.make_train_step(exp, tx, schedule, jax.tree.map(lambda x: x.sharding, abstract))
    params, rest = exp.fresh_variables()
    opt_shardings = jax.tree.map(lambda x: x.sharding, abstract['opt_state'])
    state = {'params': params, 'rest': rest,
             'opt_state': jax.jit(tx.init, out_shardings=opt_shardings)(params),
             'step': jnp.array(0, jnp.int32)}
    flops = compile_check.model_flops_per_step(config, jax.devices(), workdir)
    rng = np.random.default_rng(0)
    batch = random_batch(exp, rng)
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - start
    times = []
    for _ in range(_STEPS.value):
      start = time.perf_counter()
      state, metrics = step(state, batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  peak = _PEAK.value * 1e12 or PEAK_BF16.get(device.device_kind, 0.0)
  seconds = statistics.median(times)
  return {'system': system, 'dtype': dtype, 'device': device.device_kind,
          'global_batch': config.batch_size, 'frames': batch_frames(exp),
          'step_seconds': seconds, 'compile_seconds': compile_seconds,
          'peak_memory_bytes': stats.get('peak_bytes_in_use', 0),
          'model_flops': flops, 'mfu': flops / seconds / peak if peak else None,
          'loss': float(metrics['loss'])}


def main(argv):
  del argv
  rows = []
  print('| system | dtype | device | batch x frames | step ms | peak memory GiB | model TFLOPs '
        '| MFU |')
  print('|---|---|---|---|---|---|---|---|')
  for system in _SYSTEMS.value:
    for dtype in _DTYPES.value:
      r = measure(system, dtype)
      rows.append(r)
      mfu = f'{r["mfu"]:.1%}' if r['mfu'] is not None else 'n/a (give --peak_tflops)'
      print(f'| {system} | {dtype} | {r["device"]} | {r["global_batch"]} x {r["frames"]} | '
            f'{r["step_seconds"] * 1e3:.1f} | {r["peak_memory_bytes"] / 2**30:.2f} | '
            f'{r["model_flops"] / 1e12:.2f} | {mfu} |', flush=True)
  print(json.dumps(rows))


if __name__ == '__main__':
  app.run(main)
