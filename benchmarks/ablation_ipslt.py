r"""Does IP-SLT's iterative prototype refinement help? Its ablation on real text and on video.

  .venv/bin/python benchmarks/ablation_ipslt.py --workdir=/tmp/ipslt_ablation \
      [--phoenix=../shared/data/phoenix2014t] [--data_dir=data] [--parts=phoenix,synthetic] \
      [--seeds=0,1] [--runs=K0_3+4_layers,K1_KL]

  synthetic  synthetic_signs Sign2Text on the README main job's base
             (configs/ipslt.py:mmtlb_sign2text,runlocal = configs/mmtlb.py:staged,runlocal,
             started from its Sign2Gloss and Gloss2Text stages, trained here once): K = 0 and
             K = 3, best dev checkpoint scored on test, per seed
  phoenix    PHOENIX-2014T Gloss2Text on the real text files (configs/ipslt.py:gloss2text: the
             from-scratch 2+2-layer d256 transformer) at the base's own default schedule
             (--steps 3,000 at --batch_size 64, where K = 0 reaches ~24.8 dev BLEU-4), dev
             BLEU-4 of the best of the dev evaluations every --eval_every steps (the text files
             have no test split): K = 0 (the base system); the parameter-matched control (K = 0
             with one more encoder layer and two more decoder layers, as many as E2 and D2 add);
             K = 3 (the unofficial reimplementation's K) and K = 1, KL distillation, per seed.

Every run has its own workdir (WORKDIR/<part>/seed<N>/<run>, PHOENIX's part named with its
steps and batch); finished runs are recorded in WORKDIR/results.json and skipped by a rerun, and
an interrupted run resumes from its last checkpoint, so the ablation can span sessions; --runs
picks runs by workdir name (where a machine keeps nothing between sittings, one run a sitting).
Each row gives BLEU-4, the step it was reached at, the trained parameters, the median training
step time (log windows after the first, which holds compilation) and the evaluation time per
sentence of a second, warm pass over the scored split (beam search; for video also the visual
encoder), and the table divides both times by K = 0's of the same part. Run it on an idle
machine: the times are only comparable when nothing else shares the cores.
"""
import argparse
import json
import os
import pathlib
import statistics
import sys
import time

from absl import flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/ of this checkout

from benchmarks.learning_table import load_rows, save_rows  # pylint: disable=wrong-import-position

REPO = pathlib.Path(__file__).resolve().parents[1]
# name -> (workdir name, model.prototype overrides, other config.model overrides); iterations 0
# is the base system. The control adds E2's one layer to the encoder and D2's two to the decoder.
PHOENIX_RUNS = {
    'K=0 (base)': ('K0', {'iterations': 0}, {}),
    'K=0, 3+4 layers (parameter-matched control)': (
        'K0_3+4_layers', {'iterations': 0}, {'encoder_layers': 3, 'decoder_layers': 4}),
    'K=3 KL': ('K3_KL', {'iterations': 3}, {}),
    'K=1 KL': ('K1_KL', {'iterations': 1}, {}),
}
SYNTHETIC_RUNS = {'K=0 (base)': ('K0', {'iterations': 0}, {}),
                  'K=3 KL': ('K3_KL', {'iterations': 3}, {})}


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--phoenix', default=str(REPO.parent / 'shared' / 'data' / 'phoenix2014t'),
                      help='Folder of PHOENIX-2014T\'s {train,dev}.{gloss,de}.')
  parser.add_argument('--data_dir', default='data', help='Where synthetic_signs is (or is built).')
  parser.add_argument('--parts', default='synthetic,phoenix', help='Run in this order.')
  parser.add_argument('--seeds', default='0,1')
  parser.add_argument('--runs', default='',
                      help='Only these runs, by workdir name (e.g. K0_3+4_layers,K1_KL); '
                           'default all.')
  parser.add_argument('--steps', type=int, default=3000, help='PHOENIX Gloss2Text steps.')
  parser.add_argument('--batch_size', type=int, default=64, help='PHOENIX Gloss2Text batch.')
  parser.add_argument('--eval_every', type=int, default=500,
                      help='PHOENIX Gloss2Text: dev evaluations (and checkpoints) every N steps.')
  return parser.parse_args()


def phoenix_config(args, seed: int, prototype: dict, model: dict):
  from configs import ipslt  # pylint: disable=import-outside-toplevel
  c = ipslt.get_config('gloss2text')
  c.data.path = args.phoenix
  c.seed = seed
  c.total_steps = args.steps
  c.batch_size = args.batch_size
  c.eval_every_steps = min(args.eval_every, args.steps)
  c.checkpoint_every_steps = c.eval_every_steps  # a killed run resumes near where it stopped
  c.log_every_steps = 50
  c.schedule.warmup_steps = args.steps // 10
  c.model.update(model)
  c.model.prototype.update(prototype)
  return c


def synthetic_configs(args, root: str):
  """(stage configs {name: (config, workdir)} trained once, a function seed, prototype ->
  the Sign2Text config)."""
  from configs import gloss2text, ipslt, mmtlb  # pylint: disable=import-outside-toplevel
  stages = {}
  for name, module, variant in (('sign2gloss', mmtlb, 'sign2gloss,runlocal'),
                                ('gloss2text', gloss2text, 'mmtlb,runlocal')):
    config = module.get_config(variant)
    config.data.data_dir = args.data_dir
    stages[name] = (config, os.path.join(root, 'stages', name))

  def sign2text(seed: int, prototype: dict, model: dict):
    c = ipslt.get_config('mmtlb_sign2text,runlocal')
    c.data.data_dir = args.data_dir
    c.init.visual, c.init.translation = stages['sign2gloss'][1], stages['gloss2text'][1]
    c.seed = seed
    c.model.translation.update(model)
    c.model.prototype.update(prototype)
    return c

  return stages, sign2text


