"""What the learning benchmarks (learning_*.py) share: training and scoring one run, and the
table of means over seeds."""
import collections
import json
import os
import time

import numpy as np


def train_and_score_test(config, workdir: str, name: str, seed: int) -> dict:
  """Trains `config` in `workdir` (resuming; a finished run is only scored again) and scores its
  best dev checkpoint on the test split: one results row."""
  from sltjax import train  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  train.train_and_evaluate(config, workdir)
  test_config = config.copy_and_resolve_references()
  test_config.eval.split = 'test'
  scores = train.evaluate_checkpoint(test_config, workdir)
  return {'run': name, 'seed': seed, 'steps': config.total_steps,
          'minutes': round((time.perf_counter() - start) / 60, 1), **scores}


def train_every_seed(rows: list[dict], runs, seeds: list[int], root: str) -> list[dict]:
  """Appends to `rows` the test scores of every run of runs(seed, root/seed<N>) -> [(name,
  config, workdir)], saving them after each run; returns `rows`."""
  for seed in seeds:
    for name, config, workdir in runs(seed, os.path.join(root, f'seed{seed}')):
      rows.append(train_and_score_test(config, workdir, name, seed))
      save_rows(rows, root)
  return rows


def save_rows(rows: list[dict], root: str) -> None:
  """Writes root/results.json; a kill never leaves it truncated."""
  path = os.path.join(root, 'results.json')
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    json.dump(rows, f, indent=1)
  os.replace(path + '.tmp', path)


def load_rows(root: str) -> list[dict]:
  """The rows root/results.json holds (none before the first save)."""
  path = os.path.join(root, 'results.json')
  if not os.path.exists(path):
    return []
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def print_table(rows: list[dict], columns: tuple[str, ...], title: str) -> None:
  """A markdown table: per run, each column's mean over seeds [and the per-seed values]."""
  print(f'\n{title}')
  print('| run | ' + ' | '.join(columns) + ' |')
  print('|---|' + '---|' * len(columns))
  by_run = collections.defaultdict(list)
  for row in rows:
    by_run[row['run']].append(row)
  for run, group in by_run.items():
    cells = []
    for column in columns:
      values = [r[column] for r in group if column in r]
      cells.append('-' if not values else f'{np.mean(values):.2f}' if len(values) == 1 else
                   f'{np.mean(values):.2f} [{", ".join(f"{v:.2f}" for v in values)}]')
    print(f'| {run} | ' + ' | '.join(cells) + ' |')
