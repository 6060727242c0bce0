"""Config of the test plug-in system (tests/plugin/linear_regression.py)."""
import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.system = 'tests.plugin.linear_regression'
  c.seed = 0
  c.total_steps = 60
  c.batch_size = 8
  c.log_every_steps = 20
  c.eval_every_steps = 30
  c.checkpoint_every_steps = 30
  c.keep_checkpoints = 2
  c.mesh = {'data': -1, 'fsdp': 1, 'tensor': 1}
  c.data = ml_collections.ConfigDict({'train_size': 64})
  c.optimizer = ml_collections.ConfigDict({
      'name': 'adam', 'learning_rate': 0.1, 'b1': 0.9, 'b2': 0.999, 'eps': 1e-8,
      'weight_decay': 0.0, 'momentum': 0.0, 'grad_clip_norm': 0.0, 'param_groups': {},
      'frozen': ''})
  c.schedule = ml_collections.ConfigDict({'kind': 'constant', 'warmup_steps': 0,
                                          'end_factor': 0.0})
  c.eval = ml_collections.ConfigDict({'split': 'dev', 'batch_size': 8, 'best_metric': 'mse'})
  return c
