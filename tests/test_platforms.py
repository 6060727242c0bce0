"""A machine without accelerators but with libtpu installed runs sltjax on the CPU without
starting libtpu's runtime; platforms the user chose are kept."""
import importlib.util
import json
import subprocess
import sys

import pytest
from jax._src import hardware_utils

from tests.conftest import REPO

# Prints, in a fresh process, the platforms JAX may start after `import sltjax` (BEFORE runs
# first) and, with START, the devices and whether libtpu's runtime was loaded.
PROBE = '''
import json
{before}
import sltjax, jax
from jax._src.lib import _jax
ran = {{'platforms': jax.config.jax_platforms}}
if {start}:
  ran['devices'] = [d.platform for d in jax.devices()]
  ran['tpu_runtime_loaded'] = _jax.pjrt_plugin_loaded('tpu')
print(json.dumps(ran))
'''


def probe(before: str = '', start: bool = True, **environ) -> dict:
  code = PROBE.format(before=before, start=start)
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO,
                          env={'PATH': '/usr/bin:/bin', **environ}, capture_output=True,
                          text=True, check=True)
  return {**json.loads(result.stdout.strip().split('\n')[-1]), 'stderr': result.stderr}


has_accelerator = (hardware_utils.num_available_tpu_chips_and_device_id()[0]
                   or hardware_utils.has_visible_nvidia_gpu()
                   or hardware_utils.num_available_amd_gpus(stop_at=1))
needs_libtpu_without_accelerators = pytest.mark.skipif(
    importlib.util.find_spec('libtpu') is None or bool(has_accelerator),
    reason='the case is libtpu installed (pip install "sltjax[tpu]") on a machine without '
           'TPU chips or GPUs')


@needs_libtpu_without_accelerators
def test_libtpu_without_chips_is_not_started():
  ran = probe()
  assert ran['platforms'] == 'cpu' and ran['devices'] == ['cpu'], ran
  assert not ran['tpu_runtime_loaded'], ran
  assert 'TPU' not in ran['stderr'], ran['stderr']


@needs_libtpu_without_accelerators
def test_platforms_the_user_chose_are_kept():
  # Not started: a platform named explicitly that cannot start is JAX's error.
  chosen = probe(before="import jax; jax.config.update('jax_platforms', 'tpu,cpu')", start=False)
  assert chosen['platforms'] == 'tpu,cpu', chosen
  from_environment = probe(start=False, JAX_PLATFORMS='cpu,tpu')
  assert from_environment['platforms'] == 'cpu,tpu', from_environment
