"""config.init's table (sltjax/experiments/warm_start.py): which names a system starts from, what a
start fills (with or without the part's prefix in the source), what it brings along."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sltjax.errors import UserError
from sltjax.experiments import warm_start
from sltjax.experiments.warm_start import WarmStart

TABLE = {'visual': WarmStart(prefixes=(('head',),), files=('glosses.json',)),
         'translation': WarmStart(prefixes=(('translation',),), files=('tokenizer',))}


def fresh_flat():
  return {'params': {('head', 'kernel'): nnx.Param(jnp.zeros((2, 3))),
                     ('translation', 'shared', 'embedding'): nnx.Param(jnp.zeros((5, 4)))},
          'rest': {}}


def test_only_names_of_the_table_may_be_set():
  assert warm_start.check_names(TABLE, {'visual': 'w/s2g', 'translation': ''}) == []
  assert warm_start.check_names(TABLE, {'visaul': 'w/s2g'}) == [
      'init.visaul is not a start of this system (it starts from: init.visual, '
      'init.translation)']
  assert warm_start.check_names(TABLE, {'unused': ''}) == []


def test_a_start_fills_its_prefix_from_a_source_with_or_without_it():
  flat = fresh_flat()
  workdir_source = {('params', 'head', 'kernel'): np.ones((2, 3))}
  assert warm_start.graft(flat, workdir_source, ('head',), 'w/s2g') == ({('params', ('head', 'kernel'))}, [])
  np.testing.assert_array_equal(flat['params'][('head', 'kernel')].value, np.ones((2, 3)))
  assert not flat['params'][('translation', 'shared', 'embedding')].value.any()
  converted_mbart = {('params', 'shared', 'embedding'): np.full((5, 4), 2.0)}
  assert len(warm_start.graft(flat, converted_mbart, ('translation',), 'pretrained/mbart').copied) == 1
  np.testing.assert_array_equal(flat['params'][('translation', 'shared', 'embedding')].value, 2.0)


def test_a_start_of_another_architecture_names_every_difference():
  with pytest.raises(UserError, match=r'Cannot start head from w/s2g: its architecture differs '
                     r'from config.model:\n  params/head/kernel has shape \(3, 3\), expected '
                     r'\(2, 3\)'):
    warm_start.graft(fresh_flat(), {('params', 'head', 'kernel'): np.ones((3, 3))}, ('head',),
                     'w/s2g')
  with pytest.raises(UserError, match='missing params/head/kernel'):
    warm_start.graft(fresh_flat(), {('params', 'head', 'bias'): np.ones(3)}, ('head',), 'w/s2g')
  layers = {('params', 'head', f'layer{i:02d}'): np.ones(3) for i in range(25)}
  flat = {'params': {key[1:]: nnx.Param(jnp.zeros(2)) for key in layers}, 'rest': {}}
  with pytest.raises(UserError) as error:  # a whole other model: the first 20, then a count
    warm_start.graft(flat, layers, ('head',), 'w/s2g')
  lines = str(error.value).splitlines()
  assert lines[1:] == [f'  params/head/layer{i:02d} has shape (3,), expected (2,)'
                       for i in range(20)] + ['  ... and 5 more']


def test_files_come_along_once_and_a_resumed_run_keeps_its_own(tmp_path):
  source, workdir = tmp_path / 'source', tmp_path / 'workdir'
  (source / 'tokenizer').mkdir(parents=True)
  (source / 'tokenizer' / 'vocab.json').write_text('{"a": 4}')
  (source / 'glosses.json').write_text('["A"]')
  workdir.mkdir()
  (workdir / 'glosses.json').write_text('["MINE"]')
  warm_start.bring_files(TABLE, {'visual': str(source), 'translation': str(source)}, str(workdir))
  assert (workdir / 'tokenizer' / 'vocab.json').read_text() == '{"a": 4}'
  assert (workdir / 'glosses.json').read_text() == '["MINE"]'


def test_a_start_names_what_it_leaves_out_and_derived_parts_may_be_missing():
  def flat_with_derived_part():
    flat = fresh_flat()
    flat['params'][('translation', 'refined', 'embedding')] = nnx.Param(jnp.zeros((5, 4)))
    flat['params'][('translation', 'refined', 'bias')] = nnx.Param(jnp.zeros(3))  # no origin
    return flat

  source = {('params', 'translation', 'shared', 'embedding'): np.ones((5, 4)),
            ('params', 'translation', 'extra', 'kernel'): np.ones(2),
            ('params', 'head', 'kernel'): np.ones((2, 3))}  # another prefix: not this start's
  with pytest.raises(UserError, match='missing params/translation/refined/embedding'):
    warm_start.graft(flat_with_derived_part(), source, ('translation',), 'w')
  flat = flat_with_derived_part()
  grafted = warm_start.graft(flat, source, ('translation',), 'w',
                             derived=(('translation', 'refined'),))
  assert grafted.copied == {('params', ('translation', 'shared', 'embedding'))}
  assert grafted.left_out == ['params/translation/extra/kernel']
  # The derived part starts as a copy of its origin where it has one...
  copies = {('translation', 'refined'): ('translation', 'shared')}
  assert warm_start.copy_initial(flat, copies, keep=set()) == {('translation', 'refined'): 1}
  np.testing.assert_array_equal(flat['params'][('translation', 'refined', 'embedding')].value, 1.0)
  np.testing.assert_array_equal(flat['params'][('translation', 'refined', 'bias')].value, 0.0)
  # ... unless a start wrote it.
  flat['params'][('translation', 'refined', 'embedding')] = nnx.Param(jnp.full((5, 4), 7.0))
  keep = {('params', ('translation', 'refined', 'embedding'))}
  assert warm_start.copy_initial(flat, copies, keep) == {}
  np.testing.assert_array_equal(flat['params'][('translation', 'refined', 'embedding')].value, 7.0)
