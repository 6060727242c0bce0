r"""Memory of the CLCL contrastive loss and its gradient over a global batch, per device.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 .venv/bin/python benchmarks/clcl_memory.py

Random features (frames 100, tokens 32, dim 512, every position valid), videos sharded over the
devices of one 'data' axis, every device scoring its videos against every text of the global
batch (the negatives of the whole batch). For global batches 32, 128 and 512 prints XLA's
per-device memory analysis (compiled, not run) of value_and_grad of the loss, computed whole
(the [videos, texts, frames, tokens] similarity at once) and in text blocks (recomputed in the
backward pass), and the ratio.
"""
import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from sltjax.losses import clcl_similarity, contrastive_loss


def loss_fn(video, video_mask, text, text_mask, text_block, mesh):
  # Every device needs every text: gather them (the global batch's negatives).
  replicated = NamedSharding(mesh, P())
  text = jax.lax.with_sharding_constraint(text, replicated)
  text_mask = jax.lax.with_sharding_constraint(text_mask, replicated)
  v2t, t2v = clcl_similarity(video, video_mask, text, text_mask, text_block=text_block)
  positives = jnp.eye(video.shape[0])
  return contrastive_loss(v2t, t2v, positives, jnp.log(1 / 0.07), label_smoothing=0.2)


def per_device_bytes(batch, frames, tokens, dim, text_block, mesh):
  shard = NamedSharding(mesh, P('data'))
  args = (jax.ShapeDtypeStruct((batch, frames, dim), jnp.float32, sharding=shard),
          jax.ShapeDtypeStruct((batch, frames), jnp.float32, sharding=shard),
          jax.ShapeDtypeStruct((batch, tokens, dim), jnp.float32, sharding=shard),
          jax.ShapeDtypeStruct((batch, tokens), jnp.float32, sharding=shard))
  step = jax.jit(jax.value_and_grad(
      functools.partial(loss_fn, text_block=text_block, mesh=mesh), argnums=(0, 2)))
  analysis = step.lower(*args).compile().memory_analysis()
  return analysis.temp_size_in_bytes + analysis.argument_size_in_bytes + (
      analysis.output_size_in_bytes)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batches', default='32,128,512')
  parser.add_argument('--frames', type=int, default=100)
  parser.add_argument('--tokens', type=int, default=32)
  parser.add_argument('--dim', type=int, default=512)
  parser.add_argument('--text_block', type=int, default=16)
  args = parser.parse_args()
  mesh = jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))
  print(f'{jax.device_count()} devices; frames {args.frames}, tokens {args.tokens}, dim '
        f'{args.dim}; text block {args.text_block}')
  print('| global batch | whole (MiB/device) | blocks (MiB/device) | ratio |')
  print('|---|---|---|---|')
  for batch in map(int, args.batches.split(',')):
    whole, blocks = (per_device_bytes(batch, args.frames, args.tokens, args.dim, block, mesh)
                     / 2 ** 20 for block in (0, args.text_block))
    print(f'| {batch} | {whole:,.0f} | {blocks:,.0f} | {blocks / whole:.2f}x |')


if __name__ == '__main__':
  np.set_printoptions(precision=3)
  main()
