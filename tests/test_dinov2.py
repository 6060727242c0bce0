"""DINOv2 against transformers' Dinov2Model: Hugging Face directories of both naming
generations and Meta's original checkpoint, at the native input size and interpolated."""
import numpy as np
import pytest
import torch
import transformers
from torch.nn import functional as F

from sltjax.convert.dinov2 import HEAD_DIM
from sltjax.convert.hf import load_dinov2
from sltjax.convert.hf_checkpoint import save_safetensors
from sltjax.models.backbones.dinov2 import bicubic_matrix


@pytest.fixture(scope='module')
def hf_model(tmp_path_factory):
  """A tiny random Dinov2Model (64-wide heads, as released ones), layer scales not 1."""
  torch.manual_seed(0)
  config = transformers.Dinov2Config(hidden_size=2 * HEAD_DIM, num_hidden_layers=2,
                                     num_attention_heads=2, image_size=56, patch_size=14)
  model = transformers.Dinov2Model(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'lambda1' in name or 'position_embeddings' in name or name.endswith('bias'):
        p.normal_(0.0, 0.5)
  directory = tmp_path_factory.mktemp('dinov2') / 'hf'
  model.save_pretrained(directory)
  return model, directory


def reference(model, images):
  with torch.no_grad():
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
    return model(pixel_values=pixels).last_hidden_state.numpy()


def images_of(height, width, seed=0):
  return np.random.default_rng(seed).normal(size=(2, height, width, 3)).astype(np.float32)


@pytest.mark.parametrize('size', [(56, 56), (84, 84), (42, 70), (70, 42)])
def test_matches_transformers_at_native_and_interpolated_sizes(hf_model, size):
  model, directory = hf_model
  images = images_of(*size)
  ours = np.asarray(load_dinov2(str(directory)).images(images))
  np.testing.assert_allclose(ours, reference(model, images), rtol=1e-4, atol=1e-4)


def test_reads_hub_snapshot_names_and_refuses_other_models(hf_model, tmp_path):
  model, directory = hf_model
  old = {}
  for name, value in model.state_dict().items():
    for new, hub in (('attention.q_proj', 'attention.attention.query'),
                     ('attention.k_proj', 'attention.attention.key'),
                     ('attention.v_proj', 'attention.attention.value'),
                     ('attention.o_proj', 'attention.output.dense')):
      name = name.replace(new, hub)
    old[name] = value.numpy()
  snapshot = tmp_path / 'snapshot'
  snapshot.mkdir()
  (snapshot / 'config.json').write_text((directory / 'config.json').read_text())
  save_safetensors(old, str(snapshot / 'model.safetensors'))
  images = images_of(56, 56, seed=1)
  np.testing.assert_allclose(np.asarray(load_dinov2(str(snapshot)).images(images)),
                             reference(model, images), rtol=1e-4, atol=1e-4)
  (snapshot / 'config.json').write_text('{"model_type": "vit"}')
  with pytest.raises(ValueError, match='load_dinov2 reads "dinov2" models'):
    load_dinov2(str(snapshot))


def meta_state_dict(model) -> dict[str, torch.Tensor]:
  """The HF model under Meta's release names (dinov2/models/vision_transformer.py)."""
  sd = model.state_dict()
  out = {'cls_token': sd['embeddings.cls_token'], 'pos_embed': sd['embeddings.position_embeddings'],
         'mask_token': sd['embeddings.mask_token'],
         'patch_embed.proj.weight': sd['embeddings.patch_embeddings.projection.weight'],
         'patch_embed.proj.bias': sd['embeddings.patch_embeddings.projection.bias'],
         'norm.weight': sd['layernorm.weight'], 'norm.bias': sd['layernorm.bias']}
  for i in range(model.config.num_hidden_layers):
    hf, meta = f'encoder.layer.{i}.', f'blocks.{i}.'
    for kind in ('weight', 'bias'):
      out[f'{meta}attn.qkv.{kind}'] = torch.cat(
          [sd[f'{hf}attention.{p}_proj.{kind}'] for p in 'qkv'])
      out[f'{meta}attn.proj.{kind}'] = sd[f'{hf}attention.o_proj.{kind}']
      for module in ('norm1', 'norm2', 'mlp.fc1', 'mlp.fc2'):
        out[f'{meta}{module}.{kind}'] = sd[f'{hf}{module}.{kind}']
    out[f'{meta}ls1.gamma'] = sd[f'{hf}layer_scale1.lambda1']
    out[f'{meta}ls2.gamma'] = sd[f'{hf}layer_scale2.lambda1']
  return out


def test_meta_checkpoint_converts_from_its_shapes_alone(hf_model, tmp_path):
  model, _ = hf_model
  path = tmp_path / 'dinov2_tiny_pretrain.pth'
  torch.save(meta_state_dict(model), path)
  ours = load_dinov2(str(path))
  assert (ours.config.hidden_size, ours.config.num_layers, ours.config.num_heads,
          ours.config.patch_size, ours.config.image_size) == (128, 2, 2, 14, 56)
  for size in ((56, 56), (84, 84)):
    images = images_of(*size, seed=2)
    np.testing.assert_allclose(np.asarray(ours.images(images)), reference(model, images),
                               rtol=1e-4, atol=1e-4)
  broken = meta_state_dict(model)
  del broken['blocks.1.attn.proj.weight']
  broken['blocks.0.attn.qkv.bias'] = broken['blocks.0.attn.qkv.bias'][:-1]
  torch.save(broken, path)
  with pytest.raises(ValueError) as error:  # named as in the checkpoint, the fused qkv by part
    load_dinov2(str(path))
  assert 'missing blocks.1.attn.proj.weight (for layers/1/attention/out_proj/kernel' in str(
      error.value)
  assert 'blocks.0.attn.qkv.bias[v] has shape (127,)' in str(error.value)


def test_sign2gpt_keeps_each_checkpoints_own_position_interpolation(hf_model, tmp_path):
  """Sign2GPT's release runs Meta's DINOv2 code on Meta's checkpoint: its architecture keeps
  Meta's interpolation (by a scale factor); a Hugging Face directory keeps HF's."""
  from sltjax.experiments.sign2gpt import backbone_architecture  # pylint: disable=import-outside-toplevel
  model, directory = hf_model
  torch.save(meta_state_dict(model), tmp_path / 'dinov2_tiny_pretrain.pth')
  meta = backbone_architecture(str(tmp_path / 'dinov2_tiny_pretrain.pth'))
  assert meta == {**backbone_architecture(str(directory)), 'interpolation': 'meta'}
  assert backbone_architecture(str(directory))['interpolation'] == 'hf'


@pytest.mark.parametrize('in_size,out_size', [(37, 16), (4, 7), (5, 3), (4, 4)])
def test_bicubic_weights_equal_torch_interpolate_by_size_and_by_scale_factor(in_size, out_size):
  grid = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 3, in_size, in_size)))
  by_size = F.interpolate(grid, size=(out_size, out_size), mode='bicubic', align_corners=False)
  factor = (out_size + 0.1) / in_size  # Meta's release
  by_factor = F.interpolate(grid, scale_factor=(factor, factor), mode='bicubic',
                            align_corners=False)
  assert by_factor.shape[-1] == out_size
  for expected, scale in ((by_size, in_size / out_size), (by_factor, 1 / factor)):
    matrix = bicubic_matrix(in_size, out_size, scale)
    ours = np.einsum('rg,cgh,sh->crs', matrix, grid[0].numpy(), matrix)
    np.testing.assert_allclose(ours, expected[0].numpy(), rtol=1e-10, atol=1e-12)


def test_registered_backbone_reads_a_directory_and_gives_each_frames_cls_feature(hf_model):
  from sltjax.models.backbones import registry  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  model, directory = hf_model
  options = registry.BackboneOptions(architecture=(
      ('hidden_size', 128), ('num_layers', 2), ('num_heads', 2), ('image_size', 56)))
  assert registry.output_dim('dinov2', options) == 128
  backbone = registry.build('dinov2', options, nnx.Rngs(0))
  nnx.update(backbone, registry.read_weights('dinov2', options, str(directory)))
  frames = images_of(56, 56, seed=3).reshape(1, 2, 56, 56, 3)
  features, mask = backbone(frames, np.ones((1, 2), np.int32))
  assert features.shape == (1, 2, 128)
  np.testing.assert_allclose(np.asarray(features[0]), reference(model, frames[0])[:, 0],
                             rtol=1e-4, atol=1e-4)
