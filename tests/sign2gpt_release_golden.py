r"""Golden outputs of Sign2GPT's released sign encoder, prototype head and pseudo-gloss loss, for
tests/test_sign2gpt_release_parity.py.

Release: https://github.com/ryanwongsa/Sign2GPT, commit 5555935 (HEAD of its default branch when
fetched). Regenerate where the release, torch and xformers 0.0.28 (its `components`, which the
release builds its encoder from) are present:

  PYTHONPATH=/path/to/xformers-0.0.28 python tests/sign2gpt_release_golden.py /path/to/Sign2GPT

Run as released: MetaFormer (configs/standards/standard_meta_model_zero_config.py: sine
positions, 2 + 2 post-LN blocks of local-mask attention with rotary q/k, layer scale, temporal
pooling between the stages), HeadModel (models/metaformer/post/zero_fasttext_prototype_head.py,
dynamic temperatures as stage 1's config) and the BCE Loss (losses/loss_functions/bce_loss.py,
weight 10), at width 32 with 4 heads (the release: 512 and 8), in evaluation mode. Stand-ins
for what this CPU cannot run or the modules only import:
- xformers' fused `memory_efficient_attention` has no CPU kernel: its documented definition,
  softmax(q k^T / sqrt(head_dim) + attn_bias) v, computes it (no dropout in evaluation);
- timm's DropPath (the identity in evaluation) and trunc_normal_ (initialisation only), since
  timm imports torchvision; fasttext and ignite, which load the word vectors the golden sets.
The word vectors are random; every layer scale is drawn around 0.5 (the release starts them at
1e-5, which would hide the blocks). Stored, float32 (computed in float64): the weights, inputs,
encoder output and mask, the head's presence scores, the loss and every parameter's gradient
(full-length rows); and the head alone on rows of different lengths with its input's gradient.
"""
import importlib
import json
import pathlib
import sys
import types

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from tests import release_golden_files  # pylint: disable=wrong-import-position

GOLDEN_FILE = pathlib.Path(__file__).with_name('sign2gpt_release_golden.npz')
RELEASE_COMMIT = '5555935'
DIM, HEADS, HIDDEN, CLASSES, FRAMES = 32, 4, 12, 10, 12
HEAD_LENGTHS = (6, 4)  # the head-alone part: two rows of 6 positions


def encoder_params(dim: int = DIM, heads: int = HEADS) -> dict:
  """The release's stage-1 sign encoder config at width `dim` (the golden's DIM)."""
  return {
      'emb_name': 'models.metaformer.emb.sine_pos',
      'emb_params': {'in_dim': dim, 'd_model': dim,
                     'pos_config': {'name': 'my_sine', 'dim_model': dim}},
      'net_name': 'models.metaformer.net.downsampler_net',
      'net_params': {
          'drop_path_rate': 0.1, 'use_layer_scale': True, 'layer_scale_init_value': 1e-5,
          'layer_norm_type': 'post', 'layers': [2, 2], 'downsamples': [True],
          'embed_dims': [dim, dim],
          'mixer_params': {'residual_dropout': 0.1, 'num_heads': heads,
                           'use_rotary_embeddings': True},
          'attention_params': {'name': 'local_mask', 'dropout': 0.1, 'window_size': 7},
          'mlp_params': {'name': 'MLP', 'hidden_layer_multiplier': 4, 'activation': 'gelu',
                         'dropout': 0.1}},
      'post_name': 'models.metaformer.post.identity_head', 'post_params': {'d_model': dim},
      'inits': 'xavier'}


def inputs() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(5)
  head_mask = np.arange(6)[None] < np.array(HEAD_LENGTHS)[:, None]
  return {'features': rng.standard_normal((2, FRAMES, DIM)).astype(np.float32),
          'head_input': rng.standard_normal((2, 6, DIM)).astype(np.float32),
          'head_mask': head_mask,
          'targets': np.array([[1, 0, 0, 1, 0, 0, 0, 1, 0, 0], [0, 1, 0, 0, 0, 0, 1, 0, 0, 1]]),
          'word_vectors': rng.standard_normal((CLASSES, HIDDEN)).astype(np.float32)}


def stand_ins(torch):
  """Modules the release imports but that cannot or need not run here (see the docstring)."""
  layers = types.ModuleType('timm.models.layers')

  class DropPath(torch.nn.Module):  # the identity in evaluation mode, where the goldens run
    def __init__(self, rate):
      super().__init__()
      self.rate = rate

    def forward(self, x):
      assert not self.training
      return x
  layers.DropPath, layers.trunc_normal_ = DropPath, torch.nn.init.trunc_normal_
  sys.modules.update({'timm': types.ModuleType('timm'),
                      'timm.models': types.ModuleType('timm.models'),
                      'timm.models.layers': layers})
  for name in ('fasttext', 'fasttext.util', 'ignite', 'ignite.distributed'):
    sys.modules.setdefault(name, types.ModuleType(name))

  def attention(q, k, v, attn_bias=None, p=0.0):  # xformers' documented definition
    assert p == 0.0
    logits = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    return torch.softmax(logits + attn_bias, dim=-1) @ v
  importlib.import_module('models.metaformer.net.attentions.local_mask_attention').xops = (
      types.SimpleNamespace(memory_efficient_attention=attention))


