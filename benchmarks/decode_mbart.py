r"""Beam-search decoding throughput: sltjax (XLA) vs transformers' `generate` (PyTorch), same weights.

  .venv/bin/python benchmarks/decode_mbart.py [--sizes=d512,large] [--batch_sizes=1,16,64]
      [--first_attended_length=16]

Two mBART shapes with PHOENIX-2014T's trimmed vocabulary (2,454 ids) and random weights from a
fixed seed, converted in memory with sltjax.convert.hf: `d512` (6+6 layers, 8 heads, FFN 2048:
C2RL's and GFSLT-style decoders) and `large` (mBART-large-cc25: 12+12 layers, d 1024). Both sides
decode the same right-padded batches of 8-24-token sources with num_beams=4 and 40 new tokens,
in turns (so the shared machine's slow and fast periods fall on both); medians are printed.

Per case: sentences/s of both sides, the ratio, how many outputs are identical, and what bounds
sltjax's time: the decoder's matmul FLOPs at the machine's measured matmul rate, and the bytes
a step reads (weights, self-attention cache, encoder keys/values) at its measured read bandwidth
(weights that stay in cache across steps make this share an overestimate; the self-attention
cache counts the positions the search attends to, which grow with it), each as a share of
the measured time per step. Run it on an idle machine.
"""
import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

from sltjax.convert.hf import mbart_config_from_hf, mbart_state_from_hf
from sltjax import decoding
from sltjax.decoding import attended_lengths, generate
from sltjax.models.mbart import MBart

VOCAB = 2454
LANG = VOCAB - 24  # de_DE: ends every source and starts every translation
SIZES = {
    'd512': dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                 decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048),
    'large': {},  # transformers' MBartConfig defaults are mBART-large-cc25's
}


def build_models(size: str, seed: int = 0):
  torch.manual_seed(seed)
  hf = transformers.MBartForConditionalGeneration(transformers.MBartConfig(
      vocab_size=VOCAB, scale_embedding=True, **SIZES[size])).eval()
  cfg = mbart_config_from_hf(hf.config.to_dict())
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: MBart(cfg, rngs=nnx.Rngs(0))))
  tensors = {k: v.numpy() for k, v in hf.state_dict().items()}
  return hf, nnx.merge(graphdef, mbart_state_from_hf(tensors, abstract, np.float32))


def source_batch(batch: int, seed: int):
  """Source ids [batch, 24]: 8-24 tokens each, ending with </s> de_DE, right-padded."""
  rng = np.random.default_rng(seed)
  ids = np.ones((batch, 24), np.int64)
  for i, n in enumerate(rng.integers(8, 25, size=batch)):
    ids[i, :n - 2] = rng.integers(4, VOCAB - 27, size=n - 2)
    ids[i, n - 2:n] = [2, LANG]
  return ids, (ids != 1).astype(np.int64)


def timed_alternately(functions, repeats: int):
  """Median seconds and last output of each function, run in turns."""
  times, outputs = [[] for _ in functions], [None] * len(functions)
  for _ in range(repeats):
    for i, fn in enumerate(functions):
      start = time.perf_counter()
      outputs[i] = fn()
      times[i].append(time.perf_counter() - start)
  return [statistics.median(t) for t in times], outputs


