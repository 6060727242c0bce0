"""Making JAX's tracing fast: a fix for the JAX release sltjax runs on (applied when sltjax is
imported) and the garbage-collector setting its programs run with.

1. Tracing time quadratic in the program's size (jax 0.10): a tracer's `.sharding` raises
AttributeError (so that `getattr(x, 'sharding', None)` works), but the message it builds walks
every equation traced so far to say where the tracer came from. Flax NNX probes `.sharding` on
every Variable assignment (each parameter's initialiser draws from an Rngs counter, each dropout
too), so building a model inside `jit`/`eval_shape` and tracing a train step cost ~9 ms per probe:
~10 s of the 66 s that Sign2GPT's tiny pretraining fixture (two runs) took. The fix keeps the
AttributeError and its first sentence and drops the walk (as upstream's jax-ml/jax#40041 proposes).
Other releases are left alone.

2. Python's cyclic garbage collector: tracing and lowering a model allocate millions of
short-lived objects, and at Python's default thresholds (a collection every 700 net allocations)
the collector's passes over the growing heap were ~10% of building, tracing and compiling
Sign2GPT's tiny pretraining step (45.0 s -> 39.6 s with `fewer_gc_passes`). The entry points
(sltjax.main, translate, retrieve) and the tests call it; importing sltjax does not.
"""
import gc
import importlib.metadata

MEASURED_JAX = '0.10.'  # the releases whose Tracer.sharding this replaces


def cheap_tracer_sharding_probe() -> None:
  """Makes `Tracer.sharding` raise its AttributeError without walking the traced program."""
  if not importlib.metadata.version('jax').startswith(MEASURED_JAX):
    return
  from jax._src import core  # pylint: disable=import-outside-toplevel

  def sharding(tracer):
    raise AttributeError(
        f"The 'sharding' attribute is not available on {tracer._error_repr()}.")  # pylint: disable=protected-access

  if isinstance(core.Tracer.__dict__.get('sharding'), property):
    core.Tracer.sharding = property(sharding, doc=core.Tracer.sharding.__doc__)


GC_THRESHOLDS = (100_000, 50, 1000)  # gen-0 allocations, then gen-0 and gen-1 passes per next


def fewer_gc_passes() -> None:
  """Runs the cyclic garbage collector ~140x less often (it still runs: cycles are freed)."""
  gc.set_threshold(*GC_THRESHOLDS)
