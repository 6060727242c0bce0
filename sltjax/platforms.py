"""Which JAX backends a program started by sltjax may try.

libtpu comes with `sltjax[tpu]` and with the test extras (--mode=compile compiles for TPU slices
on any machine). Installed on a machine without TPU chips, it still makes JAX start libtpu's
runtime in every program, which prints lines of warnings about TPU hosts it cannot find
("Failed to find host bounds for accelerator type", "INVALID_ARGUMENT: Error: unexpected worker
hostname") and holds /tmp/libtpu_lockfile, before JAX falls back to the CPU. On a machine that
has neither TPU chips nor a GPU, sltjax asks JAX for the CPU alone. Platforms the user chose
(JAX_PLATFORMS, jax.config's jax_platforms) and any machine with an accelerator are left alone.
"""
import importlib.util

import jax


def cpu_alone_without_accelerators() -> bool:
  """Restricts JAX to the CPU when libtpu is installed and no accelerator is attached; True
  when it did. Takes effect only before JAX's backend starts (sltjax/__init__.py calls it)."""
  if jax.config.jax_platforms or importlib.util.find_spec('libtpu') is None:
    return False
  from jax._src import hardware_utils  # pylint: disable=import-outside-toplevel  (JAX's own probes)
  if (hardware_utils.num_available_tpu_chips_and_device_id()[0]
      or hardware_utils.has_visible_nvidia_gpu()
      or hardware_utils.num_available_amd_gpus(stop_at=1)):
    return False
  jax.config.update('jax_platforms', 'cpu')
  return True
