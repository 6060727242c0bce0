r"""C2RL pretraining step: sltjax against the same network and loss in PyTorch.

  .venv/bin/python benchmarks/train_step_c2rl.py                 # 8 clips x 16 frames, 112 px
  python3 benchmarks/train_step_c2rl.py --batch=32 --frames=64 --image=224 --rounds=1 \
      --peak_tflops=989                                          # a GPU (H100: 989)

The network (C2RL's, REFERENCE.md section 2): ResNet-18 on every frame -> Conv1D k3 + BatchNorm
+ ReLU -> Linear -> learned positions -> 3 pre-LN transformer encoder layers (d 512, 8 heads, FFN
2048); a text encoder (embedding + 3 layers) and a text decoder (3 layers cross-attending to the
visual features) with tied output embeddings over the trimmed PHOENIX-2014T vocabulary; loss
ICL (CLCL similarities, symmetric InfoNCE, label smoothing 0.2, learned logit scale clamped at
ln 100) + ECL (label-smoothed LM loss); SGD momentum 0.9. sltjax runs its trainer's own step
(sltjax.train.make_train_step with sltjax.experiments.c2rl.Pretraining.loss and .constrain);
PyTorch runs transformers' ResNetModel with torch Conv1d / BatchNorm1d / TransformerEncoderLayer /
TransformerDecoderLayer and the same CLCL written in torch.

Each measurement runs in its own process on the same random batch; the two frameworks alternate
for --rounds rounds and the table gives the median over rounds of each process's median step
time (run it on an idle machine). On a GPU, --peak_tflops adds MFU from XLA's FLOP count.
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
PAD, EOS, LANG = 1, 2, 3
D, HEADS, FFN, LAYERS = 512, 8, 2048, 3


def synthetic_batch(batch: int, frames: int, image: int, tokens: int):
  """Random numpy batch: uint8 frames [B, T, H, W, 3], all frames valid; sentences of
  tokens/2..tokens ids `X </s> lang` padded (labels, label_weights, decoder_input_ids)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  labels = np.full((batch, tokens), PAD, np.int32)
  for row in range(batch):
    length = int(rng.integers(tokens // 2, tokens - 1))
    labels[row, :length] = rng.integers(4, VOCAB, length)
    labels[row, length:length + 2] = EOS, LANG
  lengths = (labels != PAD).sum(1)
  decoder_input_ids = np.roll(labels, 1, axis=1)
  decoder_input_ids[:, 0] = LANG
  decoder_input_ids[np.arange(tokens)[None] >= lengths[:, None]] = PAD
  return {'frames': rng.integers(0, 256, (batch, frames, image, image, 3), dtype=np.uint8),
          'frame_mask': np.ones((batch, frames), np.int32), 'labels': labels,
          'label_weights': (np.arange(tokens)[None] < (lengths - 1)[:, None]).astype(np.float32),
          'decoder_input_ids': decoder_input_ids.astype(np.int32)}


def timed_steps(step, steps: int):
  """Median seconds of `steps` calls of step() -> loss (a host float), and the last loss."""
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    loss = step()
    times.append(time.perf_counter() - start)
  return statistics.median(times), loss


def peak_gib(device_peak: int | None = None) -> float:
  return (device_peak or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30


# ----------------------------------------------------------------------------------- sltjax
def run_sltjax(args) -> dict:
  # pylint: disable=import-outside-toplevel
  import types

  import jax
  import jax.numpy as jnp

  from configs import c2rl
  from sltjax import sharding
  from sltjax.experiments.c2rl import Pretraining
  from sltjax.models.mbart import MBartConfig
  from sltjax.models.systems.c2rl import C2RLPretraining, VisualEncoderConfig
  from sltjax.optim import make_optimizer
  from sltjax.train import make_train_step
  # pylint: enable=import-outside-toplevel

  class BenchmarkExperiment(Pretraining):
    """configs/c2rl.py:pretrain's model, loss and update without a dataset or workdir."""

    def __init__(self):  # pylint: disable=super-init-not-called
      self.config = c2rl.get_config('pretrain')
      self.stage, self._jitted = 'pretrain', {}
      self.tokenizer = types.SimpleNamespace(pad_id=PAD)
      self.mesh = sharding.make_mesh(self.config.mesh)
      self.visual_config = VisualEncoderConfig(**self.config.model.visual.to_dict())
      text = MBartConfig.from_dict({**self.config.model.text.to_dict(), 'vocab_size': VOCAB,
                                    'pad_token_id': PAD})
      self.set_model(lambda rngs: C2RLPretraining(self.visual_config, text, rngs=rngs))

  exp = BenchmarkExperiment()
  exp.config.total_steps = 1000
  tx, schedule = make_optimizer(exp.config, exp.abstract_params)
  params, rest = exp.fresh_variables()
  shardings = {'params': exp.param_shardings, 'rest': exp.rest_shardings,
               'opt_state': sharding.named_shardings(jax.eval_shape(tx.init, params), exp.mesh),
               'step': sharding.replicated(exp.mesh)}
  state = {'params': params, 'rest': rest,
           'opt_state': jax.jit(tx.init, out_shardings=shardings['opt_state'])(params),
           'step': jnp.array(0, jnp.int32)}
  batch = jax.device_put(synthetic_batch(args.batch, args.frames, args.image, args.tokens),
                         sharding.batch_sharding(exp.mesh))
  train_step = make_train_step(exp, tx, schedule, shardings)
  start = time.perf_counter()
  compiled = train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  holder = {'state': state}

  def step():
    holder['state'], metrics = compiled(holder['state'], batch)
    return float(metrics['loss'])

  step()  # warm-up
  step_s, loss = timed_steps(step, args.steps)
  stats = jax.devices()[0].memory_stats() or {}
  return {'step_s': step_s, 'compile_s': compile_s, 'loss': loss,
          'peak_gib': peak_gib(stats.get('peak_bytes_in_use')),
          'tflop_per_step': cost.get('flops', math.nan) / 1e12,
          'params_m': sum(x.size for x in jax.tree.leaves(params)) / 1e6,
          'device': jax.devices()[0].device_kind}


# ----------------------------------------------------------------------------------- PyTorch
def run_torch(args) -> dict:
  # pylint: disable=import-outside-toplevel
  import torch
  from torch import nn
  from torch.nn import functional as F
  from transformers import ResNetConfig, ResNetModel
  # pylint: enable=import-outside-toplevel

  def encoder_layers():
    return nn.TransformerEncoder(nn.TransformerEncoderLayer(
        D, HEADS, FFN, 0.1, activation='gelu', batch_first=True, norm_first=True), LAYERS,
        enable_nested_tensor=False)

  class TorchC2RL(nn.Module):
    """The same network as sltjax's C2RLPretraining."""

    def __init__(self):
      super().__init__()
      self.backbone = ResNetModel(ResNetConfig(
          num_channels=3, embedding_size=64, hidden_sizes=[64, 128, 256, 512],
          depths=[2, 2, 2, 2], layer_type='basic', hidden_act='relu',
          downsample_in_first_stage=False))
      self.conv, self.bn = nn.Conv1d(512, 512, 3, padding=1), nn.BatchNorm1d(512)
      self.projection = nn.Linear(512, D)
      self.visual_positions = nn.Embedding(512, D)
      self.visual, self.visual_norm = encoder_layers(), nn.LayerNorm(D)
      self.embed = nn.Embedding(VOCAB, D, padding_idx=PAD)
      self.encoder_positions, self.decoder_positions = nn.Embedding(258, D), nn.Embedding(258, D)
      self.encoder_embed_norm, self.decoder_embed_norm = nn.LayerNorm(D), nn.LayerNorm(D)
      self.text_encoder, self.text_norm = encoder_layers(), nn.LayerNorm(D)
      self.text_decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(
          D, HEADS, FFN, 0.1, activation='gelu', batch_first=True, norm_first=True), LAYERS)
      self.decoder_norm = nn.LayerNorm(D)
      self.dropout = nn.Dropout(0.1)
      self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
      for table in (self.embed, self.visual_positions, self.encoder_positions,
                    self.decoder_positions):
        nn.init.normal_(table.weight, std=0.02)  # mBART's init, as sltjax's

    def embed_text(self, ids, positions, norm):
      x = self.embed(ids) * math.sqrt(D) + positions(torch.arange(ids.shape[1]) + 2)
      return self.dropout(norm(x))

    def forward(self, frames, labels, decoder_input_ids):  # frames [B, T, 3, H, W]
      b, t = frames.shape[:2]
      f = self.backbone(frames.flatten(0, 1)).pooler_output.view(b, t, 512)
      x = F.relu(self.bn(self.conv(f.transpose(1, 2)))).transpose(1, 2)
      x = self.dropout(self.projection(x) + self.visual_positions(torch.arange(t)))
      video = self.visual_norm(self.visual(x))
      text_padding = labels == PAD
      text = self.text_norm(self.text_encoder(
          self.embed_text(labels, self.encoder_positions, self.encoder_embed_norm),
          src_key_padding_mask=text_padding))
      causal = nn.Transformer.generate_square_subsequent_mask(decoder_input_ids.shape[1])
      h = self.text_decoder(
          self.embed_text(decoder_input_ids, self.decoder_positions, self.decoder_embed_norm),
          video, tgt_mask=causal, tgt_is_causal=True)
      return video, text, ~text_padding, self.decoder_norm(h) @ self.embed.weight.T

  def clcl(video, text, text_mask, temperature=0.07):
    """(v2t, t2v) [B, B]: all frames valid; padded tokens masked as sltjax does."""
    video, text = F.normalize(video, dim=-1), F.normalize(text * text_mask[..., None], dim=-1)
    s = torch.einsum('vtd,wld->vwtl', video, text)
    tm = text_mask[None, :, None, :]
    over_tokens = torch.softmax((s / temperature).masked_fill(~tm, -1e30), dim=3)
    over_frames = torch.softmax(s / temperature, dim=2)
    v2t = (s * over_tokens).sum(3).mean(2)
    token_scores = (s * over_frames).sum(2)
    t2v = (token_scores * tm[:, :, 0]).sum(2) / text_mask.sum(1)[None]
    return v2t, t2v

  torch.manual_seed(0)
  model = TorchC2RL().train()
  optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
  data = {k: torch.from_numpy(v) for k, v in synthetic_batch(
      args.batch, args.frames, args.image, args.tokens).items()}
  mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
  std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
  labels = data['labels'].long()
  targets = torch.eye(args.batch)

  def step():
    optimizer.zero_grad(set_to_none=True)
    frames = (data['frames'].permute(0, 1, 4, 2, 3).float() / 255 - mean) / std
    video, text, text_mask, logits = model(frames, labels, data['decoder_input_ids'].long())
    v2t, t2v = clcl(video, text, text_mask)
    scale = model.logit_scale.exp()
    icl = (F.cross_entropy(scale * v2t, targets, label_smoothing=0.2)
           + F.cross_entropy(scale * t2v.T, targets, label_smoothing=0.2)) / 2
    weights = data['label_weights']
    ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), label_smoothing=0.2,
                         reduction='none')
    loss = icl + (ce * weights.flatten()).sum() / weights.sum()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
      model.logit_scale.clamp_(max=math.log(100))
    return float(loss)

  start = time.perf_counter()
  step()
  first_s = time.perf_counter() - start
  step_s, loss = timed_steps(step, args.steps)
  return {'step_s': step_s, 'compile_s': first_s, 'loss': loss, 'peak_gib': peak_gib(),
          'params_m': sum(p.numel() for p in model.parameters()) / 1e6, 'device': 'cpu',
          'threads': torch.get_num_threads()}


