r"""Golden outputs of Sign2GPT's released stage 2 (translation), for
tests/test_sign2gpt_release_parity.py: the sign encoder, the visual projection and the frozen XGLM
with its LoRAs and zero-gated cross-attention, its logits, its loss and every trained gradient.

Release: https://github.com/ryanwongsa/Sign2GPT, commit 5555935 (as
tests/sign2gpt_release_golden.py). Regenerate where the release, torch and xformers 0.0.28 are
present:

  PYTHONPATH=/path/to/xformers-0.0.28 python tests/sign2gpt_stage2_release_golden.py \
      /path/to/Sign2GPT

Run as released, in evaluation mode: models/trial_models/test_stage2_model.py's Model and its
forward (teacher forcing) from frames, holding stage 1's model (test_pretraining.py: the frame
model models/spatial_models/frame_models/dino_adaptor_model.py, i.e. DINOv2 with LoRA on its last
block's fused qkv, proj, fc1 and fc2 as configs/standards/standard_meta_model_zero_config.py,
Linear and BatchNorm; basic_sign_encoder's MetaFormer at stage 1's golden width) with its
prototype head removed, the post model of configs/phoenix2014t/phoenix_stage2_configs/
PHX_example_s2_dyn_config.py (linear_pos_head: sine positions before the Linear), and the
release's models/huggingface/modeling_xglm.py at a small width (48, 4 heads, 2 layers) with that
config's adaptor: every layer adapted and with LoRA, rank 4, alpha 4, clamped gates, no
feed-forward LoRA. DINOv2 is small too (width 32, 2 blocks, 28 x 28 frames: no position
interpolation). The loss is losses/loss_functions/ce_loss.py (label smoothing 0.1, mean over the
target tokens) on the trainer's text layout (complete_translation_trainer.py: `</s> X </s>`
right-padded, the input without its last token, the targets without the first).

Stand-ins: the stage-1 golden's (xformers' attention by its definition, timm's DropPath and
trunc_normal_, fasttext and ignite), and DINOv2's MemEffAttention runs its parent's plain
attention (xformers has no CPU kernel). The frame model is built as its __init__ builds it, less
the download of Meta's weights. Every weight is random (the gates drawn in [-0.3, 1.3] so that
the clamp acts both ways, every LoRA B non-zero, BatchNorm's running statistics too), computed in
float64 and stored in float32; the clips are full length (see the stage-1 golden on padding). A
second part runs the XGLM alone on visual tokens and text of different lengths (padded visual
tokens and padded text), with the gradient of its visual input.
"""
import dataclasses
import functools
import importlib
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
# pylint: disable=wrong-import-position
from tests import release_golden_files
from tests import sign2gpt_release_golden as stage1
from tests.sign2gpt_release_golden import (DIM, FRAMES, HEADS, RELEASE_COMMIT, encoder_params,
                                           stand_ins)

GOLDEN_FILE = pathlib.Path(__file__).with_name('sign2gpt_stage2_release_golden.npz')
LM = {'vocab_size': 60, 'd_model': 48, 'num_layers': 2, 'attention_heads': 4, 'ffn_dim': 96,
      'max_position_embeddings': 64, 'pad_token_id': 1, 'bos_token_id': 0, 'eos_token_id': 2}
# PHX_example_s2_dyn_config.py's adaptor_params, on every layer
ADAPTOR = {'w_lora_ff': False, 'lora_rank': 4, 'lora_drop': 0.1, 'gate_type': 'clamp',
           'lora_a': 4.0, 'adapt_tokens': False}
DINO = {'hidden_size': 32, 'num_layers': 2, 'num_heads': 2}
# standard_meta_model_zero_config.py's spatial adapt_params (there on blocks 9-11 of 12)
DINO_LORA = {'w_lora': True, 'w_lora_ff': True, 'lora_rank': 4, 'lora_drop': 0.1, 'lora_a': 4.0,
             'rng_init': False}
IMAGE = 28  # frames of 2 x 2 patches, DINOv2's position grid (no interpolation)
VISUAL_LENGTHS = (5, 3)  # the XGLM-alone part: visual tokens per row


@dataclasses.dataclass(frozen=True)
class Sizes:
  """The sizes of a release stage-2 Model."""
  lm: dict  # the XGLM's config.json fields
  dino: dict  # DINOv2's hidden_size, num_layers, num_heads
  dino_image: int  # the image size DINOv2's position grid covers
  dim: int  # the sign encoder's width
  heads: int  # and heads


GOLDEN_SIZES = Sizes(LM, DINO, IMAGE, DIM, HEADS)


