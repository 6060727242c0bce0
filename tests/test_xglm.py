"""XGLM against transformers' XGLMForCausalLM: logits with right padding, and greedy and beam
`generate` on left-padded prompts, token for token, on a tiny model trained so that its outputs
depend on its input."""
import numpy as np
import pytest
import torch
import transformers

from sltjax.convert.hf import load_xglm
from sltjax.decoding import generate

PAD, EOS = 1, 2


def sequence(rng, length):
  """A learnable pattern: a random start, then steps of a random stride (ids 3..34), then EOS."""
  start, stride = rng.integers(3, 35), rng.integers(1, 4)
  return [EOS] + [int(3 + (start - 3 + i * stride) % 32) for i in range(length)] + [EOS]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  torch.manual_seed(0)
  config = transformers.XGLMConfig(vocab_size=40, d_model=32, num_layers=2, attention_heads=4,
                                   ffn_dim=64, max_position_embeddings=64, dropout=0.0,
                                   attention_dropout=0.0, pad_token_id=PAD, eos_token_id=EOS,
                                   bos_token_id=0)
  model = transformers.XGLMForCausalLM(config)
  optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
  rng = np.random.default_rng(0)
  for _ in range(300):
    batch = torch.tensor([sequence(rng, 10) for _ in range(32)])
    loss = model(input_ids=batch, labels=batch).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
  model.eval()
  directory = tmp_path_factory.mktemp('xglm')
  model.save_pretrained(directory)
  return model, load_xglm(str(directory)), float(loss.detach())


def test_forward_logits_match_with_right_padding(trained):
  hf, ours, loss = trained
  assert loss < 1.5  # it learned the pattern: outputs depend on the input
  rng = np.random.default_rng(1)
  ids = np.full((3, 12), PAD, np.int64)
  mask = np.zeros((3, 12), np.int64)
  for row, n in enumerate((12, 7, 3)):
    ids[row, :n] = sequence(rng, 10)[:n]
    mask[row, :n] = 1
  with torch.no_grad():
    expected = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
  got = np.asarray(ours(ids, mask))
  valid = mask.astype(bool)
  np.testing.assert_allclose(got[valid], expected[valid], rtol=1e-4, atol=1e-4)


def left_padded_prompts(rng):
  prompts = [sequence(rng, 10)[:n] for n in (5, 2, 4, 1)]  # each starts with </s>
  width = max(map(len, prompts))
  ids = np.array([[PAD] * (width - len(p)) + p for p in prompts])
  return ids, (ids != PAD).astype(np.int64)


@pytest.mark.parametrize('num_beams', [1, 4])
def test_generate_continues_left_padded_prompts_as_transformers(trained, num_beams):
  hf, ours, _ = trained
  ids, mask = left_padded_prompts(np.random.default_rng(2))
  with torch.no_grad():
    expected = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                           num_beams=num_beams, max_new_tokens=12, do_sample=False,
                           pad_token_id=PAD, eos_token_id=EOS).numpy()
  got = generate(ours, ids, mask, num_beams=num_beams, max_new_tokens=12)
  np.testing.assert_array_equal(got, expected)
  # The continuation follows the learned pattern (the prompt alone decides it).
  assert len({tuple(row) for row in got}) == len(got)