def main(release_dir: str):
  import torch  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, release_dir)
  stand_ins(torch)
  meta_model = importlib.import_module('models.metaformer.meta_model')
  head_module = importlib.import_module('models.metaformer.post.zero_fasttext_prototype_head')
  loss_module = importlib.import_module('losses.loss_functions.bce_loss')
  torch.set_default_dtype(torch.float64)
  torch.manual_seed(0)
  data = inputs()

  model = torch.nn.Module()  # the stage-1 model's attribute names, hence its state-dict names
  model.sign_model = torch.nn.Module()  # (its spatial model, DINOv2, is left out)
  model.sign_model.encoder = meta_model.MetaFormer(**encoder_params())
  head = head_module.HeadModel.__new__(head_module.HeadModel)
  torch.nn.Module.__init__(head)
  head.time_temperature = torch.nn.Parameter(torch.ones(1) * 0.1)  # dynamic, as stage 1
  head.class_temperature = torch.nn.Parameter(torch.ones(1) * 0.1)
  head.fc_hidden = torch.nn.Linear(DIM, HIDDEN)
  head.vocab_embedding = torch.nn.Parameter(  # [HIDDEN, CLASSES, 1], frozen (trainable_emb)
      torch.from_numpy(data['word_vectors']).double().T[..., None], requires_grad=False)
  head.register_buffer('zero_embedding', torch.zeros(HIDDEN, 1, 1))
  head.num_classes, head.dropout = CLASSES, torch.nn.Dropout(0.2)
  model.post_model = head
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'layer_scale' in name:
        p.copy_(torch.rand(p.shape) * 0.5 + 0.25)
      elif name.endswith('time_temperature'):
        p.fill_(0.2)
  model.double().eval()
  loss_fn = loss_module.Loss(src_name=('dict_post_output', 'logits'), tgt_name='pseudo_gloss_ids')
  pseudo_glosses = [np.flatnonzero(row).tolist() for row in data['targets']]

  features = torch.from_numpy(data['features']).double()
  encoded = model.sign_model.encoder(features, torch.ones(2, FRAMES, dtype=torch.bool))
  out = model.post_model(encoded['hidden_state'], encoded['hidden_mask'])
  loss = 10.0 * loss_fn({'dict_post_output': out}, {'pseudo_gloss_ids': pseudo_glosses})
  loss.backward()
  # Fixed tables (sine positions, rotary frequencies, the zero prototype) are not stored.
  state = {k: v for k, v in model.state_dict().items()
           if not k.endswith(('.pos', 'inv_freq', 'zero_embedding'))}
  golden = {'state': json.dumps(sorted(state))}
  for k, v in state.items():
    golden[f'param/{k}'] = v.float().numpy()
  golden.update(hidden=encoded['hidden_state'].detach().float().numpy(),
                hidden_mask=encoded['hidden_mask'].numpy(),
                scores=out['logits'].detach().float().numpy(), loss=loss.item())
  for k, p in model.named_parameters():
    if p.grad is not None:
      golden[f'grad/{k}'] = p.grad.float().numpy()

  model.zero_grad()
  head_input = torch.from_numpy(data['head_input']).double().requires_grad_()
  out = model.post_model(head_input, torch.from_numpy(data['head_mask']))
  head_loss = 10.0 * loss_fn({'dict_post_output': out}, {'pseudo_gloss_ids': pseudo_glosses})
  head_loss.backward()
  golden.update(head_scores=out['logits'].detach().float().numpy(), head_loss=head_loss.item(),
                head_grad_input=head_input.grad.float().numpy(),
                release_commit=RELEASE_COMMIT, torch=torch.__version__)
  np.savez_compressed(GOLDEN_FILE, **data, **golden)
  print(f'{GOLDEN_FILE}: loss {loss.item():.6f}, head loss {head_loss.item():.6f}; torch '
        f'{torch.__version__}')


def load_golden(path=GOLDEN_FILE) -> dict:
  """The golden file's arrays, with 'state' and 'grad': {release name: array}."""
  golden = release_golden_files.load(path)
  golden['state'] = release_golden_files.named(golden, 'param', 'state')
  golden['grad'] = release_golden_files.named(golden, 'grad')
  return golden


if __name__ == '__main__':
  release_golden_files.run_from_command_line(main, 'Sign2GPT')
