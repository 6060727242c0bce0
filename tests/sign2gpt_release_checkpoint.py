r"""A Sign2GPT stage-2 checkpoint written by the release's own code, with the XGLM folder the
release loads its tokenizer from and the release's own translations of three clips, for
tests/test_release_converter.py (python -m sltjax.convert.release --system=sign2gpt).

Release: https://github.com/ryanwongsa/Sign2GPT, commit 5555935. Regenerate where the release,
torch and xformers 0.0.28 are present:

  PYTHONPATH=/path/to/xformers-0.0.28 python tests/sign2gpt_release_checkpoint.py \
      /path/to/Sign2GPT

It builds the release's stage-2 Model as tests/sign2gpt_stage2_release_golden.py does (DINOv2
with its LoRAs, Linear, BatchNorm, the MetaFormer sign encoder at the release's 8 heads, the
sine-position Linear into the LM, its modeling_xglm.py with the stage-2 adaptor), here at sizes
where the whole chain is exercised: DINOv2's position grid (3 x 3) differs from the frames'
(2 x 2), so Meta's position interpolation runs. Its XGLM is sltjax's synthetic-sentence
stand-in (python -m sltjax.stand_ins' train_xglm, 64 wide), so that the translations are
sentences; its adapters, gates (0.6-1.0) and sign side are random, the clips tinted apart (the
seed chosen so that their three translations differ). Saved into
tests/sign2gpt_release_checkpoint/:
  best_checkpoint.pt   as the release's ignite Checkpoint writes it ({'model': state dict,
                       'optimizer': ...}), float32
  xglm/                the XGLM folder the release reads its tokenizer (and config) from:
                       config.json and the tokenizer files (the weights are in the checkpoint)
  clips/clip_*/        the clips, 28 x 28 PNG frames
  golden.json          the release's translations of each clip alone: test_step's generate
                       (its config's gen_params: 4 beams, max_length 64) on every second frame
                       (its validation sampling), ImageNet-normalised as its augmentation does,
                       cut at the first </s> and decoded by the tokenizer (skip_special_tokens)
"""
import json
import os
import pathlib
import shutil
import sys
import tempfile

import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # the XGLM stand-in trains with sltjax
# pylint: disable=wrong-import-position
from tests import release_golden_files
from tests import sign2gpt_stage2_release_golden as stage2
from tests.release_fixtures import pattern_frame
from tests.sign2gpt_release_golden import RELEASE_COMMIT

FOLDER = pathlib.Path(__file__).with_name('sign2gpt_release_checkpoint')
DINO = {'hidden_size': 64, 'num_layers': 2, 'num_heads': 1}  # 64-wide heads, as released
DINO_IMAGE, FRAME_SIZE = 42, 28
DIM, HEADS = 32, 8
CLIPS = {'clip_a': 9, 'clip_b': 16, 'clip_c': 23}  # frames
TINTS = np.array([[1.0, 0.3, 0.2], [0.2, 0.9, 0.4], [0.5, 0.5, 1.0]])
GEN_PARAMS = {'max_length': 64, 'temperature': 1.0, 'num_beams': 4}  # PHX_example_s2_dyn_config
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def write_clips() -> dict[str, np.ndarray]:
  """Writes the clips' PNG frames; returns each clip's frames [T, 28, 28, 3] uint8."""
  clips = {}
  for number, (name, length) in enumerate(CLIPS.items()):
    folder = FOLDER / 'clips' / name
    folder.mkdir(parents=True)
    tint = TINTS[number]  # clips of different colours, so that their translations differ
    frames = np.stack([pattern_frame(FRAME_SIZE, FRAME_SIZE, seed=100 * number + 3 * t) * tint
                       for t in range(length)]).astype(np.uint8)
    for t, frame in enumerate(frames):
      Image.fromarray(frame).save(folder / f'{t:04d}.png')
    clips[name] = frames
  return clips


