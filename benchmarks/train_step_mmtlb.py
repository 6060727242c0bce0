r"""MMTLB Sign2Text training step: sltjax against the same network assembled in PyTorch.

  .venv/bin/python benchmarks/train_step_mmtlb.py                      # this CPU, float32
  python3 benchmarks/train_step_mmtlb.py --batch=8 --frames=64 --image=224 \
      --dtypes=float32,bfloat16 --peak_tflops=989 --find_max            # a GPU (H100: 989)

The network: ResNet-18 on every frame -> MMTLB's head (Linear + BatchNorm + ReLU + positions,
pre-LN residual k3 temporal convolution, classifier) -> MLP mapper -> mBART (mBART-large shapes,
the trimmed PHOENIX-2014T vocabulary of 2,454 pieces; --layers sets the depth) through
`inputs_embeds`, trained with CTC + label-smoothed CE and Adam. sltjax runs its own trainer step
(sltjax.train.make_train_step); PyTorch runs transformers' ResNetModel and
MBartForConditionalGeneration with torch Conv1d / BatchNorm1d / Linear / LayerNorm. The S3D
variant (sltjax only) swaps the backbone for S3D through Mixed_4f.

Each variant runs in its own process (peak memory its own) on the same random batch shapes. Prints
per variant the median step time, its ratio to PyTorch's in the same dtype, compile (or first
step) time and peak memory (process RSS on CPU, the allocator's peak on a GPU); with
--peak_tflops, MFU = the ResNet network's model FLOPs (model_tflop_per_step: XLA's own count
misses the cuDNN convolutions on a GPU) / step time / peak, for both frameworks. With
--find_max, the largest batch (at --frames frames) that fits on the GPU is estimated from XLA's
memory analysis and then run to confirm it.
"""
import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time

VOCAB = 2454  # the trimmed mBART vocabulary of PHOENIX-2014T
GLOSSES = 1124  # PHOENIX-2014T's gloss vocabulary, blank included
SIGN_LANG_ID = 3


def synthetic_batch(batch: int, frames: int, image: int, target_length: int, per_frame: bool):
  """Random numpy batch: frames [B, T, H, W, 3] float32 in [-1, 1], all frames valid; as many
  glosses as CTC can align after the backbone's temporal stride; target_length tokens."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  glosses = max(1, (frames if per_frame else frames // 4) // 3)
  tokens = rng.integers(4, VOCAB, (batch, target_length + 1))
  return {
      'frames': rng.uniform(-1, 1, (batch, frames, image, image, 3)).astype(np.float32),
      'frame_mask': np.ones((batch, frames), np.int32),
      'gloss_ids': rng.integers(1, GLOSSES, (batch, glosses)).astype(np.int32),
      'gloss_mask': np.ones((batch, glosses), np.int32),
      'decoder_input_ids': tokens[:, :-1].astype(np.int32),
      'labels': tokens[:, 1:].astype(np.int32),
      'label_weights': np.ones((batch, target_length), np.float32)}


def model_tflop_per_step(params, batch: int, frames: int, image: int, target_length: int) -> float:
  """Dense FLOPs of one training step of the ResNet network (3 x forward, attention scores
  left out): ResNet-18's 1.82 GMAC per 224px frame scaled by the image area; the head and mapper
  on every frame; mBART's encoder layers on frames + 2 positions, its decoder layers and output
  projection on the target tokens. params: sltjax's nnx.State."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  sizes = {}
  for path, variable in nnx.to_flat_state(params):
    key = path[1] if path[0] == 'translation' else path[0]
    sizes[key] = sizes.get(key, 0) + variable.size
  vocab_by_d = sizes['shared']
  per_row = (2 * 1.82e9 * (image / 224) ** 2 * frames
             + 2 * (sizes['head'] + sizes['mapper']) * frames
             + 2 * sizes['encoder_layers'] * (frames + 2)
             + 2 * (sizes['decoder_layers'] + vocab_by_d) * target_length)
  return 3 * per_row * batch / 1e12


def timed_steps(step, state, steps: int):
  """Runs `step` (state -> (state, loss as a host float)) `steps` times; median seconds, state."""
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, loss = step(state)
    times.append(time.perf_counter() - start)
  return statistics.median(times), state, loss


