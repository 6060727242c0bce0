"""--mode=compile: a system's training step and evaluation program compiled ahead of time for a
Cloud TPU slice, on any machine, and what the compiled programs need per chip.

  python -m sltjax.main --config=configs/c2rl.py:pretrain --mode=compile --topology=v5e-64

The model is built at the config's size without allocating a parameter (sltjax/experiments/
shapes_only.py: no dataset, no weights, no TPU), one global batch of the longest shapes the
config's data reach is lowered with the config's mesh and sharding rules, and XLA compiles the
step for the slice (libtpu: `pip install 'sltjax[tpu]'`). The report, per chip:

  HBM        XLA's memory analysis (arguments = parameters + optimizer state + batch, outputs,
             temporaries, generated code) against the chip's capacity
  FLOPs      XLA's cost analysis of the compiled step, beside the model's own count: the matrix
             products and convolutions of one forward and backward pass, rematerialisation off,
             counted from the step's jaxpr (elementwise work, norms and softmax are left out)
  collective bytes of each kind in the compiled program (all-gather, reduce-scatter, ...: the
             full buffer each moves), beside what the sharding should cost: data parallel, an
             all-reduce of the trained parameters' gradients; FSDP, all-gathers of the sharded
             weights forward and backward and a reduce-scatter of their gradients
  roofline   step time >= the largest of FLOPs / peak, HBM bytes / bandwidth and collective
             bytes on the wire / ICI bandwidth (ring algorithms: an all-reduce puts about twice
             its buffer on each chip's links, the others about once), and the MFU it implies

and, beside the step, the program evaluation runs on every batch (the beam search where the
stage translates; Experiment.evaluation_fn) on eval.batch_size of the longest clips: its HBM,
FLOPs and collectives per chip (`evaluation_report`).

`compile_report` returns it as a dict; `format_report` prints it. A step or evaluation program
that does not fit is a `DoesNotFit` error: one line saying what it needs and has and what to
change.
"""
import math
import re
import tempfile

import jax
from jax.extend import core as jax_core

from sltjax import sharding, train
from sltjax.errors import UserError
from sltjax.experiments import shapes_only
from sltjax.optim import frozen_mask, make_optimizer, trained_parameter_count
from sltjax.tpu_slices import GiB, Slice

COLLECTIVES = ('all-gather', 'reduce-scatter', 'all-reduce', 'all-to-all', 'collective-permute')
# Bytes each chip sends per byte of a collective's full buffer (ring algorithms, many chips).
LARGEST_COLLECTIVES = 5  # listed with the JAX operation they come from
WIRE_FACTOR = {'all-reduce': 2.0, 'all-gather': 1.0, 'reduce-scatter': 1.0, 'all-to-all': 1.0,
               'collective-permute': 1.0}
_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4,
                'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8, 'c128': 16}
_ARRAY = re.compile(r'\b(' + '|'.join(_DTYPE_BYTES) + r')\[([\d,]*)\]')
# A TPU collective fusion's computation: `%all-reduce-scatter.3 (input.3: f32[8,32,64]) -> ...`.
_FUSED_COLLECTIVE = re.compile(r'^\s*%((?:all-reduce-scatter|all-gather|all-reduce|reduce-scatter)'
                               r'[\w.-]*) \(([^)]*)\) ->', re.MULTILINE)
_COLLECTIVE = re.compile(r'=\s*(?P<result>.*?)\s(?P<op>' + '|'.join(COLLECTIVES) +
                         r')(?P<start>-start)?\((?P<operands>[^)]*)\)')


class DoesNotFit(UserError):
  """The compiled step needs more HBM per chip than the slice's chips have."""