def set_weights(torch, model, xglm_dir: pathlib.Path) -> None:
  """The stand-in XGLM's weights into the release's XGLM; the rest random (see the docstring)."""
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  weights = {k: torch.from_numpy(v) for k, v in load_file(xglm_dir / 'model.safetensors').items()}
  missing, unexpected = model.lang_model.load_state_dict(weights, strict=False)
  assert not unexpected, unexpected
  assert all('lora_' in k or 'adaptor_' in k or k in ('lm_head.weight',
                                                     'model.embed_positions.weights')
             for k in missing), missing
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith('adaptor_gate'):
        p.copy_(torch.rand(p.shape) * 0.4 + 0.6)
      elif 'layer_scale' in name:
        p.copy_(torch.rand(p.shape) * 0.5 + 0.25)
      elif 'adaptor_lora' in name:
        p.copy_(0.5 * torch.randn(p.shape))
      elif 'lora_' in name:
        p.copy_(0.1 * torch.randn(p.shape))
      elif 'spatial_model.spatial_model' in name:
        p.copy_(1.0 + 0.1 * torch.randn(p.shape) if 'norm' in name and name.endswith('weight')
                else 0.2 * torch.randn(p.shape))
  stage2.randomise_batch_norm_statistics(torch, model)


def main(release_dir: str):
  import torch  # pylint: disable=import-outside-toplevel
  from transformers import AutoTokenizer, GenerationConfig, GenerationMixin  # pylint: disable=import-outside-toplevel
  from sltjax import stand_ins as sltjax_stand_ins  # pylint: disable=import-outside-toplevel
  stage2.import_release(torch, release_dir)
  torch.manual_seed(0)
  if FOLDER.exists():
    shutil.rmtree(FOLDER)
  (FOLDER / 'xglm').mkdir(parents=True)
  with tempfile.TemporaryDirectory() as scratch:
    xglm_dir = pathlib.Path(scratch)
    sltjax_stand_ins.train_xglm(str(xglm_dir), d_model=64, steps=300)
    for path in xglm_dir.iterdir():
      if path.suffix not in ('.safetensors', '.vocab'):  # config.json, the tokenizer's files
        shutil.copy(path, FOLDER / 'xglm' / path.name)
    lm_config = json.loads((xglm_dir / 'config.json').read_text())
    sizes = stage2.Sizes(lm_config, DINO, DINO_IMAGE, DIM, HEADS)
    model = stage2.release_model(torch, sizes)
    set_weights(torch, model, xglm_dir)
  model.eval()
  # transformers >= 4.50 leaves GenerationMixin out of PreTrainedModel; the release's model
  # (written for 4.31) gets it back, with the generation defaults 4.31 took from its config.
  lm = model.lang_model
  lm.__class__ = type('GeneratingXGLM', (lm.__class__, GenerationMixin), {})
  lm.generation_config = GenerationConfig.from_model_config(lm.config)
  tokenizer = AutoTokenizer.from_pretrained(FOLDER / 'xglm')

  golden = {'release_commit': RELEASE_COMMIT, 'torch': torch.__version__, 'translations': {}}
  for name, frames in write_clips().items():
    picked = frames[::2].astype(np.float64) / 255.0  # the validation stride, 2, from frame 0
    clip = torch.from_numpy(((picked - MEAN) / STD).astype(np.float32)).permute(0, 3, 1, 2)
    prompt = torch.tensor([[tokenizer.eos_token_id]])  # the empty pretext's tokens
    with torch.inference_mode():
      out = model(prompt, torch.ones_like(prompt, dtype=torch.bool), [clip],
                  torch.ones(1, len(clip), dtype=torch.bool), max_len=len(clip), generate=True,
                  gen_params={**GEN_PARAMS, 'eos_token_id': tokenizer.eos_token_id,
                              'bos_token_id': tokenizer.bos_token_id,
                              'pad_token_id': tokenizer.pad_token_id})
    ids = out['output_ids'][0]
    ends = torch.where(ids == tokenizer.eos_token_id)[0]
    ids = ids[:ends[0]] if len(ends) else ids
    golden['translations'][name] = {'ids': ids.tolist(),
                                    'text': tokenizer.decode(ids, skip_special_tokens=True)}
  optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4,
                                weight_decay=1e-3)
  torch.save({'model': model.state_dict(), 'optimizer': optimizer.state_dict()},
             FOLDER / 'best_checkpoint.pt')
  (FOLDER / 'golden.json').write_text(json.dumps(golden, indent=1, ensure_ascii=False) + '\n')
  for name, item in golden['translations'].items():
    print(f'{name}: {len(item["ids"])} tokens: {item["text"]}')


if __name__ == '__main__':
  release_golden_files.run_from_command_line(main, 'Sign2GPT')
