"""What each system gives the training loop (sltjax/train.py): its model, batches, loss and
evaluation. `create(config, workdir)` picks the experiment named by config.system."""


def create(config, workdir: str):
  system = config.get('system', 'gloss2text')
  # Imported here: each experiment pulls in its own data and model code.
  if system == 'gloss2text':
    from sltjax.experiments.gloss2text import Gloss2TextExperiment  # pylint: disable=import-outside-toplevel
    return Gloss2TextExperiment(config, workdir)
  if system == 'mmtlb':
    from sltjax.experiments.mmtlb import MMTLBExperiment  # pylint: disable=import-outside-toplevel
    return MMTLBExperiment(config, workdir)
  raise ValueError(f'config.system={system!r}; expected "gloss2text" or "mmtlb".')
