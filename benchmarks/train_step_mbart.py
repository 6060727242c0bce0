r"""Training-step time and memory of full-size mBART (mBART-large-cc25 shapes, trimmed vocabulary).

  .venv/bin/python benchmarks/train_step_mbart.py [--batch=8] [--steps=3] [--peak_tflops=...]

Each variant (compute dtype x rematerialisation) runs in its own process so that its peak resident
memory is its own: Adam, label-smoothed cross entropy, float32 master weights, source and target
length 32. Prints per variant: compile time, median step time, XLA's memory analysis (arguments
+ temporaries), the process's peak RSS, XLA's FLOPs per step (rematerialisation included) and the
model FLOPs 6 * parameters * tokens (source and target each `length` per sentence); with
--peak_tflops (the device's peak, e.g. 989 for an H100's dense bf16) MFU = model FLOPs / step
time / peak.
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = (('float32', 'none'), ('bfloat16', 'none'), ('float32', 'full'), ('bfloat16', 'full'))


def run_variant(dtype: str, remat: str, batch: int, steps: int, length: int) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from sltjax.losses import label_smoothed_cross_entropy  # pylint: disable=import-outside-toplevel
  from sltjax.models.mbart import MBart, MBartConfig  # pylint: disable=import-outside-toplevel

  cfg = MBartConfig(vocab_size=2454, dtype=dtype, remat=remat, dropout=0.1)
  graphdef, params, rest = nnx.split(
      jax.jit(lambda: MBart(cfg, rngs=nnx.Rngs(0)))(), nnx.Param, ...)
  tx = optax.adam(1e-5, b1=0.9, b2=0.998)
  state = {'params': params, 'opt_state': jax.jit(tx.init)(params), 'step': jnp.array(0)}

  def train_step(state, batch):
    def loss_fn(p):
      model = nnx.merge(graphdef, p, rest)
      logits = model(batch['input_ids'], batch['attention_mask'], batch['decoder_input_ids'],
                     rngs=nnx.Rngs(dropout=jax.random.fold_in(jax.random.key(0), state['step'])))
      total, tokens = label_smoothed_cross_entropy(logits, batch['labels'],
                                                   batch['label_weights'], 0.2)
      return total / tokens
    loss, grads = jax.value_and_grad(loss_fn)(state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    return {'params': optax.apply_updates(state['params'], updates), 'opt_state': opt_state,
            'step': state['step'] + 1}, loss

  ids = jax.random.randint(jax.random.key(1), (batch, length), 4, 2400)
  data = {'input_ids': ids, 'attention_mask': jnp.ones_like(ids), 'decoder_input_ids': ids,
          'labels': jnp.roll(ids, -1, axis=1), 'label_weights': jnp.ones(ids.shape, jnp.float32)}
  start = time.perf_counter()
  compiled = jax.jit(train_step, donate_argnums=0).lower(state, data).compile()
  compile_s = time.perf_counter() - start
  state, loss = compiled(state, data)
  jax.block_until_ready(loss)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, loss = compiled(state, data)
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - start)
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return {'dtype': dtype, 'remat': remat, 'batch': batch, 'length': length,
          'compile_s': compile_s, 'step_s': statistics.median(times), 'loss': float(loss),
          'xla_arguments_gib': memory.argument_size_in_bytes / 2**30,
          'xla_temporaries_gib': memory.temp_size_in_bytes / 2**30,
          'peak_rss_gib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
          'xla_tflop_per_step': cost.get('flops', float('nan')) / 1e12,
          'model_tflop_per_step': 6 * sum(x.size for x in jax.tree.leaves(params))
                                  * batch * length / 1e12,
          'device': str(jax.devices()[0].device_kind)}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--length', type=int, default=32)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--peak_tflops', type=float, default=0.0)
  parser.add_argument('--variant', default='', help='dtype,remat: run one variant (internal)')
  args = parser.parse_args()
  if args.variant:
    dtype, remat = args.variant.split(',')
    print(json.dumps(run_variant(dtype, remat, args.batch, args.steps, args.length)))
    return
  print('| dtype | remat | step s | compile s | XLA args + temps GiB | peak RSS GiB | XLA TFLOP/step '
        '| model TFLOP/s |' + (' MFU |' if args.peak_tflops else ''))
  print('|---|---|---|---|---|---|---|---|' + ('---|' if args.peak_tflops else ''))
  for dtype, remat in VARIANTS:
    out = subprocess.run([sys.executable, __file__, f'--variant={dtype},{remat}',
                          f'--batch={args.batch}', f'--steps={args.steps}',
                          f'--length={args.length}'], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    achieved = r['model_tflop_per_step'] / r['step_s']
    line = (f'| {dtype} | {remat} | {r["step_s"]:.2f} | {r["compile_s"]:.0f} | '
            f'{r["xla_arguments_gib"]:.2f} + {r["xla_temporaries_gib"]:.2f} | '
            f'{r["peak_rss_gib"]:.2f} | {r["xla_tflop_per_step"]:.2f} | {achieved:.3f} |')
    if args.peak_tflops:
      line += f' {100 * achieved / args.peak_tflops:.1f}% |'
    print(line, flush=True)


if __name__ == '__main__':
  main()
