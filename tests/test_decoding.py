"""Beam search against a toy Markov model whose best sequences are known by enumeration, and
against the teacher-forced mBART model (cache, padding, per-sequence EOS)."""
import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sltjax.decoding import attended_lengths, beam_search, generate, length_normalizer
from sltjax.models.layers.attention import KVCache, MultiHeadAttention
from sltjax.models.mbart import MBart, MBartConfig

EOS, PAD, START = 3, 4, 5
VOCAB = 6  # 0..2 are words, 3 EOS; 4 (padding) and 5 (start) are never generated


def markov_table(seed):
  """log P(next | previous) [VOCAB, VOCAB], with padding and the start token impossible."""
  logits = np.random.default_rng(seed).normal(size=(VOCAB, VOCAB)) * 2
  logits[:, [PAD, START]] = -1e4
  return np.asarray(jax.nn.log_softmax(jnp.asarray(logits), axis=-1))


def enumerate_sequences(table, max_new_tokens, alpha, style):
  """Every possible output with its length-normalised score, best first."""
  results = []
  for length in range(1, max_new_tokens + 1):
    for words in itertools.product(range(3), repeat=length):
      for ends_with_eos in (True, False):
        if not ends_with_eos and length < max_new_tokens:
          continue
        tokens = list(words[:-1]) + [EOS] if ends_with_eos else list(words)
        path = [START] + tokens
        score = sum(table[a, b] for a, b in zip(path, path[1:]))
        results.append((score / length_normalizer(length, alpha, style), tokens))
  unique = {tuple(t): s for s, t in results}
  return sorted(((s, list(t)) for t, s in unique.items()), key=lambda x: -x[0])


def run_toy_search(table, beam_size, max_new_tokens, alpha=0.0, style='hf', batch=1):
  table = jnp.asarray(table)

  def tokens_to_logits(tokens, cache, position, cache_slots):
    return table[tokens], cache

  cache = KVCache.zeros(batch * beam_size, 1 + max_new_tokens, 1, 1, jnp.float32)
  return beam_search(tokens_to_logits, jnp.full((batch,), START), cache,
                     beam_size=beam_size, max_new_tokens=max_new_tokens, eos_id=EOS, pad_id=PAD,
                     length_penalty=alpha, length_penalty_style=style)


def strip(sequence):
  tokens = [int(t) for t in sequence[1:]]
  return tokens[:tokens.index(PAD)] if PAD in tokens else tokens


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_large_beam_finds_the_exact_top_k(seed):
  table = markov_table(seed)
  expected = enumerate_sequences(table, max_new_tokens=3, alpha=0.0, style='hf')[:20]
  sequences, scores = run_toy_search(table, beam_size=20, max_new_tokens=3)
  got = [(float(s), strip(q)) for s, q in zip(scores[0], sequences[0])]
  assert [t for _, t in got] == [t for _, t in expected]
  np.testing.assert_allclose([s for s, _ in got], [s for s, _ in expected], rtol=1e-5)


@pytest.mark.parametrize('alpha,style', [(1.0, 'hf'), (2.0, 'hf'), (1.0, 'gnmt'), (-1.0, 'hf')])
def test_length_penalty_picks_the_best_normalised_sequence(alpha, style):
  table = markov_table(3)
  best_score, best_tokens = enumerate_sequences(table, 3, alpha, style)[0]
  sequences, scores = run_toy_search(table, beam_size=20, max_new_tokens=3, alpha=alpha,
                                     style=style)
  assert strip(sequences[0, 0]) == best_tokens
  assert float(scores[0, 0]) == pytest.approx(best_score, rel=1e-5)


def test_length_penalty_changes_the_winner():
  # EOS right away costs log(0.5); three words then EOS cost 4*log(0.8) but are 4 tokens long.
  table = np.full((VOCAB, VOCAB), -1e4)
  table[START, EOS], table[START, 1] = np.log(0.5), np.log(0.5)
  table[1, 2], table[1, EOS] = np.log(0.8), np.log(0.2)
  table[2, 1], table[2, EOS] = np.log(0.2), np.log(0.8)
  short = run_toy_search(table, beam_size=4, max_new_tokens=6, alpha=0.0)[0]
  long = run_toy_search(table, beam_size=4, max_new_tokens=6, alpha=1.0)[0]
  assert strip(short[0, 0]) == [EOS]
  assert strip(long[0, 0]) == [1, 2, EOS]