# ----------------------------------------------------------------------------------- driver
def run_in_subprocess(args, framework: str) -> dict:
  command = [sys.executable, __file__, f'--variant={framework}', f'--batch={args.batch}',
             f'--frames={args.frames}', f'--image={args.image}', f'--tokens={args.tokens}',
             f'--steps={args.steps}']
  out = subprocess.run(command, capture_output=True, text=True, check=False)
  if out.returncode:
    return {'error': (out.stderr.strip().splitlines() or ['no output'])[-1][:300]}
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--frames', type=int, default=16)
  parser.add_argument('--image', type=int, default=112)
  parser.add_argument('--tokens', type=int, default=32)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--frameworks', default='torch,sltjax')
  parser.add_argument('--peak_tflops', type=float, default=0.0)
  parser.add_argument('--variant', default='', help='internal: run one framework')
  args = parser.parse_args()
  if args.variant:
    sys.path.insert(0, __file__.rsplit('/benchmarks/', 1)[0])  # configs/ of this checkout
    print(json.dumps(run_torch(args) if args.variant == 'torch' else run_sltjax(args)))
    return
  frameworks = args.frameworks.split(',')
  runs = {f: [] for f in frameworks}
  for round_index in range(args.rounds):  # alternate, so that drifting load hits both sides
    for framework in frameworks:
      result = run_in_subprocess(args, framework)
      runs[framework].append(result)
      print(f'round {round_index + 1} {framework}: {result}', file=sys.stderr, flush=True)
  print(f'C2RL pretraining step: {args.batch} clips x {args.frames} frames at {args.image} px, '
        f'text {args.tokens} tokens; median over {args.rounds} alternating rounds of the median '
        f'of {args.steps} steps.')
  print('| framework | step s | vs PyTorch | compile / first step s | peak GiB | loss |'
        + (' MFU |' if args.peak_tflops else ''))
  print('|---|---|---|---|---|---|' + ('---|' if args.peak_tflops else ''))
  medians = {f: statistics.median(r['step_s'] for r in rs if 'step_s' in r)
             for f, rs in runs.items() if any('step_s' in r for r in rs)}
  for framework, results in runs.items():
    ok = [r for r in results if 'step_s' in r]
    if not ok:
      print(f'| {framework} | failed: {results[-1]["error"]} |')
      continue
    ratio = (f'{medians[framework] / medians["torch"]:.2f}x' if 'torch' in medians else '-')
    line = (f'| {framework} | {medians[framework]:.3f} | {ratio} | '
            f'{statistics.median(r["compile_s"] for r in ok):.1f} | '
            f'{max(r["peak_gib"] for r in ok):.2f} | {ok[-1]["loss"]:.3f} |')
    if args.peak_tflops and 'tflop_per_step' in ok[0]:
      line += f' {100 * ok[0]["tflop_per_step"] / medians[framework] / args.peak_tflops:.1f}% |'
    print(line)
  print('Ratios below 1 mean sltjax is faster.')


if __name__ == '__main__':
  main()
