r"""A procedural gloss-to-text corpus: weather-forecast glosses and German sentences, no download.

The grammar imitates how PHOENIX-2014T glosses relate to their translations, so translation is
not copying: glosses put time and place first and the predicate last, with no articles,
prepositions or inflection (`MORGEN NORD REGEN STARK`); German adds function words, inflects,
and moves the verb to second position (`morgen gibt es im norden starken regen .`).

  python -m sltjax.data.synthetic_text --output_dir=DIR [--train=4000 --dev=300 --test=300]

writes {train,dev,test}.{gloss,de} (one sentence per line), the layout of a text corpus (data.path).
"""
from collections.abc import Callable

import numpy as np
from absl import app, flags

from sltjax.data import text

# gloss -> German phrase
DAYS = {'HEUTE': 'heute', 'MORGEN': 'morgen', 'MONTAG': 'am montag', 'SAMSTAG': 'am samstag',
        'SONNTAG': 'am sonntag', 'WOCHENENDE': 'am wochenende'}
PARTS_OF_DAY = {'': '', 'NACHT': 'in der nacht', 'NACHMITTAG': 'am nachmittag',
                'ABEND': 'am abend'}
REGIONS = {'NORD': 'im norden', 'SUED': 'im süden', 'WEST': 'im westen', 'OST': 'im osten',
           'BERG': 'in den bergen', 'KUESTE': 'an der küste'}
# weather gloss -> (German noun with its adjective endings: strong/weak form)
WEATHER = {'REGEN': ('regen', 'starken', 'leichten'), 'SCHNEE': ('schnee', 'starken', 'leichten'),
           'GEWITTER': ('gewitter', 'heftige', 'einzelne'), 'NEBEL': ('nebel', 'dichten', 'leichten'),
           'WIND': ('wind', 'kräftigen', 'schwachen'), 'SONNE': ('sonnenschein', 'viel', 'etwas')}
INTENSITY = {'STARK': 1, 'WENIG': 2}
NUMBERS = {str(n): word for n, word in enumerate(
    ['null', 'eins', 'zwei', 'drei', 'vier', 'fünf', 'sechs', 'sieben', 'acht', 'neun', 'zehn',
     'elf', 'zwölf', 'dreizehn', 'vierzehn', 'fünfzehn', 'sechzehn', 'siebzehn', 'achtzehn',
     'neunzehn', 'zwanzig', 'einundzwanzig', 'zweiundzwanzig', 'dreiundzwanzig',
     'vierundzwanzig', 'fünfundzwanzig'])}
TEMPERATURE = {'WARM': 'warm', 'KALT': 'kalt', 'MILD': 'mild'}


def _pick(rng: np.random.Generator, table: dict) -> str:
  return list(table)[rng.integers(len(table))]


def _weather(rng) -> tuple[str, str]:
  """DAY [PART] REGION WEATHER [INTENSITY] -> '<day> [part] gibt es <region> [adj] <noun> .'"""
  day, part, region, weather = (_pick(rng, DAYS), _pick(rng, PARTS_OF_DAY), _pick(rng, REGIONS),
                                _pick(rng, WEATHER))
  intensity = _pick(rng, INTENSITY) if rng.random() < 0.6 else ''
  noun, *adjectives = WEATHER[weather]
  phrase = f'{adjectives[INTENSITY[intensity] - 1]} {noun}' if intensity else noun
  glosses = [day, part, region, weather, intensity]
  words = [DAYS[day], PARTS_OF_DAY[part], 'gibt es', REGIONS[region], phrase, '.']
  return ' '.join(g for g in glosses if g), ' '.join(w for w in words if w)


def _temperature(rng) -> tuple[str, str]:
  """DAY REGION TEMPERATUR NUMBER GRAD -> 'temperaturen <region> <day> bis <number> grad .'"""
  day, region = _pick(rng, DAYS), _pick(rng, REGIONS)
  number = str(rng.integers(len(NUMBERS)))
  return (f'{day} {region} TEMPERATUR {number} GRAD',
          f'die temperaturen erreichen {DAYS[day]} {REGIONS[region]} {NUMBERS[number]} grad .')


def _feeling(rng) -> tuple[str, str]:
  """DAY REGION WARM/KALT [WEATHER DAZU] -> 'es wird <day> <region> <adj> [und dazu gibt es ...] .'"""
  day, region, temperature = _pick(rng, DAYS), _pick(rng, REGIONS), _pick(rng, TEMPERATURE)
  gloss = f'{day} {region} {temperature}'
  sentence = f'{DAYS[day]} wird es {REGIONS[region]} {TEMPERATURE[temperature]}'
  if rng.random() < 0.5:
    weather = _pick(rng, WEATHER)
    gloss += f' {weather} DAZU'
    sentence += f' und dazu gibt es {WEATHER[weather][0]}'
  return gloss, sentence + ' .'


TEMPLATES: tuple[Callable, ...] = (_weather, _temperature, _feeling)


def generate(num_examples: int, seed: int) -> list[tuple[str, str]]:
  """`num_examples` (gloss, German) pairs, deterministic given `seed`."""
  rng = np.random.default_rng(seed)
  return [TEMPLATES[rng.integers(len(TEMPLATES))](rng) for _ in range(num_examples)]


def write_corpus(directory: str, sizes: dict[str, int], seed: int = 0) -> str:
  """Writes {split}.gloss / {split}.de for each split; splits use distinct seeds."""
  for offset, (split, size) in enumerate(sizes.items()):
    glosses, german = zip(*generate(size, seed * 1000 + offset))
    text.write_parallel(directory, split, list(glosses), list(german))
  return directory


_SPLIT_SIZES = {'train': 4000, 'dev': 300, 'test': 300}
FLAGS = flags.FLAGS


def main(argv):
  del argv
  sizes = {split: FLAGS[split].value for split in _SPLIT_SIZES}
  write_corpus(FLAGS.output_dir, sizes, FLAGS.seed)
  print(f'Wrote {sizes} to {FLAGS.output_dir}')


if __name__ == '__main__':
  # Defined only when run as a program: importing write_corpus must not claim flag names.
  flags.DEFINE_string('output_dir', None, 'Where to write the corpus.')
  for split_name, default_size in _SPLIT_SIZES.items():
    flags.DEFINE_integer(split_name, default_size, f'Examples in the {split_name} split.')
  flags.DEFINE_integer('seed', 0, 'Random seed.')
  flags.mark_flag_as_required('output_dir')
  app.run(main)