def test_greedy_is_beam_one_and_follows_the_argmax():
  table = markov_table(4)
  sequences, _ = run_toy_search(table, beam_size=1, max_new_tokens=5)
  token, expected = START, []
  for _ in range(5):
    token = int(np.argmax(table[token]))
    expected.append(token)
    if token == EOS:
      break
  assert strip(sequences[0, 0]) == expected


def test_batch_rows_end_independently():
  """Each row decodes with its own table (found through the cache, a table index per row); the batched result equals each row searched alone, and rows end at different steps."""
  tables = jnp.asarray(np.stack([markov_table(s) for s in (6, 7, 8)]))

  def search(rows, beam_size=3):
    def tokens_to_logits(tokens, cache, position, cache_slots):
      return tables[cache.values[:, 0, 0, 0], tokens], cache
    # values [batch*beams, positions, 1, 1]: the table index of each beam, at every position
    table_index = jnp.repeat(jnp.asarray(rows), beam_size)[:, None, None, None].repeat(7, axis=1)
    cache = KVCache(keys=jnp.zeros((len(rows) * beam_size, 1, 1, 7)), values=table_index)
    return beam_search(tokens_to_logits, jnp.full((len(rows),), START), cache,
                       beam_size=beam_size, max_new_tokens=6, eos_id=EOS, pad_id=PAD)[0]

  batched = search([0, 1, 2])
  for row in range(3):
    np.testing.assert_array_equal(batched[row], search([row])[0])
  assert len({len(strip(batched[row, 0])) for row in range(3)}) > 1


@pytest.fixture(scope='module')
def tiny_mbart():
  cfg = MBartConfig(vocab_size=40, d_model=32, encoder_layers=2, decoder_layers=2,
                    encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                    decoder_ffn_dim=64, max_position_embeddings=64)
  model = MBart(cfg, rngs=nnx.Rngs(0))
  # EOS just likely enough that beams end at different steps.
  model.final_logits_bias[...] = jnp.zeros(40).at[2].set(0.03)
  return model


def source_batch():
  rng = np.random.default_rng(0)
  lengths = [7, 3, 5]
  ids = np.full((3, 8), 1, np.int32)
  for i, n in enumerate(lengths):
    ids[i, :n] = rng.integers(4, 40, size=n)
  return ids


def test_padded_batch_decodes_like_each_sentence_alone(tiny_mbart):
  ids = source_batch()
  batched = generate(tiny_mbart, ids, num_beams=4, max_new_tokens=10, decoder_start_token_id=3)
  for i in range(3):
    n = int((ids[i] != 1).sum())
    alone = generate(tiny_mbart, ids[i:i + 1, :n], num_beams=4, max_new_tokens=10,
                     decoder_start_token_id=3)
    np.testing.assert_array_equal(batched[i, :alone.shape[1]], alone[0])
    assert np.all(batched[i, alone.shape[1]:] == 1)


def test_beam_scores_equal_teacher_forced_log_probs(tiny_mbart):
  """The KV cache and beam reordering are right iff scores match a full forward pass."""
  ids = jnp.asarray(source_batch())
  mask = (ids != 1).astype(jnp.int32)
  sequences, scores = jax.jit(lambda m, i, a: _search_with_scores(m, i, a))(tiny_mbart, ids, mask)
  for b in range(3):
    for k in range(4):
      seq = np.asarray(sequences[b, k])
      n = int(np.argmax(seq[1:] == 2)) + 1 if (seq[1:] == 2).any() else len(seq) - 1
      logits = tiny_mbart(ids[b:b + 1], mask[b:b + 1], jnp.asarray(seq[None, :n]))
      log_probs = jax.nn.log_softmax(logits[0], axis=-1)
      total = float(sum(log_probs[t, seq[t + 1]] for t in range(n)))
      assert float(scores[b, k]) == pytest.approx(total / n, abs=1e-4)


