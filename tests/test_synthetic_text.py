"""The embedded synthetic Gloss2Text corpus."""
from sltjax.data import synthetic_text


def test_deterministic_and_seeded():
  assert synthetic_text.generate(50, seed=1) == synthetic_text.generate(50, seed=1)
  assert synthetic_text.generate(50, seed=1) != synthetic_text.generate(50, seed=2)


def test_translation_is_not_copying():
  pairs = synthetic_text.generate(500, seed=0)
  # function words that have no gloss, and a verb moved before the place
  assert sum('gibt es' in t for _, t in pairs) > 100
  temperature = [(g, t) for g, t in pairs if 'TEMPERATUR' in g]
  assert temperature
  for gloss, text in temperature:  # time first in glosses, the subject first in German
    assert gloss.split()[0] in synthetic_text.DAYS
    assert text.startswith('die temperaturen erreichen ')
  for gloss, text in pairs:
    assert gloss == gloss.upper() and text == text.lower() and text.endswith(' .')


def test_writes_the_gloss2text_layout(tmp_path):
  synthetic_text.write_corpus(str(tmp_path), {'train': 30, 'dev': 5})
  assert sorted(p.name for p in tmp_path.iterdir()) == ['dev.de', 'dev.gloss', 'train.de',
                                                        'train.gloss']
  train = (tmp_path / 'train.gloss').read_text().splitlines()
  dev = (tmp_path / 'dev.gloss').read_text().splitlines()
  assert len(train) == 30 and len(dev) == 5 and train[:5] != dev
