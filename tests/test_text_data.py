"""The parallel-text grain pipeline: formats, padding buckets, per-process rows, determinism."""
import ml_collections
import numpy as np
import pytest

from sltjax.data import batching, text
from sltjax.data.tokenizers import WordTokenizer


def data_config(path, lowercase_source=False):
  return ml_collections.ConfigDict(dict(path=str(path), source_suffix='gloss', target_suffix='de',
                                        lowercase_source=lowercase_source))


@pytest.fixture()
def corpus_and_tokenizer(toy_corpus):
  sources, targets = text.read_parallel(data_config(toy_corpus), 'train')
  tokenizer = WordTokenizer.build(sources + targets, ['de_DE'])
  return text.tokenize_corpus(sources, targets, tokenizer, 'de_DE'), tokenizer, sources


def loader(corpus, tokenizer, buckets=(8, 16), process=(0, 1)):
  return text.BatchLoader(corpus, tokenizer, 'de_DE', buckets, *process)


def test_mbart_sequence_formats(corpus_and_tokenizer):
  corpus, tok, sources = corpus_and_tokenizer
  batch = loader(corpus, tok).map(np.array([3, batching.PAD_INDEX]))
  lang, eos, pad = tok.lang_id('de_DE'), tok.eos_id, tok.pad_id
  src = tok.encode(sources[3])
  tgt = tok.encode(corpus.references[3])
  n = len(tgt)
  assert batch['input_ids'][0].tolist() == src + [eos, lang] + [pad] * (8 - len(src) - 2)
  assert batch['labels'][0, :n + 2].tolist() == tgt + [eos, lang]
  assert batch['decoder_input_ids'][0, :n + 2].tolist() == [lang] + tgt + [eos]
  assert batch['label_weights'][0].tolist() == [1.0] * (n + 1) + [0.0] * (16 - n - 1)
  assert batch['attention_mask'][0].sum() == len(src) + 2
  # the filler row of a partial evaluation batch is all padding and weighs nothing
  assert batch['index'].tolist() == [3, -1]
  assert batch['attention_mask'][1].sum() == 0 and batch['label_weights'][1].sum() == 0


def test_truncation_keeps_eos_and_language(corpus_and_tokenizer):
  corpus, tok, _ = corpus_and_tokenizer
  longest = max(range(len(corpus)), key=lambda i: len(corpus.sources[i]))
  batch = loader(corpus, tok, buckets=(4,)).map(np.array([longest]))
  assert batch['input_ids'].shape == (1, 4)
  assert batch['input_ids'][0, -2:].tolist() == [tok.eos_id, tok.lang_id('de_DE')]
  assert batch['labels'][0, -2:].tolist() == [tok.eos_id, tok.lang_id('de_DE')]


def test_processes_load_their_rows_of_the_same_global_batch(corpus_and_tokenizer):
  corpus, tok, _ = corpus_and_tokenizer
  plan = batching.train_plan(len(corpus), 8, seed=3)
  whole = loader(corpus, tok).map(plan[5])
  parts = [loader(corpus, tok, process=(p, 2)).map(plan[5]) for p in range(2)]
  for key in whole:
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def test_plan_is_deterministic_and_reshuffles_each_epoch():
  a, b = batching.train_plan(10, 5, seed=1), batching.train_plan(10, 5, seed=1)
  epochs = [np.concatenate([a[2 * e], a[2 * e + 1]]) for e in range(3)]
  assert all(sorted(e) == list(range(10)) for e in epochs)  # each epoch sees every record once
  assert not np.array_equal(epochs[0], epochs[1])
  np.testing.assert_array_equal(a[4], b[4])
  assert not np.array_equal(a[0], batching.train_plan(10, 5, seed=2)[0])


def test_eval_plan_covers_every_record_once():
  plan = batching.eval_plan(7, 4)
  flat = np.concatenate([plan[i] for i in range(len(plan))])
  assert flat.tolist() == [0, 1, 2, 3, 4, 5, 6, -1]


def test_bad_files_give_specific_errors(tmp_path):
  (tmp_path / 'train.gloss').write_text('A B\nC\n')
  (tmp_path / 'train.de').write_text('a b\n')
  with pytest.raises(ValueError, match=r'train.gloss has 2 lines but .*train.de has 1'):
    text.read_parallel(data_config(tmp_path), 'train')
  (tmp_path / 'train.de').write_text('a b\n\n')
  with pytest.raises(ValueError, match=r'train.de, line 2: empty line'):
    text.read_parallel(data_config(tmp_path), 'train')
  with pytest.raises(FileNotFoundError, match=r"Split 'dev': missing .*Splits present .*\['train'\]"):
    text.read_parallel(data_config(tmp_path), 'dev')


def test_write_parallel_is_what_read_parallel_reads_and_keeps_old_files_on_bad_input(tmp_path):
  text.write_parallel(str(tmp_path), 'train', ['A B', 'C'], ['a b', 'c'])
  assert text.read_parallel(data_config(tmp_path), 'train') == (['A B', 'C'], ['a b', 'c'])
  with pytest.raises(ValueError, match=r"Split 'train': 1 sources but 2 targets"):
    text.write_parallel(str(tmp_path), 'train', ['D'], ['d', 'e'])
  with pytest.raises(UnicodeEncodeError):  # the target fails after the source was written
    text.write_parallel(str(tmp_path), 'train', ['D'], ['\ud800'])
  assert (tmp_path / 'train.gloss').read_text() == 'A B\nC\n'
  assert sorted(p.name for p in tmp_path.iterdir()) == ['train.de', 'train.gloss']


def test_lowercase_source(toy_corpus):
  sources, _ = text.read_parallel(data_config(toy_corpus, lowercase_source=True), 'train')
  assert sources[0] == sources[0].lower() != text.read_parallel(data_config(toy_corpus),
                                                                'train')[0][0]


def test_worker_processes_give_the_same_batches_and_resume(corpus_and_tokenizer):
  corpus, tok, _ = corpus_and_tokenizer

  def dataset(num_workers):
    return batching.make_dataset(batching.train_plan(len(corpus), 8, seed=0), loader(corpus, tok),
                             num_workers)

  reference = [b['index'] for _, b in zip(range(8), iter(dataset(0)))]
  first = iter(dataset(2))
  got = [next(first)['index'] for _ in range(3)]
  state = first.get_state()
  first.close()
  resumed = iter(dataset(2))
  resumed.set_state(state)
  got += [next(resumed)['index'] for _ in range(5)]
  resumed.close()
  for a, b in zip(reference, got, strict=True):
    np.testing.assert_array_equal(a, b)
