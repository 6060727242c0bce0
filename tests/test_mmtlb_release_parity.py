"""MMTLB against its authors' released PyTorch modules (SLRT's TwoStreamNetwork, commit in
tests/mmtlb_release_golden.py), module by module: the release's outputs, losses and gradients were
stored by tests/mmtlb_release_golden.py from the same weights and inputs; sltjax reads the
release's state dicts through sltjax.convert (the release's own naming).

Deliberate differences, checked against the corrected form rather than the release's:
- Padded frames: the release's head runs its kernel-3 convolutions over padded frames, so a
  row's last valid outputs depend on how much padding the batch gave it; sltjax zeroes padded
  frames first. The model goldens therefore use full-length rows; lengths are tested where they
  matter to the release (the translation network's slicing, CTC).
- `</s>` and the sign-language code after the frames: the release takes them from its
  Gloss2Text gloss-embedding table, sltjax from the text embedding (its Gloss2Text embeds glosses
  with the text's pieces); the golden's two gloss rows equal the text rows.
- Label smoothing: the release smooths JoeyNMT's way (smoothing / (V - 2) on every token but the
  target and <pad>) and reports KL; sltjax follows fairseq / Hugging Face (smoothing / V on every
  token) and reports cross entropy. The goldens use smoothing 0, where both are the summed
  negative log-likelihood.
- Running variance: PyTorch updates it with the unbiased batch variance, sltjax with the biased
  one (n / (n - 1) apart; the normalisation itself uses the biased one in both).
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sltjax import losses
from sltjax.convert.backbones import s3d_state
from sltjax.convert.hf import mbart_config_from_hf
from sltjax.convert.release import mmtlb_release_name, mmtlb_state
from sltjax.convert.state_dict import torch_layout
from sltjax.models.backbones.s3d import S3D, S3DConfig
from sltjax.models.systems.mmtlb import MMTLB, MMTLBConfig
from tests.mmtlb_release_golden import (FEATURES, FF, GLOSSES, HIDDEN, LENGTHS, MBART,
                                        SIGN_LANG_ID, batch, load_golden)
from tests.release_golden_files import assert_close
from tests.s3d_golden import seeded_clip, seeded_weights

GOLDEN = load_golden()
GLOSS_ROWS = 'translation_network.gloss_embedding.weight'  # see the module docstring


def release_s3d(frozen_layers: int) -> S3D:
  """sltjax's S3D filled from the release-named seeded weights of the golden."""
  cfg = S3DConfig(frozen_layers=frozen_layers)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: S3D(cfg, rngs=nnx.Rngs(0))))
  weights = {'recognition_network.visual_backbone.' + k: v
             for k, v in seeded_weights(GOLDEN['s3d_shapes']).items()}
  return nnx.merge(graphdef, s3d_state(weights, abstract))


@pytest.mark.slow
def test_s3d_in_the_release_naming_matches_the_release_with_block_0_frozen():
  clip = jnp.asarray(np.transpose(seeded_clip(), (0, 2, 3, 4, 1)))  # [2, 16, 64, 64, 3]
  mask = jnp.ones(clip.shape[:2])
  model = release_s3d(frozen_layers=1)
  block0 = nnx.state(model.features[0], nnx.BatchStat)
  forward = nnx.jit(lambda m, x, train: m(x, mask, train=train)[0], static_argnums=2)
  assert_close(forward(model, clip, False), GOLDEN['s3d_eval'])
  # Batch statistics through 13 BatchNorms magnify float32 rounding to ~3e-5 of the scale (in
  # float64, sltjax is within 5e-8 of the float64 release in both modes).
  assert_close(forward(model, clip, True), GOLDEN['s3d_train'], rtol=1e-4)
  # The frozen block keeps its running statistics; the next block's move.
  for before, after in zip(jax.tree.leaves(block0),
                           jax.tree.leaves(nnx.state(model.features[0], nnx.BatchStat))):
    np.testing.assert_array_equal(before, after)
  trained = release_s3d(frozen_layers=0)
  assert np.abs(np.asarray(forward(trained, clip, True)) - GOLDEN['s3d_train']).max() > 1e-2


