r"""Per-chip memory, collectives and roofline step time of paper-size training steps on TPU slices
of 8 to 256 chips, compiled on this CPU (sltjax/compile_check.py; needs sltjax[tpu]).

  python benchmarks/pod_scaling.py [--systems=c2rl_pretrain,sign2gpt_translation] \
      [--generations=v5e,v5p] [--chips=8,16,64,256] [--scalings=weak,strong]

weak    a fixed number of videos per chip (WEAK_ROWS_PER_CHIP): the global batch grows with chips
strong  the paper's global batch on every slice; where chips outnumber videos, the rest of the
        mesh is tensor-parallel (a batch row cannot be split)

Every point shards parameters and optimizer state over all data-parallel chips (mesh.fsdp), so
their bytes per chip should fall as 1/chips: the table shows them beside the step's total.
Prints a markdown table (one row per point) and, last, the rows as JSON.
"""
import json
import sys
import time

from absl import app, flags

sys.path.insert(0, '.')
from configs import c2rl, sign2gpt  # pylint: disable=wrong-import-position
from sltjax import compile_check  # pylint: disable=wrong-import-position
from sltjax.tpu_slices import CHIPS, GiB, Slice  # pylint: disable=wrong-import-position

SYSTEMS = {
    'c2rl_pretrain': lambda: c2rl.get_config('pretrain'),
    'sign2gpt_translation': lambda: sign2gpt.get_config('translation'),
}
WEAK_ROWS_PER_CHIP = 1

_SYSTEMS = flags.DEFINE_list('systems', list(SYSTEMS), 'Which paper configs.')
_GENERATIONS = flags.DEFINE_list('generations', ['v5e', 'v5p'], 'TPU generations.')
_CHIPS = flags.DEFINE_list('chips', ['8', '16', '64', '256'], 'Slice sizes in chips.')
_SCALINGS = flags.DEFINE_list('scalings', ['weak', 'strong'], 'weak and/or strong.')


def global_batch(system: str, chips: int, scaling: str) -> int:
  return chips * WEAK_ROWS_PER_CHIP if scaling == 'weak' else SYSTEMS[system]().batch_size


def point(system: str, generation: str, chips: int, batch: int) -> dict:
  """One compiled step: `system`'s paper config at global `batch` on `chips` of `generation`."""
  config = SYSTEMS[system]()
  tensor = max(1, chips // batch)
  config.batch_size = batch
  config.mesh = {'data': 1, 'fsdp': -1, 'tensor': tensor}
  target = Slice.parse(f'{generation}-{chips * CHIPS[generation].cores_per_chip}')
  start = time.perf_counter()
  report = compile_check.compile_report(config, target.jax_name, evaluation=False)
  args = report['argument_breakdown']
  row = {'system': system, 'slice': report['topology'], 'chips': chips,
         'global_batch': batch, 'mesh': report['mesh'],
         'params_opt_gib': (args['parameters'] + args['optimizer_state']) / GiB,
         'hbm_gib': report['hbm_bytes_per_chip'] / GiB, 'fits': report['fits'],
         'compiler_refused': report['compiler_refused'],
         'compile_s': time.perf_counter() - start}
  if report['compiler_refused']:  # XLA stopped at the temporaries: no program to read
    return row
  return {**row, 'collective_gib': sum(report['collective_bytes'].values()) / GiB,
          'step_ms': report['estimated_step_seconds'] * 1e3, 'bound': report['bound'],
          'mfu': report['estimated_mfu']}


def markdown_row(r: dict) -> str:
  """A point's table row; one XLA refused shows the HBM it asked for (at least) and dashes."""
  mesh = r['mesh']
  if r['compiler_refused']:
    hbm, rest = f'>= {r["hbm_gib"]:.2f}', '- | - | - |'
  else:
    hbm = f'{r["hbm_gib"]:.2f}'
    rest = (f'{r["collective_gib"]:.2f} | {r["step_ms"]:.0f} ({r["bound"]}) | '
            f'{r["mfu"]:.0%} |')
  return (f'| {r["system"]} | {r["slice"]} | {r["scaling"]} | {r["global_batch"]} | '
          f'{mesh["data"]}, {mesh["fsdp"]}, {mesh["tensor"]} | {r["params_opt_gib"]:.3f} | '
          f'{hbm} | {"yes" if r["fits"] else "no"} | {rest}')


def main(argv):
  del argv
  rows, compiled = [], {}
  print('| system | slice | scaling | global batch | mesh (data, fsdp, tensor) | params + '
        'optimizer GiB/chip | HBM GiB/chip | fits | collectives GiB/chip | step ms (bound) | '
        'MFU |')
  print('|---|---|---|---|---|---|---|---|---|---|---|')
  for system in _SYSTEMS.value:
    for scaling in _SCALINGS.value:
      for generation in _GENERATIONS.value:
        for chips in map(int, _CHIPS.value):
          # A weak point whose batch is the paper's is that slice's strong point: compiled once.
          key = (system, generation, chips, global_batch(system, chips, scaling))
          if key not in compiled:
            compiled[key] = point(*key)
          r = dict(compiled[key], scaling=scaling)
          rows.append(r)
          print(markdown_row(r), flush=True)
  print(json.dumps(rows))


if __name__ == '__main__':
  app.run(main)
