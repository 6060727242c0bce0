"""sltjax's XLA settings: bfloat16 rounded where the program says, convolutions off YNNPACK on
CPU, each unless the user set that flag."""
import json
import subprocess
import sys

import pytest

from sltjax import xla_flags
from tests.conftest import REPO

# Compiles a convolution's gradient in a fresh process (XLA_FLAGS is read when the backend
# starts) and prints, for each convolution, the fusion kind that holds it ('ENTRY' = none).
CONVOLUTION_PLACEMENT = r'''
import json, os, re
import sltjax  # sets XLA_FLAGS
import jax, jax.numpy as jnp
from jax import lax
def loss(x, k):
  return jnp.sum(lax.conv_general_dilated(x, k, (1, 1), 'SAME',
                                         dimension_numbers=('NHWC', 'HWIO', 'NHWC')) ** 2)
text = jax.jit(jax.grad(loss, (0, 1))).lower(
    jnp.ones((8, 28, 28, 64)), jnp.ones((3, 3, 64, 64))).compile().as_text()
holder, kind_of = 'ENTRY', {}
placement = []
for line in text.split('\n'):
  header = re.match(r'(ENTRY )?%?([\w.\-]+) .*\{$', line)
  if header:
    holder = 'ENTRY' if header.group(1) else header.group(2)
  call = re.search(r'calls=%?([\w.\-]+).*"kind":"(\w+)"', line)
  if call:
    kind_of[call.group(1)] = call.group(2)
  if ' convolution(' in line:
    placement.append(holder)
print(json.dumps({'xla_flags': os.environ.get('XLA_FLAGS'),
                  'placement': [kind_of.get(h, h) for h in placement]}))
'''


def convolution_placement(xla_flags_value=None):
  env = {'PATH': '/usr/bin:/bin', 'JAX_PLATFORMS': 'cpu'}
  if xla_flags_value is not None:
    env['XLA_FLAGS'] = xla_flags_value
  out = subprocess.run([sys.executable, '-c', CONVOLUTION_PLACEMENT], cwd=REPO, env=env,
                       capture_output=True, text=True, check=True).stdout
  return json.loads(out.strip().split('\n')[-1])


@pytest.mark.skipif(not xla_flags._jaxlib_version().startswith(xla_flags.MEASURED_JAXLIB),
                    reason='the setting applies to the jaxlib releases it was measured with')
def test_convolutions_leave_ynnpack_unless_the_user_set_the_flag():
  ours = convolution_placement()
  assert ours['xla_flags'] == (f'{xla_flags.EXCESS_PRECISION_FLAG}=false '
                               f'{xla_flags.YNN_FLAG}={xla_flags.YNN_WITHOUT_CONVOLUTIONS}')
  assert ours['placement'] and '__ynn_fusion' not in ours['placement'], ours
  users = f'--xla_force_host_platform_device_count=2 {xla_flags.YNN_FLAG}=' \
          'LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION'
  theirs = convolution_placement(users)
  assert theirs['xla_flags'] == f'{users} {xla_flags.EXCESS_PRECISION_FLAG}=false'
  assert '__ynn_fusion' in theirs['placement'], theirs


def test_the_flags_join_other_flags_and_never_replace_the_users(monkeypatch):
  monkeypatch.setattr(xla_flags, '_jaxlib_version', lambda: '0.10.2')
  environ = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  xla_flags.add_sltjax_flags(environ)
  assert environ['XLA_FLAGS'] == ('--xla_force_host_platform_device_count=8 '
                                  f'{xla_flags.EXCESS_PRECISION_FLAG}=false '
                                  f'{xla_flags.YNN_FLAG}={xla_flags.YNN_WITHOUT_CONVOLUTIONS}')
  users = {'XLA_FLAGS': f'{xla_flags.YNN_FLAG}= {xla_flags.EXCESS_PRECISION_FLAG}=true'}
  xla_flags.add_sltjax_flags(users)
  assert users == {'XLA_FLAGS': f'{xla_flags.YNN_FLAG}= {xla_flags.EXCESS_PRECISION_FLAG}=true'}
  monkeypatch.setattr(xla_flags, '_jaxlib_version', lambda: '0.11.0')
  other_release = {}
  xla_flags.add_sltjax_flags(other_release)
  assert other_release == {'XLA_FLAGS': f'{xla_flags.EXCESS_PRECISION_FLAG}=false'}


XLA_FLAGS_KEY = ('import hashlib, sltjax; from jax._src import cache_key; h = hashlib.sha256(); '
                 'cache_key._hash_xla_flags(h, []); print(h.hexdigest())')


def test_a_test_process_and_its_subprocesses_share_compiled_programs():
  """XLA flags are part of every compilation-cache key, repeats included: xdist's workers
  inherit the controller's XLA_FLAGS, and appending the tests' flag again there gave them other
  keys than the subprocesses tests start, so each program run both ways compiled twice."""
  from tests.conftest import subprocess_xla_flags  # pylint: disable=import-outside-toplevel
  here = subprocess.run([sys.executable, '-c', XLA_FLAGS_KEY], cwd=REPO, capture_output=True,
                        text=True, check=True).stdout  # this worker's environment
  for devices in (1, 8):
    env = {'PATH': '/usr/bin:/bin', 'JAX_PLATFORMS': 'cpu',
           'XLA_FLAGS': subprocess_xla_flags(devices)}
    child = subprocess.run([sys.executable, '-c', XLA_FLAGS_KEY], cwd=REPO, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert child == here, devices