def test_release_s3d_names_cover_every_layer_through_mixed_4f():
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: S3D(S3DConfig(), rngs=nnx.Rngs(0))))
  del graphdef
  expected = {k for k in GOLDEN['s3d_shapes'] if not k.endswith('num_batches_tracked')}
  names = {'backbone.' + s3d_release_name_of(path) for path, _ in nnx.to_flat_state(abstract)}
  assert names == expected


def s3d_release_name_of(path):
  return mmtlb_release_name(('backbone', *path)).removeprefix(
      'recognition_network.visual_backbone.backbone.')


def test_a_release_s3d_state_dict_missing_a_tensor_names_it():
  weights = seeded_weights(GOLDEN['s3d_shapes'])
  del weights['backbone.base.5.branch1.1.bn_t.running_var']
  abstract = nnx.state(nnx.eval_shape(lambda: S3D(S3DConfig(), rngs=nnx.Rngs(0))))
  with pytest.raises(ValueError, match=r'SLRT release names[\s\S]*missing '
                     r'base\.5\.branch1\.1\.bn_t\.running_var'):
    s3d_state(weights, abstract)


# ------------------------------------------------------------------ Sign2Text on features
def release_mmtlb() -> MMTLB:
  """The golden's small Sign2Text model, converted from the release's state dict."""
  translation = mbart_config_from_hf({**MBART, 'model_type': 'mbart', 'dropout': 0.0,
                                      'attention_dropout': 0.0, 'activation_dropout': 0.0})
  cfg = MMTLBConfig(num_glosses=GLOSSES, backbone='features', feature_dim=FEATURES,
                    head_dim=HIDDEN, head_ffn_dim=FF, head_kernel=3, head_dropout=0.0,
                    mapper='mlp', mapper_hidden=translation.d_model, translation=translation)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: MMTLB(cfg, rngs=nnx.Rngs(0))))
  state = mmtlb_state(GOLDEN['s2t_state'], abstract, jnp.float32,
                      ignored=lambda name: name == GLOSS_ROWS)
  return nnx.merge(graphdef, state)


def sign2text_losses(model, data, frame_mask, per='sentence'):
  """(CTC + translation loss, (ctc, translation, visual outputs, logits)) as the release sums
  them (weights 1 and 1, both per sentence over the batch)."""
  rngs = nnx.Rngs(0)  # training mode; every dropout rate is 0
  visual = model.visual(data['features'], frame_mask, rngs=rngs)
  gloss_mask = (np.arange(data['gloss_ids'].shape[1])[None]
                < data['gloss_lengths'][:, None]).astype(np.float32)
  ctc = losses.ctc_loss_sum(visual['gloss_logits'], visual['gloss_mask'], data['gloss_ids'],
                            gloss_mask) / frame_mask.shape[0]
  weights = (data['labels'] != MBART['pad_token_id']).astype(np.float32)
  translation, _ = model.translation_loss(
      visual, data['decoder_input_ids'], data['labels'], weights, eos_id=MBART['eos_token_id'],
      sign_lang_id=SIGN_LANG_ID, label_smoothing=0.0, per=per, rngs=rngs)
  embeds, mask = model.encoder_inputs(visual, MBART['eos_token_id'], SIGN_LANG_ID)
  logits = model.translation(None, mask, data['decoder_input_ids'], inputs_embeds=embeds)
  return ctc + translation, (ctc, translation, visual, logits)


def test_sign2text_losses_outputs_and_every_gradient_match_the_release():
  model, data = release_mmtlb(), batch()
  frame_mask = jnp.ones(data['features'].shape[:2])
  (_, (ctc, translation, visual, logits)), grads = nnx.value_and_grad(
      lambda m: sign2text_losses(m, data, frame_mask), has_aux=True)(model)
  assert_close(ctc, GOLDEN['s2t_ctc'])
  assert_close(translation, GOLDEN['s2t_translation'])
  assert_close(visual['gloss_logits'], GOLDEN['s2t_gloss_logits'])
  assert_close(logits, GOLDEN['s2t_logits'])
  largest = max(np.abs(g).max() for g in GOLDEN['s2t_grad'].values())
  # sltjax's `</s>` and sign-language code after the frames are rows of the text embedding,
  # the release's rows 2 and 3 of its gloss embedding: their gradient joins the text rows'.
  expected_grads = dict(GOLDEN['s2t_grad'])
  shared = 'translation_network.model.model.shared.weight'
  expected_grads[shared] = expected_grads[shared].copy()
  expected_grads[shared][[MBART['eos_token_id'], SIGN_LANG_ID]] += expected_grads[GLOSS_ROWS][2:4]
  compared = set()
  for path, grad in nnx.to_flat_state(grads):
    name = mmtlb_release_name(path)
    if name.endswith('running_mean') or name.endswith('running_var'):
      continue
    expected = torch_layout(path, expected_grads[name])
    if np.abs(expected).max() < 1e-12 * largest:  # zero in exact arithmetic (a bias before BN)
      assert np.abs(grad.get_value()).max() < 1e-6 * largest, name
    else:
      assert_close(grad.get_value(), expected)
    compared.add(name)
  # Every trained tensor of the release was compared (its tied embedding copies are one).
  assert compared == set(GOLDEN['s2t_grad']) - {GLOSS_ROWS}