def compile_report(config, topology: str, evaluation: bool = True) -> dict:
  """Compiles config's training step and (evaluation=True) its evaluation program for
  `topology` (Slice.parse's names); the report dict."""
  target = Slice.parse(topology)
  with tempfile.TemporaryDirectory() as workdir:
    exp = shapes_only.create(config, target.devices(), workdir)
    try:
      exp.check_batch_size('batch_size', config.batch_size)
    except UserError as e:
      tensor = target.chips // math.gcd(config.batch_size, target.chips)
      raise UserError(f'{e} On {target.cloud_name} a global batch of {config.batch_size} '
                      f'spreads over {target.chips // tensor} chips: give the rest to tensor '
                      f'parallelism, --config.mesh.tensor={tensor} (with --config.mesh.data=-1), '
                      'or raise --config.batch_size.') from e
    tx, schedule = make_optimizer(config, exp.abstract_params)
    state = train.abstract_train_state(exp, tx)
    step = train.make_train_step(exp, tx, schedule,
                                 jax.tree.map(lambda x: x.sharding, state))
    batch = shapes_only.batch_shapes(exp)
    frozen = frozen_mask(config, exp.abstract_params)
    per_chip = {'parameters': _bytes_per_chip(state['params']),
                'optimizer_state': _bytes_per_chip(state['opt_state']),
                'batch': _bytes_per_chip(batch)}
    summary = {
        'topology': target.cloud_name, 'jax_topology': target.jax_name, 'chips': target.chips,
        'mesh': dict(exp.mesh.shape), 'global_batch': config.batch_size,
        'batch_shapes': {k: list(v.shape) for k, v in batch.items()},
        'parameters': int(sum(x.size for x in jax.tree.leaves(exp.abstract_params))),
        'trained_parameters': trained_parameter_count(config, exp.abstract_params),
        'hbm_capacity_bytes': target.chip.hbm_bytes, 'argument_breakdown': per_chip,
        'chip_source': target.chip.source}
    compiled = _compile(step.lower(state, batch))
    if isinstance(compiled, int):
      return {**summary, 'fits': False, 'compiler_refused': True,
              'hbm_bytes_per_chip': sum(per_chip.values()) + compiled,
              'hbm_breakdown': {'temporaries': compiled}}
    model_flops = model_flops_per_step(config, target.devices(), workdir)
    evaluation = evaluation_report(exp, target) if evaluation else None
  hbm, hbm_total = _hbm(compiled)
  cost = _cost(compiled)
  hlo = compiled.as_text()
  totals = collective_bytes(hlo)
  largest = sorted(collectives(hlo), key=lambda c: -c[1])[:LARGEST_COLLECTIVES]
  chip = target.chip
  flops_per_chip = float(cost.get('flops', 0.0))
  bytes_accessed = float(cost.get('bytes accessed', 0.0))
  wire = sum(WIRE_FACTOR[k] * v for k, v in totals.items())
  bounds = {'compute': flops_per_chip / chip.peak_bf16_flops,
            'hbm': bytes_accessed / chip.hbm_bandwidth,
            'interconnect': wire / chip.ici_bandwidth}
  step_seconds = max(bounds.values())
  return {
      **summary, 'compiler_refused': False, 'evaluation': evaluation,
      'fits': hbm_total <= chip.hbm_bytes and (evaluation is None or evaluation['fits']),
      'hbm_bytes_per_chip': int(hbm_total),
      'hbm_breakdown': hbm,
      'flops_per_step': flops_per_chip * target.chips, 'flops_per_chip': flops_per_chip,
      'model_flops_per_step': model_flops,
      'hbm_bytes_accessed_per_chip': bytes_accessed,
      'collective_bytes': totals,
      'largest_collectives': [{'kind': k, 'bytes': b, 'op': op} for k, b, op in largest],
      'expected_collective_bytes': expected_collectives(exp, state['params'], frozen),
      'bound': max(bounds, key=bounds.get),
      'bound_seconds': bounds, 'estimated_step_seconds': step_seconds,
      'estimated_mfu': model_flops / target.chips / step_seconds / chip.peak_bf16_flops
                       if step_seconds else 0.0,
  }