def step_seconds(workdir: str) -> float:
  """Median seconds per training step over the log windows after the first."""
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    rates = [line['steps_per_sec'] for line in map(json.loads, f)
             if line.get('split') == 'train' and 'steps_per_sec' in line]
  return 1.0 / statistics.median(rates[1:] or rates)


def run(config, workdir: str, split: str) -> dict:
  """Trains (or resumes) `config`, scores its best checkpoint on `split` and times a second,
  warm evaluation of it."""
  from sltjax import train  # pylint: disable=import-outside-toplevel
  from sltjax.optim import trained_parameter_count  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  train.train_and_evaluate(config, workdir)
  scored = config.copy_and_resolve_references()
  scored.eval.split = split
  exp = train.build_experiment(scored, workdir)
  params, rest, step = exp.eval_variables()
  metrics, predictions = exp.evaluate(params, rest, split)  # compiles
  timer = time.perf_counter()
  exp.evaluate(params, rest, split)
  eval_seconds = time.perf_counter() - timer
  return {'split': split, 'best_step': int(step), 'bleu4': metrics['bleu4'],
          'trained_parameters_m': round(trained_parameter_count(scored, exp.abstract_params) / 1e6,
                                        3),
          'step_s': step_seconds(workdir),
          'eval_ms_per_sentence': 1000 * eval_seconds / len(predictions['text']),
          'minutes': round((time.perf_counter() - start) / 60, 1)}


def print_table(rows: list[dict], part: str, title: str) -> None:
  """Mean [per-seed values] of BLEU-4, and step / evaluation times against K = 0's."""
  rows = [r for r in rows if r['part'] == part]
  if not rows:
    return
  names = list(dict.fromkeys(r['run'] for r in rows))
  mean = lambda run, key: statistics.mean(r[key] for r in rows if r['run'] == run)
  base = names[0]
  print(f'\n{title}')
  print('| run | trained parameters | seeds | BLEU-4 mean [per seed] (at step) '
        '| spread (max - min) | train step s (x K=0) | eval ms / sentence (x K=0) |')
  print('|---|---|---|---|---|---|---|')
  for name in names:
    group = [r for r in rows if r['run'] == name]
    bleu = [r['bleu4'] for r in group]
    step, decode = mean(name, 'step_s'), mean(name, 'eval_ms_per_sentence')
    per_seed = ', '.join(f'{r["bleu4"]:.2f} ({r["best_step"]})' for r in group)
    parameters = group[0].get('trained_parameters_m')
    print(f'| {name} | {f"{parameters:.2f}M" if parameters else "-"} | {len(group)} '
          f'| {statistics.mean(bleu):.2f} [{per_seed}] | {max(bleu) - min(bleu):.2f} '
          f'| {step:.3f} ({step / mean(base, "step_s"):.2f}x) '
          f'| {decode:.1f} ({decode / mean(base, "eval_ms_per_sentence"):.2f}x) |')


def main():
  args = parse_args()
  flags.FLAGS.mark_as_parsed()  # grain reads absl flags
  from sltjax import train  # pylint: disable=import-outside-toplevel
  os.makedirs(args.workdir, exist_ok=True)
  rows = load_rows(args.workdir)
  done = {(r['part'], r['seed'], r['run']) for r in rows}
  seeds = [int(s) for s in args.seeds.split(',')]
  parts = args.parts.split(',')
  phoenix = f'phoenix_{args.steps}x{args.batch_size}'  # the part, named by its schedule
  stages, sign2text = synthetic_configs(args, os.path.join(args.workdir, 'synthetic'))
  plans = []  # (part, seed, run name, workdir name, config, scored split)
  for part in parts:
    for seed in seeds:
      if part == 'phoenix':
        plans += [(phoenix, seed, name, directory, phoenix_config(args, seed, *overrides), 'dev')
                  for name, (directory, *overrides) in PHOENIX_RUNS.items()]
      elif part == 'synthetic':
        plans += [('synthetic', seed, name, directory, sign2text(seed, *overrides), 'test')
                  for name, (directory, *overrides) in SYNTHETIC_RUNS.items()]
      else:
        raise SystemExit(f'--parts: unknown part {part!r}; use synthetic and phoenix.')
  names = {plan[3] for plan in plans}
  runs = set(args.runs.split(',')) if args.runs else names
  if runs - names:
    raise SystemExit(f'--runs: unknown run(s) {sorted(runs - names)}; the parts asked for have '
                     f'{sorted(names)}.')
  plans = [plan for plan in plans if plan[:3] not in done and plan[3] in runs]
  if any(plan[0] == 'synthetic' for plan in plans):
    for stage_config, stage_workdir in stages.values():  # resumed where a run stopped
      train.train_and_evaluate(stage_config, stage_workdir)
  for part, seed, name, directory, config, split in plans:
    workdir = os.path.join(args.workdir, part, f'seed{seed}', directory)
    rows.append({'part': part, 'seed': seed, 'run': name, **run(config, workdir, split)})
    save_rows(rows, args.workdir)
    print(json.dumps(rows[-1]), flush=True)
  print_table(rows, phoenix, f'PHOENIX-2014T Gloss2Text, {args.steps} steps at batch '
              f'{args.batch_size}, dev BLEU-4 of the best dev evaluation (every '
              f'{min(args.eval_every, args.steps)} steps; from scratch, d256 2+2 layers, '
              'E2 1 layer)')
  print_table(rows, 'synthetic', 'synthetic_signs Sign2Text (the README main job\'s base, '
              'started from its stages), test BLEU-4 of the best dev checkpoint')


if __name__ == '__main__':
  main()