# ----------------------------------------------------------------------------------- sltjax
def run_sltjax(args, dtype: str, backbone: str, batch_size: int) -> dict:
  # pylint: disable=import-outside-toplevel
  import jax
  import jax.numpy as jnp
  import ml_collections
  import optax
  from flax import nnx

  from sltjax import sharding
  from sltjax.experiments.base import Experiment
  from sltjax.losses import sign_translation_loss
  from sltjax.models.mbart import MBartConfig
  from sltjax.models.systems.mmtlb import MMTLB, MMTLBConfig
  from sltjax.train import make_train_step
  # pylint: enable=import-outside-toplevel

  class BenchmarkExperiment(Experiment):
    """What make_train_step needs of an experiment: the model, mesh and loss (no dataset); all
    parameters trained."""
    config = ml_collections.ConfigDict({'seed': 0,
                                        'optimizer': {'param_groups': {}, 'frozen': ''}})

    def __init__(self):  # pylint: disable=super-init-not-called
      translation = MBartConfig(vocab_size=VOCAB, encoder_layers=args.layers,
                                decoder_layers=args.layers, dropout=0.1, dtype=dtype)
      self.model_config = MMTLBConfig(num_glosses=GLOSSES, backbone=backbone,
                                      translation=translation, dtype=dtype)
      self.mesh = sharding.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1})
      abstract = nnx.eval_shape(lambda: MMTLB(self.model_config, rngs=nnx.Rngs(0)))
      self.graphdef, self.abstract_params, self.abstract_rest = nnx.split(
          abstract, nnx.Param, ...)

    def loss(self, model, batch, rngs):
      out = model(batch['frames'], batch['frame_mask'], rngs=rngs)
      translation = model.translation_loss(
          out, batch['decoder_input_ids'], batch['labels'], batch['label_weights'], eos_id=2,
          sign_lang_id=SIGN_LANG_ID, label_smoothing=0.2, rngs=rngs)
      return sign_translation_loss(out, batch, ctc_weight=1.0, translation_weight=1.0,
                                   translation=translation)

  exp = BenchmarkExperiment()
  tx = optax.adam(1e-4, b1=0.9, b2=0.998)
  shardings = {
      'params': sharding.named_shardings(exp.abstract_params, exp.mesh),
      'rest': sharding.named_shardings(exp.abstract_rest, exp.mesh),
      'opt_state': sharding.named_shardings(jax.eval_shape(tx.init, exp.abstract_params),
                                            exp.mesh),
      'step': sharding.replicated(exp.mesh)}
  init = jax.jit(lambda: nnx.split(MMTLB(exp.model_config, rngs=nnx.Rngs(0)), nnx.Param, ...)[1:],
                 out_shardings=(shardings['params'], shardings['rest']))
  params, rest = init()
  state = {'params': params, 'rest': rest,
           'opt_state': jax.jit(tx.init, out_shardings=shardings['opt_state'])(params),
           'step': jnp.array(0, jnp.int32)}
  batch = jax.device_put(
      synthetic_batch(batch_size, args.frames, args.image, args.target_length,
                      backbone == 'resnet18'), sharding.batch_sharding(exp.mesh))
  train_step = make_train_step(exp, tx, optax.constant_schedule(1e-4), shardings)
  start = time.perf_counter()
  compiled = train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  memory, cost = compiled.memory_analysis(), compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost

  def step(state):
    state, metrics = compiled(state, batch)
    return state, float(metrics['loss'])

  state, _ = step(state)  # warm-up
  step_s, state, loss = timed_steps(step, state, args.steps)
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  return {'step_s': step_s, 'compile_s': compile_s, 'loss': loss,
          'peak_gib': (stats['peak_bytes_in_use'] if 'peak_bytes_in_use' in stats else
                       resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30,
          'xla_arguments_gib': memory.argument_size_in_bytes / 2**30,
          'xla_temporaries_gib': memory.temp_size_in_bytes / 2**30,
          'device_memory_gib': stats.get('bytes_limit', 0) / 2**30,
          'xla_tflop_per_step': cost.get('flops', math.nan) / 1e12,
          'model_tflop_per_step': model_tflop_per_step(
              params, batch_size, args.frames, args.image, args.target_length)
                                  if backbone == 'resnet18' else math.nan,
          'params_m': sum(x.size for x in jax.tree.leaves(params)) / 1e6,
          'device': device.device_kind}


# ----------------------------------------------------------------------------------- PyTorch
def run_torch(args, dtype: str, batch_size: int) -> dict:
  # pylint: disable=import-outside-toplevel
  import torch
  from torch import nn
  from torch.nn import functional as F
  from transformers import MBartConfig, MBartForConditionalGeneration, ResNetConfig, ResNetModel
  # pylint: enable=import-outside-toplevel

  class TorchSign2Text(nn.Module):
    """The same network as sltjax's MMTLB(backbone='resnet18', mapper='mlp')."""

    def __init__(self):
      super().__init__()
      self.backbone = ResNetModel(ResNetConfig(
          num_channels=3, embedding_size=64, hidden_sizes=[64, 128, 256, 512],
          depths=[2, 2, 2, 2], layer_type='basic', hidden_act='relu',
          downsample_in_first_stage=False))
      self.projection, self.projection_bn = nn.Linear(512, 512), nn.BatchNorm1d(512)
      self.norm, self.final_norm = nn.LayerNorm(512), nn.LayerNorm(512)
      self.conv1 = nn.Conv1d(512, 2048, 3, padding=1)
      self.conv2 = nn.Conv1d(2048, 512, 3, padding=1)
      self.classifier = nn.Linear(512, GLOSSES)
      self.fc1, self.fc2 = nn.Linear(512, 1024), nn.Linear(1024, 1024)
      self.dropout = nn.Dropout(0.1)
      self.mbart = MBartForConditionalGeneration(MBartConfig(
          vocab_size=VOCAB, d_model=1024, encoder_layers=args.layers,
          decoder_layers=args.layers, encoder_attention_heads=16, decoder_attention_heads=16,
          encoder_ffn_dim=4096, decoder_ffn_dim=4096, dropout=0.1, scale_embedding=True))
      position = torch.arange(args.frames, dtype=torch.float32)[:, None]
      frequency = torch.exp(torch.arange(0, 512, 2).float() * (-math.log(10000.0) / 512))
      table = torch.zeros(args.frames, 512)
      table[:, 0::2], table[:, 1::2] = torch.sin(position * frequency), torch.cos(
          position * frequency)
      self.register_buffer('positions', table)

    def forward(self, frames, decoder_input_ids):  # frames [B, T, 3, H, W]
      b, t = frames.shape[:2]
      f = self.backbone(frames.flatten(0, 1)).pooler_output.view(b, t, 512)
      x = self.projection_bn(self.projection(f).transpose(1, 2)).transpose(1, 2)
      x = self.dropout(F.relu(x) + self.positions[:t])
      h = self.dropout(F.relu(self.conv1(self.norm(x).transpose(1, 2))))
      x = x + self.dropout(self.conv2(h)).transpose(1, 2)
      z = self.final_norm(x)
      gloss_logits = self.classifier(z)
      mapped = self.fc2(F.relu(self.fc1(z))) * math.sqrt(1024)
      specials = self.mbart.get_input_embeddings()(
          torch.tensor([2, SIGN_LANG_ID], device=frames.device))
      embeds = torch.cat([mapped, specials[None].expand(b, 2, -1).to(mapped.dtype)], 1)
      logits = self.mbart(inputs_embeds=embeds, decoder_input_ids=decoder_input_ids).logits
      return gloss_logits, logits

  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  torch.manual_seed(0)
  torch.set_float32_matmul_precision('high')  # TF32 on a GPU, as XLA's default precision
  model = TorchSign2Text().to(device).train()
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.998))
  data = {k: torch.from_numpy(v).to(device) for k, v in synthetic_batch(
      batch_size, args.frames, args.image, args.target_length, per_frame=True).items()}
  frames = data['frames'].permute(0, 1, 4, 2, 3).contiguous()
  lengths = data['gloss_mask'].sum(1)
  autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == 'bfloat16')

  def step(state):
    optimizer.zero_grad(set_to_none=True)
    with autocast:
      gloss_logits, logits = model(frames, data['decoder_input_ids'])
    log_probs = F.log_softmax(gloss_logits.float(), -1).transpose(0, 1)  # [T, B, K]
    ctc = F.ctc_loss(log_probs, data['gloss_ids'], torch.full_like(lengths, frames.shape[1]),
                     lengths, blank=0, reduction='sum') / batch_size
    ce = F.cross_entropy(logits.float().flatten(0, 1), data['labels'].flatten().long(),
                         label_smoothing=0.2)
    loss = ctc + ce
    loss.backward()
    optimizer.step()
    return state, float(loss)

  if device.type == 'cuda':
    torch.cuda.reset_peak_memory_stats()
  start = time.perf_counter()
  step(None)
  first_s = time.perf_counter() - start
  step_s, _, loss = timed_steps(step, None, args.steps)
  peak = (torch.cuda.max_memory_allocated() if device.type == 'cuda' else
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
  return {'step_s': step_s, 'compile_s': first_s, 'loss': loss, 'peak_gib': peak / 2**30,
          'params_m': sum(p.numel() for p in model.parameters()) / 1e6,
          'device': torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}


# ----------------------------------------------------------------------------------- driver
def run_in_subprocess(args, framework: str, dtype: str, backbone: str, batch: int) -> dict:
  """One variant in a fresh process; {'error': ...} when it fails (out of memory, say)."""
  command = [sys.executable, __file__, f'--variant={framework},{dtype},{backbone},{batch}',
             f'--frames={args.frames}', f'--image={args.image}', f'--layers={args.layers}',
             f'--steps={args.steps}', f'--target_length={args.target_length}']
  out = subprocess.run(command, capture_output=True, text=True, check=False)
  if out.returncode:
    last = (out.stderr.strip().splitlines() or ['no output'])[-1]
    return {'error': last[:200]}
  return json.loads(out.stdout.strip().splitlines()[-1])


def largest_batch(args, dtype: str, measured: dict) -> tuple[int, dict]:
  """The largest batch estimated to fit from XLA's memory analysis (temporaries grow with the
  batch, arguments do not), confirmed by running it (shrunk by 15% until it runs)."""
  per_row = measured['xla_temporaries_gib'] / args.batch
  budget = 0.95 * measured['device_memory_gib'] - measured['xla_arguments_gib']
  batch = max(1, int(budget / per_row))
  for _ in range(4):
    result = run_in_subprocess(args, 'sltjax', dtype, 'resnet18', batch)
    if 'error' not in result:
      return batch, result
    batch = max(1, int(batch * 0.85))
  return 0, result


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--frames', type=int, default=32)
  parser.add_argument('--image', type=int, default=112)
  parser.add_argument('--layers', type=int, default=12, help='mBART encoder and decoder layers')
  parser.add_argument('--target_length', type=int, default=24)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--dtypes', default='float32')
  parser.add_argument('--peak_tflops', type=float, default=0.0)
  parser.add_argument('--find_max', action='store_true')
  parser.add_argument('--variant', default='', help='framework,dtype,backbone,batch (internal)')
  args = parser.parse_args()
  if args.variant:
    framework, dtype, backbone, batch = args.variant.split(',')
    result = (run_torch(args, dtype, int(batch)) if framework == 'torch' else
              run_sltjax(args, dtype, backbone, int(batch)))
    print(json.dumps(result))
    return

  print(f'MMTLB Sign2Text step: batch {args.batch} x {args.frames} frames of {args.image}px, '
        f'mBART {args.layers}+{args.layers} layers (d 1024, vocab {VOCAB}), target '
        f'{args.target_length} tokens, median of {args.steps} steps.')
  print('| network | framework | dtype | step s | vs PyTorch | compile / first step s '
        '| peak GiB |' + (' MFU |' if args.peak_tflops else ''))
  print('|---|---|---|---|---|---|---|' + ('---|' if args.peak_tflops else ''))
  for dtype in args.dtypes.split(','):
    results = {}
    for framework, backbone in (('torch', 'resnet18'), ('sltjax', 'resnet18'), ('sltjax', 's3d')):
      results[framework, backbone] = run_in_subprocess(args, framework, dtype, backbone,
                                                       args.batch)
      print(f'{framework} {backbone} {dtype}: {results[framework, backbone]}', file=sys.stderr,
            flush=True)
    for (framework, backbone), r in results.items():
      if 'error' in r:
        print(f'| {backbone} | {framework} | {dtype} | failed: {r["error"]} |')
        continue
      reference = results['torch', 'resnet18'].get('step_s', math.nan)
      ratio = f'{r["step_s"] / reference:.2f}x' if backbone == 'resnet18' else '-'
      line = (f'| {backbone} | {framework} | {dtype} | {r["step_s"]:.3f} | {ratio} | '
              f'{r["compile_s"]:.1f} | {r["peak_gib"]:.2f} |')
      if args.peak_tflops:  # the same model FLOPs for both frameworks' ResNet network
        flops = results['sltjax', 'resnet18'].get('model_tflop_per_step', math.nan)
        mfu = 100 * flops / r['step_s'] / args.peak_tflops if backbone == 'resnet18' else math.nan
        line += f' {mfu:.1f}% |'
      print(line, flush=True)
    if args.find_max and 'error' not in results['sltjax', 'resnet18']:
      batch, r = largest_batch(args, dtype, results['sltjax', 'resnet18'])
      print(f'Largest sltjax batch that fits ({dtype}): {batch} x {args.frames} frames = '
            f'{batch * args.frames} frames per step'
            + (f', {r["step_s"]:.3f} s/step, peak {r["peak_gib"]:.1f} GiB' if batch else
               f' (none ran: {r.get("error")})'), flush=True)
  device = next((r['device'] for r in results.values() if 'device' in r), '?')
  print(f'Device: {device}. Ratios below 1 mean sltjax is faster; both run the same shapes.')


if __name__ == '__main__':
  main()
