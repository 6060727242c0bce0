r"""Golden outputs of CiCo's released fine-grained contrastive loss, for the parity test in
tests/test_contrastive.py (C2RL's ICL follows it).

Release: https://github.com/FangyunWei/SLRT, commit 38a4f7b00da7a858d59b7fabe5093876a84db8e0,
folder CiCo/CLCL. Regenerate where that folder and torch are present:

  python tests/cico_release_golden.py /path/to/SLRT/CiCo/CLCL   # rewrites the .npz

The release imports boto3 and botocore at module level for checkpoint downloads, which nothing
here runs; absent ones are replaced by empty modules before the import. The release's own
`CLIP4Clip.flip_similarity_softmax` (the "Filip" similarities, its training
default) and `CrossEn` run on random features; the loss is combined as `CLIP4Clip.forward`
combines them with its defaults (dual_mix 0.5, mix_design 'balance'):
  (0.5 CE(I2T) + 0.5 CE(I2T^T) + 0.5 CE(T2I^T) + 0.5 CE(T2I)) / 2.
CiCo's masks: video_mask 0 marks a valid frame, attention_mask 1 a valid token; padded positions
keep the features the encoders gave them (nonzero here, as an encoder's are).
Stored, float32 (computed in float64): the features, masks, logit scale, both similarity matrices
(after the logit scale), the loss and its gradients with respect to both features.
"""
import importlib
import importlib.util
import math
import pathlib
import sys
import types

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from tests import release_golden_files  # pylint: disable=wrong-import-position

GOLDEN_FILE = pathlib.Path(__file__).with_name('cico_release_golden.npz')
RELEASE_COMMIT = '38a4f7b00da7a858d59b7fabe5093876a84db8e0'
VIDEO_LENGTHS = (6, 4, 5, 2)  # four videos of up to 6 frames
TEXT_LENGTHS = (5, 3, 5, 1)  # their four texts, up to 5 tokens
DIM = 16


def inputs() -> dict[str, np.ndarray]:
  """Features [4, 6, DIM] and [4, 5, DIM], masks 1 = valid, the log logit scale."""
  rng = np.random.default_rng(11)
  video_mask = (np.arange(6)[None] < np.array(VIDEO_LENGTHS)[:, None]).astype(np.float32)
  text_mask = (np.arange(5)[None] < np.array(TEXT_LENGTHS)[:, None]).astype(np.float32)
  return {'video': rng.standard_normal((4, 6, DIM)).astype(np.float32),
          'text': rng.standard_normal((4, 5, DIM)).astype(np.float32),
          'video_mask': video_mask, 'text_mask': text_mask,
          'logit_scale': np.float32(math.log(1 / 0.07))}


def main(release_dir: str):
  import torch  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, release_dir)
  if importlib.util.find_spec('boto3') is None:  # download helpers, unused here
    for name in ('boto3', 'botocore', 'botocore.exceptions'):
      sys.modules[name] = types.ModuleType(name)
    sys.modules['botocore.exceptions'].ClientError = Exception
  modeling = importlib.import_module('modules.modeling')
  cross_entropy = importlib.import_module('modules.until_module').CrossEn()
  torch.set_default_dtype(torch.float64)
  data = inputs()
  video = torch.from_numpy(data['video']).double().requires_grad_()
  text = torch.from_numpy(data['text']).double().requires_grad_()
  model = types.SimpleNamespace(  # the attributes flip_similarity_softmax reads
      training=False, distributed=False,
      clip=types.SimpleNamespace(logit_scale=torch.tensor(float(data['logit_scale']))))
  video_mask = torch.from_numpy(1 - data['video_mask'])  # CiCo: 0 = valid frame
  text_mask = torch.from_numpy(data['text_mask'])
  i2t, t2i = modeling.CLIP4Clip.flip_similarity_softmax(
      model, text, video, text_mask, video_mask, sim_header='Filip', sequence_hidden_aug=text,
      text_mask_aug=text_mask)
  mix = 0.5  # CLIP4Clip.forward with dual_mix 0.5, mix_design 'balance'
  loss1 = cross_entropy(i2t) * mix + cross_entropy(i2t.T) * (1 - mix)
  loss2 = cross_entropy(t2i.T) * mix + cross_entropy(t2i) * (1 - mix)
  loss = (loss1 + loss2) / 2
  loss.backward()
  np.savez_compressed(
      GOLDEN_FILE, **data, i2t=i2t.detach().float().numpy(), t2i=t2i.detach().float().numpy(),
      loss=loss.item(), grad_video=video.grad.float().numpy(), grad_text=text.grad.float().numpy(),
      release_commit=RELEASE_COMMIT, torch=torch.__version__)
  print(f'{GOLDEN_FILE}: loss {loss.item():.6f}; torch {torch.__version__}')


def load_golden() -> dict:
  return release_golden_files.load(GOLDEN_FILE)


if __name__ == '__main__':
  release_golden_files.run_from_command_line(main, 'SLRT/CiCo/CLCL')