def inputs() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(7)
  # `</s> X </s>` (ids 3.. are words), right-padded with <pad> = 1, as the XGLM tokenizer writes
  sentences = [[2, 14, 9, 33, 57, 21, 2], [2, 40, 6, 18, 2, 1, 1]]
  visual_mask = np.arange(5)[None] < np.array(VISUAL_LENGTHS)[:, None]
  return {'frames': rng.standard_normal((2, FRAMES, IMAGE, IMAGE, 3)).astype(np.float32),
          'text': np.array(sentences),
          'visual': rng.standard_normal((2, 5, LM['d_model'])).astype(np.float32),
          'visual_mask': visual_mask}


def text_batch(torch, text: np.ndarray) -> dict:
  """complete_translation_trainer's model input and targets of token rows [batch, length]."""
  ids = torch.from_numpy(text)
  attention = ids != LM['pad_token_id']
  return {'text_ids': ids[:, :-1], 'text_mask': attention[:, :-1],
          'gt_ids': ids[:, 1:], 'gt_text_mask': attention[:, 1:]}


def release_frame_model(torch, bare, sizes: Sizes):
  """dino_adaptor_model.Model (DINOv2 with the stage configs' LoRAs on its last block's fused
  qkv, proj, fc1 and fc2; Linear; BatchNorm), built as its __init__ builds it without the
  download: the DINOv2 frozen but for the LoRAs (the tensors the Meta checkpoint lacks)."""
  frames = importlib.import_module('models.spatial_models.frame_models.dino_adaptor_model')
  vit = importlib.import_module('models.dinov2.model.vision_transformer')
  model = bare(frames.Model)
  model.spatial_model = vit.DinoVisionTransformer(
      img_size=sizes.dino_image, patch_size=14, embed_dim=sizes.dino['hidden_size'],
      depth=sizes.dino['num_layers'], num_heads=sizes.dino['num_heads'], mlp_ratio=4,
      init_values=1.0, block_chunks=0,
      block_fn=functools.partial(vit.Block, attn_class=vit.MemEffAttention),
      adaptor_layers=[sizes.dino['num_layers'] - 1], adapt_params=DINO_LORA)
  for name, param in model.spatial_model.named_parameters():
    param.requires_grad = 'lora_' in name
  model.lin = torch.nn.Linear(sizes.dino['hidden_size'], sizes.dim)
  model.bn = torch.nn.BatchNorm1d(sizes.dim)
  return model


def release_model(torch, sizes: Sizes = GOLDEN_SIZES):
  """The release's stage-2 Model at `sizes`, with the XGLM's initial weights and the adaptor
  of the release's stage-2 config on every layer."""
  stage2 = importlib.import_module('models.trial_models.test_stage2_model')
  stage1 = importlib.import_module('models.trial_models.test_pretraining')
  sign = importlib.import_module('models.model_sign_encoder.basic_sign_encoder')
  meta_model = importlib.import_module('models.metaformer.meta_model')
  post = importlib.import_module('models.post_models.linear_pos_head')
  xglm = importlib.import_module('models.huggingface.modeling_xglm')

  def bare(cls):  # a module of `cls` whose attributes are set below, as its __init__ would
    module = cls.__new__(cls)
    torch.nn.Module.__init__(module)
    return module

  model = bare(stage2.Model)
  model.sign_model = bare(stage1.Model)
  model.sign_model.sign_model = bare(sign.Model)
  model.sign_model.sign_model.spatial_model = release_frame_model(torch, bare, sizes)
  model.sign_model.sign_model.encoder = meta_model.MetaFormer(**encoder_params(sizes.dim,
                                                                               sizes.heads))
  model.sign_model.post_model = None  # as stage 2's __init__ sets it
  model.sign_model.dim = sizes.dim
  model.lang_model = xglm.XGLMForCausalLM(xglm.XGLMConfig(**sizes.lm))
  # transformers 4.31 (the release's environment.yml) ties lm_head to the token embeddings in
  # post_init; 5.x does not for this class (it names no _tied_weights_keys): tied as it ran.
  model.lang_model.lm_head.weight = model.lang_model.model.embed_tokens.weight
  for param in model.lang_model.parameters():
    param.requires_grad = False
  every_layer = list(range(sizes.lm['num_layers']))
  model.lang_model.init_adaptor(**ADAPTOR, adapt_layers=every_layer, lora_layers=every_layer)
  model.post_model = post.Model(pos_type='sine', pre_pos=True, in_dim=sizes.dim,
                                out_dim=sizes.lm['d_model'])
  model.pretext_length = 1  # the config's empty pretext: the tokenizer's leading </s>
  return model


