"""The training-step benchmarks still run: each side of benchmarks/train_step_*.py at a tiny size.

Their timings belong to an idle machine (they are not measured here); this checks that the code
they compare keeps working as the trainer changes (the MMTLB one had stopped running when the
train step started reading config.optimizer).
"""
import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import COMPILATION_CACHE, REPO, subprocess_xla_flags

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
  env = {**os.environ, 'XLA_FLAGS': subprocess_xla_flags(1), 'JAX_PLATFORMS': 'cpu',
         'JAX_COMPILATION_CACHE_DIR': COMPILATION_CACHE,
         'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0.5'}
  out = subprocess.run(
      [sys.executable, os.path.join(REPO, 'benchmarks', script), f'--variant={variant}',
       *TINY[script]], cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
      check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert math.isfinite(result['loss']) and result['loss'] > 0
  assert result['step_s'] > 0 and result['params_m'] > 1
