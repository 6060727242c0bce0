"""The JAX fix applied on `import sltjax`: probing a tracer's `.sharding` (as Flax NNX does on
every Variable assignment) no longer walks the traced program, and still raises AttributeError."""
import importlib.metadata

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax._src.interpreters import partial_eval

from sltjax import jax_fixes  # importing sltjax applies the fix

pytestmark = pytest.mark.skipif(
    not importlib.metadata.version('jax').startswith(jax_fixes.MEASURED_JAX),
    reason='the fix applies to the jax releases it was measured with')


def test_building_a_model_under_a_trace_never_walks_the_traced_program(monkeypatch):
  walks = []
  original = partial_eval.DynamicJaxprTracer._origin_msg  # pylint: disable=protected-access
  monkeypatch.setattr(partial_eval.DynamicJaxprTracer, '_origin_msg',
                      lambda tracer: walks.append(1) or original(tracer))
  model = nnx.eval_shape(lambda: nnx.Sequential(
      *[nnx.Linear(8, 8, rngs=nnx.Rngs(0)) for _ in range(3)], nnx.Dropout(0.5, rngs=nnx.Rngs(1))))
  assert nnx.state(model, nnx.Param)['layers'][0]['kernel'].shape == (8, 8)
  assert not walks  # without the fix: 14 walks, one per probe


def test_a_tracer_still_has_no_sharding_and_concrete_errors_keep_their_origin():
  seen = {}

  @jax.jit
  def probe(x):
    seen['default'] = getattr(x, 'sharding', 'absent')
    with pytest.raises(AttributeError, match="'sharding' attribute is not available on traced"):
      x.sharding  # pylint: disable=pointless-statement
    with pytest.raises(jax.errors.TracerBoolConversionError, match='argument x'):
      bool(x.sum() > 0)  # other errors still say where the tracer came from
    return x

  probe(jnp.ones(3))
  assert seen['default'] == 'absent'
  assert isinstance(jnp.ones(3).sharding, jax.sharding.Sharding)  # concrete arrays keep theirs