def machine_rates():
  """(matmul FLOP/s, read bytes/s) of this machine for float32, measured now with XLA: a
  1024^3 matmul, and a sum over 256 MiB (more than any cache, read once)."""
  a = jnp.ones((1024, 1024), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  big = jnp.ones((256 << 20) // 4, jnp.float32)
  read = jax.jit(jnp.sum)
  rates = []
  for fn, x, work in ((matmul, a, 2 * 1024 ** 3), (read, big, big.nbytes)):
    jax.block_until_ready(fn(x))
    start = time.perf_counter()
    for _ in range(10):
      jax.block_until_ready(fn(x))
    rates.append(10 * work / (time.perf_counter() - start))
  return rates


def step_costs(cfg, rows: int, src_len: int, max_len: int, steps: int):
  """(FLOPs, bytes read) of a decoding step over `rows` = batch*beams, on average over `steps`
  steps (the self-attention cache read grows with the search: decoding.attended_lengths)."""
  d, f, layers = cfg.d_model, cfg.decoder_ffn_dim, cfg.decoder_layers
  weights_per_layer = 4 * d * d + 2 * d * d + 2 * d * f  # self q/k/v/o, cross q/o, FFN
  flops = 2 * rows * (layers * weights_per_layer + d * cfg.vocab_size)
  weight_bytes = 4 * (layers * weights_per_layer + d * cfg.vocab_size)
  lengths = attended_lengths(max_len)
  attended = np.mean([min(n for n in lengths if n > position) for position in range(steps)])
  cache_bytes = 4 * layers * 2 * rows * attended * d  # self-attention keys and values
  cross_bytes = 4 * layers * 2 * (rows // 4) * src_len * d  # shared by a sentence's beams
  return flops, weight_bytes + cache_bytes + cross_bytes


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--sizes', default='d512,large')
  parser.add_argument('--batch_sizes', default='1,16,64')
  parser.add_argument('--max_new_tokens', type=int, default=40)
  parser.add_argument('--num_beams', type=int, default=4)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--first_attended_length', type=int, default=decoding.FIRST_ATTENDED_LENGTH,
                      help='the search\'s first cache length; above max_new_tokens, it attends '
                      'to the whole cache from the first step (the version before the growing '
                      'cache)')
  args = parser.parse_args()
  decoding.FIRST_ATTENDED_LENGTH = args.first_attended_length
  flop_rate, byte_rate = machine_rates()
  print(f'jax {jax.devices()[0].device_kind} x{jax.device_count()}, torch threads '
        f'{torch.get_num_threads()}; measured: matmul {flop_rate / 1e9:.0f} GFLOP/s, read '
        f'{byte_rate / 1e9:.1f} GB/s')
  options = dict(num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
                 decoder_start_token_id=LANG)
  rows = []
  for size in args.sizes.split(','):
    hf, model = build_models(size)
    for batch in map(int, args.batch_sizes.split(',')):
      ids, mask = source_batch(batch, seed=batch)
      generate(model, ids, mask, **options)  # compile (the persistent cache keeps it)

      def reference(ids=ids, mask=mask):
        with torch.no_grad():
          return hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                             do_sample=False, **options).numpy()

      reference()  # warm-up
      (hf_s, ours_s), (expected, out) = timed_alternately(
          [reference, lambda ids=ids, mask=mask: generate(model, ids, mask, **options)],
          args.repeats)
      steps = out.shape[1] - 1
      flops, read = step_costs(model.config, batch * args.num_beams, ids.shape[1],
                               1 + args.max_new_tokens, steps)
      compute_share = steps * flops / flop_rate / ours_s
      memory_share = steps * read / byte_rate / ours_s
      same = sum(len(a) == len(b) and bool(np.array_equal(a, b)) for a, b in zip(
          [r[r != 1] for r in out], [r[r != 1] for r in expected]))
      row = {'size': size, 'batch': batch, 'steps': steps,
             'transformers_sent_per_s': batch / hf_s, 'sltjax_sent_per_s': batch / ours_s,
             'speedup': hf_s / ours_s, 'identical': f'{same}/{batch}',
             'matmul_share': compute_share, 'read_share': memory_share,
             'bound': 'matmuls' if compute_share >= memory_share else 'memory reads'}
      rows.append(row)
      print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
            flush=True)
  print('\n| size | batch | transformers sent/s | sltjax sent/s | speedup | identical | '
        'bound (share of sltjax time: matmuls at peak / reads at memory speed) |')
  print('|---|---|---|---|---|---|---|')
  for r in rows:
    print(f'| {r["size"]} | {r["batch"]} | {r["transformers_sent_per_s"]:.2f} | '
          f'{r["sltjax_sent_per_s"]:.2f} | {r["speedup"]:.2f}x | {r["identical"]} | '
          f'{r["bound"]} ({r["matmul_share"]:.0%} / {r["read_share"]:.0%}) |')


if __name__ == '__main__':
  main()
