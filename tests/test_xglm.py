"""XGLM against transformers' XGLMForCausalLM: logits with right padding, and greedy and beam
`generate` on left-padded prompts, token for token, on a tiny model trained so that its outputs
depend on its input."""
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from sltjax.convert.hf import load_xglm
from sltjax.decoding import generate

PAD, EOS = 1, 2
# The model's forward pass compiled once per shape (run op by op, every op compiles alone).
forward = nnx.jit(lambda model, ids, mask=None, visual=None: model(ids, mask, visual=visual))


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
  got = np.asarray(forward(ours, ids, mask))
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


def adapted_copy(directory, seed=0):
  """The converted XGLM with Sign2GPT's adapters (gates 0, LoRA B 0)."""
  from sltjax.models.systems.sign2gpt import AdaptorConfig, adapt_xglm  # pylint: disable=import-outside-toplevel
  model = load_xglm(str(directory))
  adapt_xglm(model, AdaptorConfig(dropout=0.0, attention_dropout=0.0), nnx.Rngs(seed))
  return model


def visual_tokens(rng, batch, count=6, dim=32):
  tokens = rng.normal(size=(batch, count, dim)).astype(np.float32)
  mask = np.ones((batch, count), np.int32)
  mask[-1, count // 2:] = 0
  return tokens, mask


@pytest.fixture(scope='module')
def xglm_dir(trained, tmp_path_factory):
  hf, _, _ = trained
  directory = tmp_path_factory.mktemp('xglm_adapted')
  hf.save_pretrained(directory)
  return directory


def test_zero_gates_and_zero_lora_compute_the_frozen_lm_exactly(trained, xglm_dir):
  _, frozen, _ = trained
  adapted = adapted_copy(xglm_dir)
  rng = np.random.default_rng(3)
  ids = np.array([sequence(rng, 10) for _ in range(2)])
  visual = visual_tokens(rng, 2)
  np.testing.assert_array_equal(np.asarray(forward(adapted, ids, None, visual)),
                                np.asarray(forward(frozen, ids)))


def test_open_gates_attend_to_valid_visual_tokens_with_a_straight_through_gradient(xglm_dir):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  model = adapted_copy(xglm_dir)
  rng = np.random.default_rng(4)
  ids = np.array([sequence(rng, 10) for _ in range(2)])
  tokens, mask = visual_tokens(rng, 2)
  closed = np.asarray(forward(model, ids, None, (tokens, mask)))
  for layer in model.layers:
    layer.visual_adaptor.gate[...] = jnp.full_like(layer.visual_adaptor.gate[...], 0.7)
  opened = np.asarray(forward(model, ids, None, (tokens, mask)))
  assert np.abs(opened - closed).max() > 1e-3
  changed = tokens.copy()
  changed[1, 3:] = 100.0  # masked visual tokens of the second row
  np.testing.assert_allclose(np.asarray(forward(model, ids, None, (changed, mask)))[1], opened[1],
                             rtol=1e-5, atol=1e-5)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(gate_value):
    state = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.full_like(x, gate_value) if 'gate' in str(path[-2:]) else x, params)
    return jnp.mean(nnx.merge(graphdef, state, rest)(ids, visual=(tokens, mask))[..., 5])

  # Below 0 the forward pass sees 0, and the gradient still flows (straight through the clamp).
  loss_and_grad = jax.jit(jax.value_and_grad(loss))
  (below, below_grad), (zero, zero_grad) = loss_and_grad(-0.5), loss_and_grad(0.0)
  assert float(below) == float(zero)
  np.testing.assert_allclose(below_grad, zero_grad, rtol=1e-6)
  assert float(zero_grad) != 0.0


@pytest.mark.parametrize('num_beams', [1, 3])
def test_generate_with_visual_tokens_equals_decoding_without_a_cache(xglm_dir, num_beams):
  """The cached search (prompt prefilled, visual keys once per sentence) against step-by-step
  greedy decoding through the full forward pass; with beams, each prompt's continuation is the
  one it gets alone (its beams read its own visual tokens, not a neighbour's)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  model = adapted_copy(xglm_dir, seed=1)
  rng = np.random.default_rng(5)
  for layer in model.layers:
    layer.visual_adaptor.gate[...] = jnp.asarray(rng.uniform(0.2, 1.0, 4), jnp.float32)
    layer.visual_adaptor.query_b[...] = jnp.asarray(rng.normal(size=(4, 32)) * 0.3, jnp.float32)
  ids, mask = left_padded_prompts(np.random.default_rng(2))
  tokens, visual_mask = visual_tokens(rng, len(ids))
  got = generate(model, ids, mask, num_beams=num_beams, max_new_tokens=8,
                 visual=(tokens, visual_mask))
  assert got.shape[0] == len(ids) and np.all(got[:, :ids.shape[1]] == ids)
  if num_beams > 1:
    for row in range(len(ids)):
      prompt = ids[row:row + 1, ids.shape[1] - int(mask[row].sum()):]
      alone = generate(model, prompt, np.ones_like(prompt), num_beams=num_beams,
                       max_new_tokens=8, visual=(tokens[row:row + 1], visual_mask[row:row + 1]))
      strip = lambda seq: [t for t in seq if t != PAD]
      assert strip(got[row, ids.shape[1]:]) == strip(alone[0, prompt.shape[1]:]), row
    return
  # Each sequence lives in a fixed-width row, right-padded: causal attention keeps the padding out
  # of the logits read, and one compiled forward pass serves every step.
  width = ids.shape[1] + 8
  for row in range(len(ids)):
    sequence_ids = list(ids[row][mask[row] > 0])
    for _ in range(8):
      padding = width - len(sequence_ids)
      x = np.array([sequence_ids + [PAD] * padding])
      x_mask = np.array([[1] * len(sequence_ids) + [0] * padding])
      logits = forward(model, x, x_mask, (tokens[row:row + 1], visual_mask[row:row + 1]))
      sequence_ids.append(int(np.argmax(logits[0, len(sequence_ids) - 1])))
      if sequence_ids[-1] == EOS:
        break
    continuation = [t for t in got[row, ids.shape[1]:] if t != PAD]
    assert continuation == sequence_ids[int(mask[row].sum()):], row
