"""The benchmarks still run: each side of benchmarks/train_step_*.py, the decoding comparison, the
contrastive loss's memory, a bucket's reads, the video pipeline and the GPU check, at tiny sizes.

Their timings belong to an idle machine (they are not measured here); this checks that the code
they compare keeps working as the rest changes (the MMTLB one had stopped running when the
train step started reading config.optimizer).
"""
import json
import math
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import COMPILATION_CACHE, REPO, needs_shared_data, subprocess_xla_flags

TINY = {
    'train_step_mmtlb.py': ['--frames=2', '--image=32', '--layers=1', '--target_length=4',
                            '--steps=1'],
    'train_step_c2rl.py': ['--batch=2', '--frames=2', '--image=32', '--tokens=4', '--steps=1'],
}
VARIANTS = {  # the --variant argument of one side of each benchmark
    'train_step_mmtlb.py': ['torch,float32,resnet18,1', 'sltjax,float32,resnet18,1'],
    'train_step_c2rl.py': ['torch', 'sltjax'],
}


@pytest.mark.slow
@pytest.mark.parametrize('script, variant', [
    (script, variant) for script, variants in VARIANTS.items() for variant in variants])
def test_training_step_benchmark_side_runs_and_reports_a_finite_loss(script, variant):
  result = json.loads(run_benchmark(script, f'--variant={variant}', *TINY[script])[-1])
  assert math.isfinite(result['loss']) and result['loss'] > 0
  assert result['step_s'] > 0 and result['params_m'] > 1


@pytest.mark.slow
def test_decode_benchmark_decodes_like_transformers_at_d512():
  """benchmarks/decode_mbart.py at its d512 size (6+6 layers, random weights), 3 new tokens."""
  lines = run_benchmark('decode_mbart.py', '--sizes=d512', '--batch_sizes=1',
                        '--max_new_tokens=3', '--repeats=1')
  row = json.loads(next(line for line in lines if line.startswith('{')))
  assert (row['size'], row['batch'], row['steps'], row['identical']) == ('d512', 1, 3, '1/1')
  assert row['speedup'] > 0 and 0 < row['matmul_share'] < 1


@pytest.mark.slow
def test_clcl_memory_benchmark_shows_text_blocks_use_less_memory():
  """benchmarks/clcl_memory.py on 8 fake devices: per-device memory, whole and in text blocks."""
  lines = run_benchmark('clcl_memory.py', '--batches=16,64', '--frames=16', '--tokens=16',
                        '--dim=32', '--text_block=8', devices=8)
  rows = [line.split('|')[1:-1] for line in lines if line.startswith('| ') and
          line.split('|')[1].strip().isdigit()]
  assert [int(row[0]) for row in rows] == [16, 64]
  assert float(rows[1][3].strip().rstrip('x')) < 0.5  # [videos, texts, frames, tokens] in blocks


@needs_shared_data
def test_bucket_reads_benchmark_adds_up_its_steps_and_evaluations():
  """benchmarks/bucket_reads.py: per recipe, MiB/step = batch x the mean video, and the total =
  steps x MiB/step + evaluations x the dev split."""
  lines = run_benchmark('bucket_reads.py')
  header = re.search(r'([\d.]+) MiB per train video; one epoch [\d.]+ GiB, the dev split '
                     r'([\d.]+) GiB', lines[0])
  video_mib, dev_gib = map(float, header.groups())
  rows = {line.split()[0]: list(map(float, line.split()[1:])) for line in lines[2:]}
  assert {'mmtlb:sign2text', 'c2rl:pretrain', 'c2rl:slret', 'sign2gpt:translation'} <= set(rows)
  for batch, mib_per_step, steps, evals, total_gib in rows.values():
    assert mib_per_step == pytest.approx(batch * video_mib, rel=0.01)
    assert total_gib == pytest.approx(steps * mib_per_step / 1024 + evals * dev_gib, rel=0.01)


@needs_shared_data
@pytest.mark.slow
def test_video_pipeline_benchmark_runs_on_two_clips(tmp_path):
  """benchmarks/video_pipeline.py: builds a PHOENIX-shaped release of 2 clips and reads it."""
  lines = run_benchmark('video_pipeline.py', '--clips=2', f'--workdir={tmp_path}')
  assert any(re.match(r'build \(\d+ workers\): \d+ frames/s', line) for line in lines), lines
  speeds = {line.split('  ')[0]: float(line.split()[-2]) for line in lines
            if line.endswith('x') and line.split()[-2].isdigit()}
  assert len(speeds) == 4 and all(speed > 0 for speed in speeds.values()), lines


@pytest.mark.slow
def test_gpu_check_steps_a_paper_config_in_both_dtypes():
  """benchmarks/gpu_check.py on this CPU: C2RL's pretraining step at paper width (ResNet-18,
  mBART-large's width) cut to 1 decoder layer, 2 videos of 32-pixel frames."""
  rows = json.loads(run_benchmark(
      'gpu_check.py', '--systems=c2rl_pretrain', '--frames=8', '--batch=2', '--layers=1',
      '--steps=1', '--peak_tflops=1', '--set=data.crop_size=32')[-1])
  assert [(r['system'], r['dtype'], r['global_batch']) for r in rows] == [
      ('c2rl_pretrain', 'float32', 2), ('c2rl_pretrain', 'bfloat16', 2)]
  assert rows[0]['model_flops'] == rows[1]['model_flops'] > 1e9  # the dtype changes no count
  for r in rows:
    assert math.isfinite(r['loss']) and r['loss'] > 0
    assert r['mfu'] == pytest.approx(r['model_flops'] / r['step_seconds'] / 1e12)


def run_benchmark(script: str, *args: str, devices: int = 1) -> list[str]:
  """stdout lines of `python benchmarks/<script> args` (asserting it succeeded)."""
  env = {**os.environ, 'XLA_FLAGS': subprocess_xla_flags(devices), 'JAX_PLATFORMS': 'cpu',
         'JAX_COMPILATION_CACHE_DIR': COMPILATION_CACHE,
         'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0.5'}
  out = subprocess.run([sys.executable, os.path.join(REPO, 'benchmarks', script), *args],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                       check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout.strip().splitlines()


def test_pod_scaling_prints_a_point_xla_refused_as_the_hbm_it_asked_for():
  from benchmarks import pod_scaling  # pylint: disable=import-outside-toplevel
  refused = {'system': 'sign2gpt_translation', 'slice': 'v5e-256', 'scaling': 'weak',
             'global_batch': 256, 'mesh': {'data': 1, 'fsdp': 256, 'tensor': 1},
             'params_opt_gib': 0.0312, 'hbm_gib': 17.204, 'fits': False, 'compiler_refused': True}
  assert pod_scaling.markdown_row(refused) == (
      '| sign2gpt_translation | v5e-256 | weak | 256 | 1, 256, 1 | 0.031 | >= 17.20 | no '
      '| - | - | - |')
  compiled = dict(refused, hbm_gib=5.881, fits=True, compiler_refused=False, collective_gib=13.29,
                  step_ms=182.4, bound='hbm', mfu=0.131)
  assert pod_scaling.markdown_row(compiled) == (
      '| sign2gpt_translation | v5e-256 | weak | 256 | 1, 256, 1 | 0.031 | 5.88 | yes '
      '| 13.29 | 182 (hbm) | 13% |')
