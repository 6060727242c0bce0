"""Where training and evaluation results go: metrics.jsonl, TensorBoard events, predictions/.

Only JAX process 0 writes. On resume, entries logged after the restored step (by the run that
crashed) are dropped, so the files read as if the run had never been interrupted. metrics.jsonl
is rewritten whole at every write (a Cloud Storage object cannot be appended to), so a reader
never sees a partial line. For a gs:// workdir, TensorBoard events are written to a local
temporary folder and uploaded after every write.
"""
import json
import shutil
import sys
import tempfile

import jax

from sltjax import storage


def _import_summary_writer():
  """tensorboardX's SummaryWriter class, imported without torch: tensorboardX imports torch
  whenever it is installed, only to accept torch tensors (2-4 s of every training process's
  start), and sltjax logs Python floats. A later `import torch` elsewhere works as usual."""
  if 'torch' in sys.modules:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    return SummaryWriter
  sys.modules['torch'] = None  # makes `import torch` raise ImportError, which tensorboardX expects
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  finally:
    del sys.modules['torch']
  return SummaryWriter


SummaryWriter = _import_summary_writer()


class MetricWriter:

  def __init__(self, workdir: str, resume_step: int | None = None):
    """resume_step: drop entries logged after this step (None: keep everything, append)."""
    self.enabled = jax.process_index() == 0
    self.metrics_path = storage.join(workdir, 'metrics.jsonl')
    self.predictions_dir = storage.join(workdir, 'predictions')
    if not self.enabled:
      return
    self.lines = self._kept_lines(resume_step)
    self.events_dir = storage.join(workdir, 'tensorboard')
    self.local_events_dir = (tempfile.mkdtemp(prefix='sltjax-tensorboard-')
                             if storage.is_remote(workdir) else None)
    self.tensorboard = SummaryWriter(self.local_events_dir or self.events_dir,
                                     purge_step=resume_step + 1 if resume_step else None)

  def _kept_lines(self, resume_step: int | None) -> list[str]:
    """metrics.jsonl's lines up to resume_step (all of them when None), rewritten if any went."""
    if not storage.path(self.metrics_path).exists():
      return []
    lines = [line + '\n' for line in storage.read_text(self.metrics_path).splitlines()
             if line.strip()]
    if resume_step is None:
      return lines
    kept = [line for line in lines if json.loads(line)['step'] <= resume_step]
    if kept != lines:
      storage.write_text(self.metrics_path, ''.join(kept))
    return kept

  def write(self, step: int, split: str, values: dict[str, float]) -> None:
    """One JSON line {'step', 'split', **values} and one TensorBoard scalar per value."""
    if not self.enabled:
      return
    values = {k: float(v) for k, v in values.items()}
    self.lines.append(json.dumps({'step': step, 'split': split, **values}) + '\n')
    storage.write_text(self.metrics_path, ''.join(self.lines))
    for name, value in values.items():
      self.tensorboard.add_scalar(f'{split}/{name}', value, step)
    self.tensorboard.flush()
    if self.local_events_dir:
      storage.copy_files(self.local_events_dir, self.events_dir)

  def write_predictions(self, name: str, hypotheses: list[str]) -> str:
    """Writes predictions/<name>.txt (one hypothesis per line, in dataset order)."""
    path = storage.join(self.predictions_dir, f'{name}.txt')
    if self.enabled:
      storage.write_text(path, ''.join(h + '\n' for h in hypotheses))
    return path

  def close(self) -> None:
    if self.enabled:
      self.tensorboard.close()
      if self.local_events_dir:
        storage.copy_files(self.local_events_dir, self.events_dir)
        shutil.rmtree(self.local_events_dir)