def _search_with_scores(model, ids, mask):
  from sltjax import decoding  # pylint: disable=import-outside-toplevel
  encoder_out = model.encode(ids, mask)
  repeat = lambda x: jnp.repeat(x, 4, axis=0)
  cross_kv = jax.tree.map(repeat, model.cross_attention_kv(encoder_out))

  def tokens_to_logits(tokens, cache, position, cache_slots):
    logits, cache = model.decode(tokens[:, None], repeat(mask), cross_kv, cache=cache,
                                 cache_index=position, cache_slots=cache_slots)
    return logits[:, 0], cache

  return decoding.beam_search(tokens_to_logits, jnp.full((3,), 3), model.init_cache(12, 11),
                              beam_size=4, max_new_tokens=10, eos_id=2, pad_id=1)


def test_greedy_generate_matches_step_by_step_argmax(tiny_mbart):
  ids = jnp.asarray(source_batch()[:1, :7])
  out = generate(tiny_mbart, ids, num_beams=1, max_new_tokens=8, decoder_start_token_id=3)
  # The prefix lives in a fixed-width row, right-padded: causal attention keeps the padding out of
  # the logits read, and one compiled forward pass serves every step.
  forward = nnx.jit(lambda model, prefix: model(ids, jnp.ones_like(ids), prefix))
  prefix = [3]
  for _ in range(8):
    logits = forward(tiny_mbart, jnp.asarray([prefix + [1] * (9 - len(prefix))]))
    prefix.append(int(jnp.argmax(logits[0, len(prefix) - 1])))
    if prefix[-1] == 2:
      break
  assert out[0].tolist() == prefix


@pytest.mark.parametrize('groups', [1, 3])
def test_attention_through_cache_slots_reads_each_position_from_its_row(groups):
  """A beam search step's self-attention (never-reordered cache, kv_slots) equals attention over
  keys/values gathered row by row, under jit, for one sentence (XLA's CPU reduce fusion once
  miscompiled that shape) and several; without slots, each row reads its own."""
  attention = MultiHeadAttention(64, 4, 0.0, dtype='float32', param_dtype='float32',
                                 rngs=nnx.Rngs(0))
  group, kv_len = 4, 9
  rng = np.random.default_rng(groups)
  queries = jnp.asarray(rng.normal(size=(groups * group, 1, 64)), jnp.float32)
  keys = jnp.asarray(rng.normal(size=(groups * group, kv_len, 4, 16)), jnp.float32)
  values = jnp.asarray(rng.normal(size=(groups * group, kv_len, 4, 16)), jnp.float32)
  cache = KVCache.zeros(groups * group, kv_len, 4, 16, jnp.float32).written(keys, values, 0)
  slots = jnp.asarray(rng.integers(0, group, size=(groups, group, kv_len)), jnp.int32)
  mask = (jnp.arange(kv_len) < 6)[None, None, None]
  attend = nnx.jit(lambda a, q, c, s: a.attend_to_cache(q, c, mask, kv_slots=s))
  out = attend(attention, queries, cache, slots)
  rows = (slots + jnp.arange(groups)[:, None, None] * group).reshape(groups * group, kv_len)
  positions = jnp.arange(kv_len)[None]
  gathered = attention(queries, keys[rows, positions], values[rows, positions], mask)
  np.testing.assert_allclose(out, gathered, atol=1e-5)
  own = attend(attention, queries, cache, None)
  np.testing.assert_allclose(own, attention(queries, keys, values, mask), atol=1e-5)


