"""Beam search at a realistic size against transformers' `generate`: an mBART-shaped model of
d_model 512, 6+6 layers, 8 heads and PHOENIX-2014T's trimmed vocabulary (2,454 ids), converted
from a `save_pretrained` directory. Each sentence decoded alone (a batch of one, as translate
decodes a video), in batches of several sizes, and padded, must give HF's tokens.

The weights are random (training this size is too slow for the suite): where an output differs,
the test accepts it only if HF scores both outputs within 1e-5, i.e. a tie that float rounding
may break either way.
"""
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from sltjax.convert.hf import load_mbart  # pylint: disable=wrong-import-position
from sltjax.decoding import generate  # pylint: disable=wrong-import-position

VOCAB, PAD, EOS = 2454, 1, 2
LANG = VOCAB - 24  # de_DE in the trimmed tokenizer: the source's last token and the start token
MAX_NEW_TOKENS = 24
LENGTHS = (14, 18, 9, 22, 12, 16)  # source lengths with </s> de_DE


@pytest.fixture(scope='module')
def models(tmp_path_factory):
  torch.manual_seed(0)
  config = transformers.MBartConfig(
      vocab_size=VOCAB, d_model=512, encoder_layers=6, decoder_layers=6,
      encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048,
      decoder_ffn_dim=2048, max_position_embeddings=128, scale_embedding=True,
      init_std=0.05)  # a little above HF's 0.02, so that outputs depend more on the source
  hf = transformers.MBartForConditionalGeneration(config).eval()
  directory = tmp_path_factory.mktemp('mbart_d512')
  hf.save_pretrained(directory)
  return hf, load_mbart(str(directory))


def sources(lengths, seed=0):
  """Source ids [batch, max(lengths)]: random pieces, `</s> de_DE`, right-padded."""
  rng = np.random.default_rng(seed)
  ids = np.full((len(lengths), max(lengths)), PAD, np.int64)
  for i, n in enumerate(lengths):
    ids[i, :n - 2] = rng.integers(4, VOCAB - 27, size=n - 2)
    ids[i, n - 2:n] = [EOS, LANG]
  return ids


def hf_generate(hf, ids, num_beams):
  with torch.no_grad():
    return hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(ids != PAD),
                       num_beams=num_beams, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                       decoder_start_token_id=LANG).numpy()


def hf_score(hf, source, output):
  """HF's beam score of `output` (start token first) for one unpadded source: the summed
  log-probability of the generated tokens over their count (length_penalty 1)."""
  tokens = [int(t) for t in output if t != PAD]
  with torch.no_grad():
    logits = hf(input_ids=torch.tensor(source[None]),
                decoder_input_ids=torch.tensor([tokens[:-1]])).logits[0]
  log_probs = torch.log_softmax(logits, -1)
  return float(sum(log_probs[t, tok] for t, tok in enumerate(tokens[1:]))) / (len(tokens) - 1)


def assert_same_or_tied(hf, source, ours, expected):
  source = source[source != PAD]
  ours, expected = [t for t in ours if t != PAD], [t for t in expected if t != PAD]
  if ours != expected:
    ours_score, hf_best = hf_score(hf, source, ours), hf_score(hf, source, expected)
    assert abs(ours_score - hf_best) < 1e-5, (
        f'source {source.tolist()}: sltjax {ours} (HF score {ours_score:.6f}) != HF {expected} '
        f'({hf_best:.6f})')


@pytest.mark.slow
@pytest.mark.parametrize('num_beams', [1, 2, 4])
def test_each_sentence_alone_decodes_like_transformers(models, num_beams):
  """Batches of one: the path translate takes for every video (wrong before: a miscompiled
  shared-keys attention when the whole batch is one sentence)."""
  hf, model = models
  ids = sources(LENGTHS[:3])
  for i, n in enumerate(LENGTHS[:3]):
    alone = ids[i:i + 1, :n]
    ours = generate(model, alone, num_beams=num_beams, max_new_tokens=MAX_NEW_TOKENS,
                    decoder_start_token_id=LANG)
    assert_same_or_tied(hf, alone[0], ours[0].tolist(), hf_generate(hf, alone, num_beams)[0].tolist())


@pytest.mark.slow
@pytest.mark.parametrize('batch', [2, 6])
def test_padded_batches_decode_like_transformers(models, batch):
  hf, model = models
  ids = sources(LENGTHS[:batch], seed=batch)
  ours = generate(model, ids, num_beams=4, max_new_tokens=MAX_NEW_TOKENS,
                  decoder_start_token_id=LANG)
  expected = hf_generate(hf, ids, 4)
  for i in range(batch):
    assert_same_or_tied(hf, ids[i], ours[i].tolist(), expected[i].tolist())
  assert len({tuple(row) for row in expected.tolist()}) > 1, 'outputs do not depend on the source'