def randomise(torch, model) -> None:
  """Every weight drawn so that no path is hidden (see the docstring)."""
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith('adaptor_gate'):
        p.copy_(torch.rand(p.shape) * 1.6 - 0.3)
      elif 'layer_scale' in name:
        p.copy_(torch.rand(p.shape) * 0.5 + 0.25)
      elif 'norm' in name and name.endswith('weight'):
        p.copy_(1.0 + 0.2 * torch.randn(p.shape))
      elif name.startswith('lang_model'):
        p.copy_(0.3 * torch.randn(p.shape) if p.dim() > 1 else 0.1 * torch.randn(p.shape))
      elif name.startswith('post_model') or 'spatial_model' in name:
        p.copy_(0.2 * torch.randn(p.shape))
  randomise_batch_norm_statistics(torch, model)


def randomise_batch_norm_statistics(torch, model) -> None:
  with torch.no_grad():
    for name, buffer in model.named_buffers():
      if name.endswith('running_mean'):
        buffer.copy_(0.3 * torch.randn(buffer.shape))
      elif name.endswith('running_var'):
        buffer.copy_(0.5 + torch.rand(buffer.shape))


def import_release(torch, release_dir: str) -> None:
  """Makes the release importable, with the stand-ins the docstring lists."""
  sys.path.insert(0, release_dir)
  stand_ins(torch)
  # xformers' fused attention has no CPU kernel: DINOv2's MemEffAttention falls back to its
  # parent's plain attention, softmax(q k^T / sqrt(head_dim)) v.
  importlib.import_module('models.dinov2.layers.attention').XFORMERS_AVAILABLE = False


def main(release_dir: str):
  import torch  # pylint: disable=import-outside-toplevel
  import_release(torch, release_dir)
  torch.set_default_dtype(torch.float64)
  torch.manual_seed(0)
  loss_fn = importlib.import_module('losses.loss_functions.ce_loss').Loss(
      src_name='logits', tgt_name='gt_ids', mask_name='gt_text_mask', label_smoothing=0.1)
  data = inputs()
  model = release_model(torch)
  randomise(torch, model)
  model.double().eval()

  text = text_batch(torch, data['text'])
  clips = [torch.from_numpy(clip).double().permute(0, 3, 1, 2) for clip in data['frames']]
  frame_mask = torch.ones(len(clips), FRAMES, dtype=torch.bool)
  out = model(text['text_ids'], text['text_mask'], clips, frame_mask, max_len=FRAMES)
  loss = loss_fn(out, text)
  loss.backward()
  state = {k: v for k, v in model.state_dict().items()
           if not k.endswith(('.pos', 'inv_freq', 'embed_positions.weights',
                              'num_batches_tracked'))}
  golden = {'state': json.dumps(sorted(state))}
  golden.update({f'param/{k}': v.float().numpy() for k, v in state.items()})
  golden.update({f'grad/{k}': p.grad.float().numpy() for k, p in model.named_parameters()
                 if p.grad is not None})
  golden.update(logits=out['logits'].detach().float().numpy(), loss=loss.item(),
                gates=out['gates'].detach().float().numpy())

  model.zero_grad()
  visual = torch.from_numpy(data['visual']).double().requires_grad_()
  lm_out = model.lang_model(input_ids=text['text_ids'], inputs_adaptors=visual,
                            adaptor_mask=torch.from_numpy(data['visual_mask']),
                            attention_mask=text['text_mask'], use_cache=False)
  lm_loss = loss_fn({'logits': lm_out.logits}, text)
  lm_loss.backward()
  golden.update({f'lm_grad/{k}': p.grad.float().numpy()
                 for k, p in model.lang_model.named_parameters() if p.grad is not None})
  golden.update(lm_logits=lm_out.logits.detach().float().numpy(), lm_loss=lm_loss.item(),
                lm_grad_visual=visual.grad.float().numpy(), release_commit=RELEASE_COMMIT,
                torch=torch.__version__)
  np.savez_compressed(GOLDEN_FILE, **data, **golden)
  print(f'{GOLDEN_FILE}: loss {loss.item():.6f}, XGLM-alone loss {lm_loss.item():.6f}; '
        f'{len(golden) - 6} arrays; torch {torch.__version__}')


def load_golden() -> dict:
  """The golden file's arrays, with 'state', 'grad' and 'lm_grad': {release name: array}."""
  golden = stage1.load_golden(GOLDEN_FILE)
  golden['lm_grad'] = release_golden_files.named(golden, 'lm_grad')
  return golden


if __name__ == '__main__':
  release_golden_files.run_from_command_line(main, 'Sign2GPT')