def test_kv_cache_writes_cuts_and_grows_along_positions():
  keys = jnp.arange(2 * 3 * 4 * 5, dtype=jnp.float32).reshape(2, 3, 4, 5)  # [batch, new, h, d]
  cache = KVCache.zeros(2, 6, 4, 5, jnp.float32).written(keys, -keys, 2)
  np.testing.assert_array_equal(cache.keys[:, :, :, 2:5], keys.transpose(0, 2, 3, 1))
  np.testing.assert_array_equal(cache.values[:, 2:5], -keys)
  assert not cache.keys[..., [0, 1, 5]].any() and not cache.values[:, [0, 1, 5]].any()
  cut = cache.resized(4)
  assert (cut.keys.shape, cut.values.shape, cut.length) == ((2, 4, 5, 4), (2, 4, 4, 5), 4)
  grown = cut.resized(7)
  np.testing.assert_array_equal(grown.keys[..., :4], cut.keys)
  np.testing.assert_array_equal(grown.values[:, :4], cut.values)
  assert grown.length == 7 and not grown.keys[..., 4:].any() and not grown.values[:, 4:].any()


def test_search_attends_to_doubling_cache_lengths():
  """The search's attended cache lengths: doubling from 16, max_len last, no bound so near
  max_len that its loop would run a few steps; the model sees the cache and slots at those
  lengths, in turn."""
  assert attended_lengths(5) == [5]
  assert attended_lengths(17) == [17]
  assert attended_lengths(41) == [16, 32, 41]
  assert attended_lengths(64) == [16, 32, 64]
  assert attended_lengths(65) == [16, 32, 65]
  seen = []

  def tokens_to_logits(tokens, cache, position, cache_slots):  # traced once per length
    seen.append((cache.keys.shape[3], cache.values.shape[1], cache_slots.shape[2]))
    return jnp.zeros((tokens.shape[0], 8)).at[:, 6].set(1.0), cache

  beam_search(tokens_to_logits, jnp.full((1,), START), KVCache.zeros(2, 3 + 40, 1, 1, jnp.float32),
              beam_size=2, max_new_tokens=40, eos_id=EOS, pad_id=PAD)
  # after a 2-position prefix
  assert seen == [(2 + 16, 2 + 16, 16), (2 + 32, 2 + 32, 32), (2 + 41, 2 + 41, 41)]


@pytest.mark.parametrize('kind', ['encoder_decoder', 'decoder_only'])
def test_searching_past_the_first_attended_length_equals_attending_to_the_whole_cache(
    tiny_mbart, kind, monkeypatch):
  """A search of 30 new tokens (attending to 16, then 31 cached positions) returns what a search
  attending to the whole cache at every step returns."""
  from sltjax import decoding  # pylint: disable=import-outside-toplevel
  from sltjax.models.xglm import XGLM, XGLMConfig  # pylint: disable=import-outside-toplevel
  ids = source_batch()
  mask = (ids != 1).astype(np.int32)
  if kind == 'decoder_only':  # left-padded prompts
    ids = np.stack([np.roll(row, -int(m.sum())) for row, m in zip(ids, mask)])
    mask = (ids != 1).astype(np.int32)
    model = XGLM(XGLMConfig(vocab_size=40, d_model=32, num_layers=2, attention_heads=4,
                            ffn_dim=64, max_position_embeddings=64), rngs=nnx.Rngs(0))
    model.embed_tokens.embedding[2] = 0.0  # EOS logit 0: beams run past 16 positions
    search = partial(decoding.decoder_only_search, eos_token_id=2, pad_token_id=1)
  else:
    model = tiny_mbart
    search = partial(decoding.encoder_decoder_search, decoder_start_token_id=3, eos_token_id=2,
                     pad_token_id=1)
  options = dict(num_beams=4, max_new_tokens=30, length_penalty=1.0, length_penalty_style='hf',
                 early_stopping=False)

  def run():  # a new function each time: jit traces it afresh
    return np.asarray(nnx.jit(lambda m: search(m, ids, mask, **options))(model))

  segmented = run()
  monkeypatch.setattr(decoding, 'FIRST_ATTENDED_LENGTH', 64)
  whole_cache = run()
  assert decoding.attended_lengths(31) == [31]
  np.testing.assert_array_equal(segmented, whole_cache)
  assert np.any(segmented[..., -13:] != 1)  # some beams ran past 16 positions