def test_the_translation_loss_per_token_is_the_release_loss_over_the_target_tokens():
  model, data = release_mmtlb(), batch()
  frame_mask = jnp.ones(data['features'].shape[:2])
  _, (_, per_token, _, _) = sign2text_losses(model, data, frame_mask, per='token')
  tokens = np.sum(data['labels'] != MBART['pad_token_id'])
  assert_close(per_token * tokens / len(data['labels']), GOLDEN['s2t_translation'])


def test_translation_of_rows_of_different_lengths_matches_the_release():
  model, data = release_mmtlb(), batch()
  lengths = np.array(LENGTHS)
  mask = (np.arange(data['z'].shape[1])[None] < lengths[:, None]).astype(np.float32)
  weights = (data['labels'] != MBART['pad_token_id']).astype(np.float32)

  def loss(z):
    visual = {'z': z, 'gloss_logits': jnp.zeros((*z.shape[:2], GLOSSES)), 'gloss_mask': mask}
    return model.translation_loss(visual, data['decoder_input_ids'], data['labels'], weights,
                                  eos_id=MBART['eos_token_id'], sign_lang_id=SIGN_LANG_ID,
                                  label_smoothing=0.0, per='sentence')[0]
  value, grad_z = jax.value_and_grad(loss)(jnp.asarray(data['z']))
  assert_close(value, GOLDEN['lengths_translation'])
  # The release's gradient reaches only each row's valid frames, as sltjax's.
  assert_close(grad_z, GOLDEN['lengths_grad_z'])
  assert np.all(GOLDEN['lengths_grad_z'][mask == 0] == 0)


def test_ctc_of_rows_of_different_lengths_matches_the_release():
  data = batch()
  mask = (np.arange(data['gloss_logits'].shape[1])[None] < np.array(LENGTHS)[:, None])
  gloss_mask = np.arange(4)[None] < data['gloss_lengths'][:, None]

  def loss(logits):
    return losses.ctc_loss_sum(logits, mask.astype(np.float32), data['gloss_ids'],
                               gloss_mask.astype(np.float32)) / logits.shape[0]
  value, grad = jax.value_and_grad(loss)(jnp.asarray(data['gloss_logits']))
  assert_close(value, GOLDEN['ctc_loss'])
  assert_close(grad, GOLDEN['ctc_grad_logits'])


def test_the_head_with_running_statistics_matches_the_release():
  model, data = release_mmtlb(), batch()
  visual = model.visual(data['features'], jnp.ones(data['features'].shape[:2]))
  assert_close(visual['z'], GOLDEN['head_eval_z'])
  assert_close(visual['gloss_logits'], GOLDEN['head_eval_gloss_logits'])


def test_a_release_state_dict_with_unknown_and_missing_tensors_lists_them_all():
  state = dict(GOLDEN['s2t_state'])
  del state['vl_mapper.mapping.2.bias']
  state['vl_mapper.mapping.4.weight'] = np.zeros((2, 2), np.float32)
  model = release_mmtlb()
  abstract = nnx.state(model)
  with pytest.raises(ValueError) as error:
    mmtlb_state(state, abstract, jnp.float32)
  message = str(error.value)
  assert "MMTLB's release" in message
  assert re.search(r'missing vl_mapper\.mapping\.2\.bias', message)
  assert 'unexpected vl_mapper.mapping.4.weight (2, 2)' in message
  assert f'unexpected {GLOSS_ROWS}' in message  # not silently dropped