def evaluation_report(exp, target: Slice) -> dict | None:
  """The experiment's evaluation program (Experiment.evaluation_fn: the beam search, where the
  stage translates) compiled for the slice on one batch of config.eval.batch_size rows (rounded
  up to the data-parallel width, as evaluation pads it) of the longest clips: its HBM, FLOPs and
  collectives per chip (XLA's cost analysis counts a loop's body once: a beam search's FLOPs are
  the encoder's plus one decoding step's). None where the stage has no such program."""
  program = exp.evaluation_fn()
  if program is None:
    return None
  width = exp.data_parallel_rows()
  rows = -(-exp.config.eval.batch_size // width) * width
  batch = {k: v for k, v in shapes_only.batch_shapes(exp, rows).items()
           if k in ('frames', 'frame_mask')}
  variables = exp.abstract_variables()
  compiled = _compile(program.lower(variables['params'], variables['rest'], batch))
  report = {'program': program.__name__, 'rows': rows}
  if 'bleu4' in exp.METRICS:  # the program beam-searches the translations
    report.update(beams=exp.config.eval.num_beams, max_new_tokens=exp.config.eval.max_new_tokens)
  if isinstance(compiled, int):
    return {**report, 'fits': False, 'compiler_refused': True, 'hbm_bytes_per_chip': compiled,
            'hbm_breakdown': {'temporaries': compiled}}
  hbm, total = _hbm(compiled)
  return {**report, 'fits': total <= target.chip.hbm_bytes, 'compiler_refused': False,
          'hbm_bytes_per_chip': int(total), 'hbm_breakdown': hbm,
          'flops_per_chip': float(_cost(compiled).get('flops', 0.0)),
          'collective_bytes': collective_bytes(compiled.as_text())}


def check_fits(report: dict, config) -> None:
  """DoesNotFit (exit 2) naming what the step needs and has, and what to change."""
  if report['fits']:
    return
  evaluation = report.get('evaluation')
  if not report['compiler_refused'] and evaluation is not None and not evaluation['fits']:
    raise DoesNotFit(
        f'Does not fit: evaluation ({evaluation["program"]}, {evaluation["rows"]} clips) needs '
        f'{evaluation["hbm_bytes_per_chip"] / GiB:.1f} GiB per chip on {report["topology"]}, '
        f'whose chips have {report["hbm_capacity_bytes"] / GiB:.0f} GiB (the training step '
        f'fits): lower --config.eval.batch_size (now {config.eval.batch_size})'
        + (' or --config.eval.num_beams' if 'beams' in evaluation else '') + '.')
  mesh, args = report['mesh'], report['argument_breakdown']
  state = args['parameters'] + args['optimizer_state']
  temporaries = report['hbm_breakdown']['temporaries']
  remat = ', '.join(f'--config.{k}=full' for k in _remat_keys(config)) or 'model remat'
  fixes = [f'shard parameters and optimizer state with --config.mesh.fsdp=N (now {mesh["fsdp"]};'
           ' with --config.mesh.data=-1)',
           f'rematerialise with {remat}',
           f'give each chip fewer videos (--config.batch_size, now {report["global_batch"]} over '
           f'{mesh["data"] * mesh["fsdp"]} data-parallel chips)']
  if temporaries > state:  # activations dominate: remat and the batch first
    fixes = fixes[1:] + fixes[:1]
  raise DoesNotFit(
      f'Does not fit: the training step needs {report["hbm_bytes_per_chip"] / GiB:.1f} GiB per '
      f'chip on {report["topology"]}, whose chips have {report["hbm_capacity_bytes"] / GiB:.0f} '
      f'GiB (parameters {args["parameters"] / GiB:.1f}, optimizer '
      f'{args["optimizer_state"] / GiB:.1f}, temporaries {temporaries / GiB:.1f}): '
      + ', or '.join(fixes) + '.')


def collectives(hlo_text: str) -> list[tuple[str, int, str]]:
  """(kind, bytes, source op) of each collective in an optimised HLO module, counted by its
  full buffer (the larger of its operands and its result; an async -start's tuple counts its
  output). TPU's collective fusions (a fusion calling %all-reduce-scatter.N, XLA:TPU's
  reduce-scatter) count their computation's inputs. Collectives inside loops count once, and so
  does one collective that XLA:TPU spreads over a chain of async collective fusions (each link
  repeats the op with the whole buffer and the same channel_id)."""
  fused_inputs = {name: sum(_array_bytes(m) for m in _ARRAY.finditer(params))
                  for name, params in _FUSED_COLLECTIVE.findall(hlo_text)}
  found, channels = [], set()
  for line in hlo_text.splitlines():
    source = re.search(r'op_name="([^"]*)"', line)
    source = source[1] if source else ''
    fused = re.search(r'\bfusion\(.*calls=%((all-reduce-scatter|all-gather|all-reduce|'
                      r'reduce-scatter)[\w.-]*)', line)
    if fused and fused[1] in fused_inputs:
      kind = 'reduce-scatter' if fused[2] == 'all-reduce-scatter' else fused[2]
      result = sum(_array_bytes(m) for m in _ARRAY.finditer(line.split(' fusion(')[0]))
      found.append((kind, max(result, fused_inputs[fused[1]]), source))
      continue
    match = _COLLECTIVE.search(line)
    if not match:
      continue
    channel = re.search(r'\bchannel_id=(\d+)', line)
    if channel:
      if channel[1] in channels:
        continue
      channels.add(channel[1])
    result = [_array_bytes(m) for m in _ARRAY.finditer(match['result'])]
    operands = [_array_bytes(m) for m in _ARRAY.finditer(match['operands'])]
    if match['start'] and len(result) > 1:
      result = result[len(result) // 2:len(result) // 2 + len(operands)]  # (inputs, outputs, ..)
    found.append((match['op'], max(sum(result), sum(operands)), source))
  return found


def collective_bytes(hlo_text: str) -> dict[str, int]:
  """{kind: bytes} of `collectives(hlo_text)`."""
  totals = dict.fromkeys(COLLECTIVES, 0)
  for kind, size, _ in collectives(hlo_text):
    totals[kind] += size
  return totals


def expected_collectives(exp, params, frozen) -> dict[str, int]:
  """What the parameters' sharding should cost per step, by kind: weights sharded over `fsdp`
  are all-gathered forward and backward and their gradients reduce-scattered (then all-reduced
  over `data` as shards); replicated trained weights' gradients are all-reduced."""
  mesh = exp.mesh
  out = dict.fromkeys(COLLECTIVES, 0)
  for x, is_frozen in zip(jax.tree.leaves(params), jax.tree.leaves(frozen)):
    axes = {a for part in x.sharding.spec if part
            for a in (part if isinstance(part, tuple) else (part,))}
    # The weight's bytes on the chips of one fsdp group (split by its other axes, tensor).
    group = x.size * x.dtype.itemsize // math.prod(mesh.shape[a] for a in axes - {'fsdp'})
    fsdp = 'fsdp' in axes and mesh.shape['fsdp'] > 1
    if fsdp:
      out['all-gather'] += 2 * group
    if is_frozen:
      continue
    if fsdp:
      out['reduce-scatter'] += group
      if mesh.shape['data'] > 1:
        out['all-reduce'] += group // mesh.shape['fsdp']
    elif sharding.data_parallel_size(mesh) > 1:
      out['all-reduce'] += group
  return out


def format_report(report: dict, config_name: str) -> str:
  """The report as a readable table."""
  g = lambda b: f'{b / GiB:8.2f} GiB'
  hbm, args = report['hbm_breakdown'], report['argument_breakdown']
  if report['compiler_refused']:
    return (f'{config_name} on {report["topology"]} ({report["chips"]} chips), mesh '
            f'{report["mesh"]}, global batch {report["global_batch"]}: XLA refused to compile it, '
            f'its temporaries alone needing {g(hbm["temporaries"]).strip()} per chip (arguments '
            f'{g(sum(args.values())).strip()}) of {g(report["hbm_capacity_bytes"]).strip()}.')
  lines = [
      f'{config_name} on {report["topology"]} ({report["jax_topology"]}, {report["chips"]} '
      f'chips), mesh {report["mesh"]}, global batch {report["global_batch"]}',
      f'  parameters {report["parameters"] / 1e6:.1f}M ({report["trained_parameters"] / 1e6:.1f}M'
      f' trained); batch {report["batch_shapes"].get("frames")} frames',
      'HBM per chip',
      f'  arguments        {g(hbm["arguments"])}  (parameters {g(args["parameters"]).strip()}, '
      f'optimizer {g(args["optimizer_state"]).strip()}, batch {g(args["batch"]).strip()})',
      f'  outputs          {g(hbm["outputs"])}  ({g(hbm["aliased"]).strip()} in donated '
      'arguments\' buffers)',
      f'  temporaries      {g(hbm["temporaries"])}',
      f'  generated code   {g(hbm["generated_code"])}',
      f'  total            {g(report["hbm_bytes_per_chip"])}  of {g(report["hbm_capacity_bytes"])}'
      f': {"fits" if report["fits"] else "DOES NOT FIT"}, headroom '
      f'{g(report["hbm_capacity_bytes"] - report["hbm_bytes_per_chip"]).strip()}',
      'FLOPs per step (all chips)',
      f'  XLA cost analysis {report["flops_per_step"]:.3e}   model (matmuls + convolutions, '
      f'forward + backward) {report["model_flops_per_step"]:.3e}',
      'Collectives per step and chip (full buffers)   compiled      expected from the sharding',
  ]
  for kind in COLLECTIVES:
    lines.append(f'  {kind:20s}  {g(report["collective_bytes"][kind])}   '
                 f'{g(report["expected_collective_bytes"][kind])}')
  lines.append('  largest: ' + '; '.join(
      f'{c["kind"]} {c["bytes"] / 2**20:.1f} MiB ({"/".join(c["op"].split("/")[-2:]) or "?"})'
      for c in report['largest_collectives']))
  evaluation = report.get('evaluation')
  if evaluation is not None:
    beams = (f' x {evaluation["beams"]} beams, up to {evaluation["max_new_tokens"]} tokens'
             if 'beams' in evaluation else '')
    lines.append(
        f'Evaluation ({evaluation["program"]}: {evaluation["rows"]} clips{beams}): '
        f'{g(evaluation["hbm_bytes_per_chip"]).strip()} per chip (temporaries '
        f'{g(evaluation["hbm_breakdown"]["temporaries"]).strip()}): '
        f'{"fits" if evaluation["fits"] else "DOES NOT FIT"}'
        + (f', {evaluation["flops_per_chip"]:.3e} FLOPs per chip (loops counted once)'
           if not evaluation['compiler_refused'] else ''))
  b = report['bound_seconds']
  lines += [
      f'Roofline: compute {b["compute"] * 1e3:.1f} ms, HBM {b["hbm"] * 1e3:.1f} ms, '
      f'interconnect {b["interconnect"] * 1e3:.1f} ms -> step >= '
      f'{report["estimated_step_seconds"] * 1e3:.1f} ms ({report["bound"]}-bound), MFU <= '
      f'{report["estimated_mfu"]:.1%} (chip figures: {report["chip_source"]})']
  return '\n'.join(lines)


# ------------------------------------------------------------------ helpers
def _compile(lowered):
  """The compiled program, or (an int) the temporaries' bytes per chip XLA refused it for:
  XLA does not compile a program whose temporaries exceed the chip's HBM."""
  try:
    return lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    needed = re.search(r'RESOURCE_EXHAUSTED.*?required for HLO temporaries \(([\d.]+)G\)', str(e))
    if not needed:
      raise
    return int(float(needed[1]) * GiB)


def _hbm(compiled) -> tuple[dict[str, int], int]:
  """(XLA's memory analysis per chip, its total: donated buffers counted once)."""
  memory = compiled.memory_analysis()
  hbm = {
      'arguments': memory.argument_size_in_bytes, 'outputs': memory.output_size_in_bytes,
      'aliased': memory.alias_size_in_bytes, 'temporaries': memory.temp_size_in_bytes,
      'generated_code': memory.generated_code_size_in_bytes}
  return hbm, (hbm['arguments'] + hbm['outputs'] - hbm['aliased'] + hbm['temporaries']
               + hbm['generated_code'])


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  return cost[0] if isinstance(cost, list) else cost


def _array_bytes(match) -> int:
  dims = [int(d) for d in match[2].split(',') if d]
  return _DTYPE_BYTES[match[1]] * math.prod(dims)


def _bytes_per_chip(tree) -> int:
  """Bytes of one chip's shards of a tree of sharded ShapeDtypeStructs."""
  return int(sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                 for x in jax.tree.leaves(tree)))


def _remat_keys(config, prefix: str = '') -> list[str]:
  """The dotted config keys named `remat` (each network's activation rematerialisation)."""
  keys = []
  for key, value in config.items():
    if hasattr(value, 'items'):
      keys += _remat_keys(value, f'{prefix}{key}.')
    elif key == 'remat':
      keys.append(f'{prefix}{key}')
  return keys


def model_flops_per_step(config, devices: list, workdir: str) -> float:
  """Matrix-product and convolution FLOPs of one training step of the whole global batch, with
  rematerialisation off (recomputation is not the model's work), from the step's jaxpr."""
  plain = config.copy_and_resolve_references()
  with plain.unlocked():
    for key in _remat_keys(plain):
      *parents, leaf = key.split('.')
      node = plain
      for parent in parents:
        node = node[parent]
      node[leaf] = 'none'
  exp = shapes_only.create(plain, devices, workdir)
  tx, schedule = make_optimizer(plain, exp.abstract_params)
  state = train.abstract_train_state(exp, tx)
  step = train.make_train_step(exp, tx, schedule, jax.tree.map(lambda x: x.sharding, state))
  return float(jaxpr_matmul_flops(jax.make_jaxpr(step)(state, shapes_only.batch_shapes(exp))
                                  .jaxpr))


def jaxpr_matmul_flops(jaxpr) -> float:
  """2 x multiply-adds of every dot_general and conv_general_dilated in `jaxpr`, nested jaxprs
  included (a scan's body times its length; a cond's costliest branch)."""
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      (contracting, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contracting)
    elif name == 'conv_general_dilated':
      rhs = eqn.invars[1].aval.shape
      out_features = rhs[eqn.params['dimension_numbers'].rhs_spec[0]]
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) / out_features
    inner = [_as_jaxpr(v) for v in eqn.params.values()]
    inner += [_as_jaxpr(b) for v in eqn.params.values() if isinstance(v, (tuple, list))
              for b in v]
    inner = [j for j in inner if j is not None]
    if not inner:
      continue
    counts = [jaxpr_matmul_flops(j) for j in inner]
    if name == 'cond':
      total += max(counts)
    else:
      total += sum(counts) * (eqn.params['length'] if name == 'scan' else 1)
  return total


def _as_jaxpr(value):
  if isinstance(value, jax_core.ClosedJaxpr):
    return value.jaxpr
  if isinstance(value, jax_core.Jaxpr):
    return value
  return None

