"""Where training and evaluation results go: metrics.jsonl, TensorBoard events, predictions/.

Only JAX process 0 writes. On resume, entries logged after the restored step (by the run that
crashed) are dropped, so the files read as if the run had never been interrupted.
"""
import json
import os

import jax
from tensorboardX import SummaryWriter


class MetricWriter:

  def __init__(self, workdir: str, resume_step: int | None = None):
    """resume_step: drop entries logged after this step (None: keep everything, append)."""
    self.enabled = jax.process_index() == 0
    self.metrics_path = os.path.join(workdir, 'metrics.jsonl')
    self.predictions_dir = os.path.join(workdir, 'predictions')
    if not self.enabled:
      return
    os.makedirs(self.predictions_dir, exist_ok=True)
    if resume_step is not None:
      self._drop_entries_after(resume_step)
    self.tensorboard = SummaryWriter(os.path.join(workdir, 'tensorboard'),
                                     purge_step=resume_step + 1 if resume_step else None)

  def _drop_entries_after(self, step: int) -> None:
    if not os.path.exists(self.metrics_path):
      return
    with open(self.metrics_path, encoding='utf-8') as f:
      kept = [line for line in f if line.strip() and json.loads(line)['step'] <= step]
    with open(self.metrics_path + '.tmp', 'w', encoding='utf-8') as f:
      f.writelines(kept)
    os.replace(self.metrics_path + '.tmp', self.metrics_path)

  def write(self, step: int, split: str, values: dict[str, float]) -> None:
    """One JSON line {'step', 'split', **values} and one TensorBoard scalar per value."""
    if not self.enabled:
      return
    values = {k: float(v) for k, v in values.items()}
    with open(self.metrics_path, 'a', encoding='utf-8') as f:
      f.write(json.dumps({'step': step, 'split': split, **values}) + '\n')
    for name, value in values.items():
      self.tensorboard.add_scalar(f'{split}/{name}', value, step)
    self.tensorboard.flush()

  def write_predictions(self, name: str, hypotheses: list[str]) -> str:
    """Writes predictions/<name>.txt (one hypothesis per line, in dataset order)."""
    path = os.path.join(self.predictions_dir, f'{name}.txt')
    if self.enabled:
      with open(path, 'w', encoding='utf-8') as f:
        f.write(''.join(h + '\n' for h in hypotheses))
    return path

  def close(self) -> None:
    if self.enabled:
      self.tensorboard.close()
