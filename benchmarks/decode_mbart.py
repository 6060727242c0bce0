r"""Beam-search decoding throughput: sltjax (XLA) vs transformers' generate (PyTorch), same weights.

  .venv/bin/python benchmarks/decode_mbart.py [--batch_sizes=8,32] [--max_new_tokens=40]

mBART-large-cc25's architecture with a trimmed vocabulary (2,454 ids, as PHOENIX-2014T's), random
weights from a fixed seed, converted in memory with sltjax.convert.hf; both sides decode the same
padded source batches with num_beams=4. Prints sentences/s for both, the ratio, whether the
outputs are identical, and sltjax's one-off compile time (not in its throughput; the persistent
compilation cache removes it on later runs).
"""
import argparse
import json
import statistics
import time

import jax
import numpy as np
import torch
import transformers
from flax import nnx

from sltjax.convert.hf import mbart_config_from_hf, mbart_state_from_hf
from sltjax.decoding import generate
from sltjax.models.mbart import MBart

VOCAB = 2454


def build_models(seed: int):
  torch.manual_seed(seed)
  hf = transformers.MBartForConditionalGeneration(
      transformers.MBartConfig(vocab_size=VOCAB, scale_embedding=True)).eval()
  cfg = mbart_config_from_hf(hf.config.to_dict())
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: MBart(cfg, rngs=nnx.Rngs(0))))
  tensors = {k: v.numpy() for k, v in hf.state_dict().items()}
  return hf, nnx.merge(graphdef, mbart_state_from_hf(tensors, abstract, np.float32))


def source_batch(batch: int, seed: int):
  """Source ids [batch, 30]: 12-30 tokens each, ending with </s> de_DE, right-padded."""
  rng = np.random.default_rng(seed)
  ids = np.ones((batch, 30), np.int64)
  for i, n in enumerate(rng.integers(12, 31, size=batch)):
    ids[i, :n - 2] = rng.integers(4, VOCAB - 27, size=n - 2)
    ids[i, n - 2:n] = [2, VOCAB - 24]  # </s>, de_DE
  return ids, (ids != 1).astype(np.int64)


def timed_alternately(functions, repeats: int):
  """Median seconds and last output of each function, run in turns so that the shared machine's
  slow and fast periods fall on both."""
  times, outputs = [[] for _ in functions], [None] * len(functions)
  for _ in range(repeats):
    for i, fn in enumerate(functions):
      start = time.perf_counter()
      outputs[i] = fn()
      times[i].append(time.perf_counter() - start)
  return [statistics.median(t) for t in times], outputs


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch_sizes', default='8,32')
  parser.add_argument('--max_new_tokens', type=int, default=40)
  parser.add_argument('--num_beams', type=int, default=4)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  hf, model = build_models(seed=0)
  options = dict(num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
                 decoder_start_token_id=VOCAB - 24)
  print(f'devices: jax {jax.devices()[0].device_kind} x{jax.device_count()}, torch threads '
        f'{torch.get_num_threads()}')
  rows = []
  for batch in map(int, args.batch_sizes.split(',')):
    ids, mask = source_batch(batch, seed=batch)
    compile_start = time.perf_counter()
    generate(model, ids, mask, **options)
    compile_s = time.perf_counter() - compile_start

    def reference():
      with torch.no_grad():
        return hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                           do_sample=False, **options).numpy()

    reference()  # warm-up
    (hf_s, ours_s), (expected, out) = timed_alternately(
        [reference, lambda: generate(model, ids, mask, **options)], args.repeats)
    row = {'batch': batch, 'num_beams': args.num_beams, 'new_tokens': int(expected.shape[1] - 1),
           'transformers_sent_per_s': batch / hf_s, 'sltjax_sent_per_s': batch / ours_s,
           'speedup': hf_s / ours_s, 'identical': bool(np.array_equal(out, expected)),
           'sltjax_first_call_s': compile_s}
    rows.append(row)
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
  print('\n| batch | transformers sent/s | sltjax sent/s | speedup | identical |')
  print('|---|---|---|---|---|')
  for r in rows:
    print(f'| {r["batch"]} | {r["transformers_sent_per_s"]:.2f} | {r["sltjax_sent_per_s"]:.2f} | '
          f'{r["speedup"]:.2f}x | {r["identical"]} |')


if __name__ == '__main__':
  main()
