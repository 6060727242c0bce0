r"""Golden outputs of GFSLT-VLP's released pretraining modules, for the release-parity test
(tests/test_gfslt_release_parity.py).

Release: https://github.com/zhoubenjia/GFSLT-VLP, commit 91ba953cf26492cd085fc12d20dc952f2a727ee1.
Regenerate where that folder and torch + transformers are present (the release's own SLRCLIP,
Text_Decoder, KLLoss and its dataset's collate_fn are imported and run; nothing of the release
is copied here):

  python tests/gfslt_release_golden.py /path/to/GFSLT-VLP   # rewrites the .npz

The release imports packages for data loading, logging and plots at module level (torchvision,
tensorflow, seaborn, lmdb, vidaug, loguru, hpman); none of them runs in what is used here, so
absent ones are replaced by stub modules before the import (hpman's `_` returns its default).
Sizes are shrunk where the release hard-codes them: its ResNet-18 (checked against sltjax's in
tests/test_backbones.py) is replaced by given per-frame features of FEATURES channels (a
Flatten, so the release's own resnet wrapper still splits and pads the batch), its TemporalConv
takes FEATURES -> WIDTH instead of 512 -> 1024, and SLRCLIP's embed_dim is WIDTH. The mBART-shaped
networks are tiny Hugging Face models written with save_pretrained for the release's
from_pretrained calls (`transformer`: the text encoder's; `visual_encoder`: "mytran", the visual
encoder's and the text decoder's), one layer each, dropout off. Every weight is drawn by its
release name (tests/s3d_golden.py's seeded_weights, so only names and shapes are stored); the
text decoder's output projection is a copy of its input embedding, as the release's two
from_pretrained calls of one checkpoint give.

What the file holds, all float32 (computed in float64):
- shapes: every tensor's name and shape (SLRCLIP's state dict, then Text_Decoder's).
- train_*: training mode on three clips of TRAIN_FRAMES frames each (padded by the release's
  collate_fn to one length, so its TemporalConv's BatchNorm sees no padding): the inputs, the
  CLIP logits and KLLoss (both directions, halved, as train_vlp_v2.py), the text decoder's
  logits on the masked text and its label-smoothed (0.2) cross entropy, and the gradient of
  each loss for every parameter of the module it trains (SLRCLIP: CLIP loss; Text_Decoder:
  its loss).
- eval_*: evaluation mode (BatchNorm running statistics) on clips of EVAL_FRAMES frames, padded
  by collate_fn: the video embeddings (ImageCLIP's output) and the text embeddings.
"""
import contextlib
import importlib
import json
import math
import pathlib
import sys
import tempfile
import types

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from tests import release_golden_files  # pylint: disable=wrong-import-position
from tests.s3d_golden import seeded_weights  # pylint: disable=wrong-import-position

GOLDEN_FILE = pathlib.Path(__file__).with_name('gfslt_release_golden.npz')
RELEASE_COMMIT = '91ba953cf26492cd085fc12d20dc952f2a727ee1'
FEATURES, WIDTH = 24, 32  # stand for ResNet-18's 512 and the release's 1024
MBART = dict(vocab_size=40, d_model=WIDTH, encoder_layers=1, decoder_layers=1,
             encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
             decoder_ffn_dim=64, max_position_embeddings=64, scale_embedding=True,
             pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
             dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
LANG_ID, MASK_ID = 39, 3  # the language code (the largest id, as the release assumes), <mask>
TRAIN_FRAMES = (14, 14, 14)
EVAL_FRAMES = (14, 9, 21)
LABEL_SMOOTHING = 0.2  # train_vlp_v2.py's CrossEntropyLoss for the text decoder
LOGIT_SCALE = math.log(1 / 0.07)


def texts() -> dict[str, np.ndarray]:
  """`X </s> lang` ids [3, 7] (pad 1), their masked form (the last words' tokens -> MASK_ID,
  same length, as sltjax masks tokens) and the masks."""
  ids = np.array([[5, 9, 17, 33, 2, LANG_ID, 1], [12, 4, 2, LANG_ID, 1, 1, 1],
                  [8, 21, 30, 6, 11, 2, LANG_ID]])
  masked = ids.copy()
  masked[0, 3] = masked[1, 1] = MASK_ID
  masked[2, 3:5] = MASK_ID
  mask = (ids != 1).astype(np.int64)
  return {'ids': ids, 'masked_ids': masked, 'mask': mask}


def clips(lengths, seed: int) -> list[np.ndarray]:
  """Per-frame features [n, FEATURES] of each clip."""
  rng = np.random.default_rng(seed)
  return [rng.standard_normal((n, FEATURES)).astype(np.float32) for n in lengths]


def release_weights(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
  """Every tensor by its release name: drawn by name (seeded_weights), the logit scale at its
  start, the text decoder's output projection a copy of its input embedding and its
  final_logits_bias zero (as the release's from_pretrained calls give them)."""
  weights = seeded_weights(shapes)
  weights['logit_scale'] = np.array(LOGIT_SCALE, np.float32)
  weights['lm_head.weight'] = weights['text_decoder.embed_tokens.weight']
  weights['final_logits_bias'] = np.zeros(shapes['final_logits_bias'], np.float32)
  return weights


def load_golden() -> dict:
  """The golden file's arrays, 'shapes' as {name: shape}."""
  golden = release_golden_files.load(GOLDEN_FILE)
  golden['shapes'] = {k: tuple(v) for k, v in json.loads(str(golden['shapes'])).items()}
  return golden


def _stub_absent_imports() -> list[str]:
  """Stub modules for the release's data-loading, logging and plotting imports that are absent;
  their names."""
  stubs = {'torchvision': {}, 'torchvision.utils': {'save_image': None, 'make_grid': None},
           'torchvision.transforms': {}, 'tensorflow': {}, 'seaborn': {}, 'lmdb': {},
           'vidaug': {}, 'vidaug.augmentors': {}, 'loguru': {'logger': None},
           'hpman': {}, 'hpman.m': {'_': lambda name, default=None, **kwargs: default}}
  stubbed = []
  for name, attributes in stubs.items():
    try:
      importlib.import_module(name)
    except ImportError:
      module = types.ModuleType(name)
      module.__dict__.update(attributes)
      sys.modules[name] = module
      stubbed.append(name)
  sys.modules['torchvision'].transforms = sys.modules['torchvision.transforms']
  sys.modules['vidaug'].augmentors = sys.modules['vidaug.augmentors']
  return stubbed


class _GivenTokenizer:
  """What collate_fn asks of its tokenizer: the given ids and masks."""

  def __init__(self, ids, mask):
    self.output = {'input_ids': ids, 'attention_mask': mask}

  def __call__(self, sentences, **kwargs):
    del sentences, kwargs
    return self.output

  @contextlib.contextmanager
  def as_target_tokenizer(self):
    yield


def collate(datasets_module, features: list[np.ndarray], text: dict):
  """The release's S2T_Dataset.collate_fn on per-frame features (as [n, FEATURES, 1, 1]
  images): its first/last-frame padding, lengths and attention mask."""
  import torch  # pylint: disable=import-outside-toplevel
  dataset = types.SimpleNamespace(
      tokenizer=_GivenTokenizer(torch.from_numpy(text['ids']), torch.from_numpy(text['mask'])),
      training_refurbish=False)
  batch = [(f'clip{i}', torch.from_numpy(f).double()[:, :, None, None], 'unused')
           for i, f in enumerate(features)]
  return datasets_module.S2T_Dataset.collate_fn(dataset, batch)


def main(release_dir: str):
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  from transformers.models.mbart import modeling_mbart  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, release_dir)
  stubbed = _stub_absent_imports()
  modeling_mbart._expand_mask = None  # imported by models.py (transformers 4), never called
  models = importlib.import_module('models')
  datasets_module = importlib.import_module('datasets')
  utils = importlib.import_module('utils')
  for name in stubbed:  # einops would take a stub tensorflow for the real one
    del sys.modules[name]
  torch.Tensor.cuda = lambda self, *args, **kwargs: self  # the release moves inputs to the GPU
  models.make_resnet = lambda name='resnet18': torch.nn.Flatten()  # [N, C, 1, 1] -> [N, C]
  torch.set_default_dtype(torch.float64)

  with tempfile.TemporaryDirectory() as folder:
    for name in ('transformer', 'visual_encoder'):
      transformers.MBartForConditionalGeneration(transformers.MBartConfig(**MBART)) \
          .save_pretrained(f'{folder}/{name}')
    config = {'model': {'transformer': f'{folder}/transformer',
                        'visual_encoder': f'{folder}/visual_encoder'}}
    clip_model = models.SLRCLIP(config, embed_dim=WIDTH)
    clip_model.model_images.model.conv_1d = models.TemporalConv(FEATURES, WIDTH, conv_type=2)
    clip_model.double()
    text_decoder = models.Text_Decoder(config).double()

  state = {**clip_model.state_dict(), **text_decoder.state_dict()}
  shapes = {k: tuple(v.shape) for k, v in state.items()}
  weights = release_weights(shapes)
  def load_weights():
    for module in (clip_model, text_decoder):
      module.load_state_dict({k: torch.from_numpy(weights[k]).double()
                              for k in module.state_dict()})

  load_weights()
  out = {'shapes': json.dumps(shapes), 'release_commit': RELEASE_COMMIT}
  text = texts()

  # --- training mode: CLIP loss and the masked text decoder, with gradients -------------------
  clip_model.train()
  text_decoder.train()
  features = clips(TRAIN_FRAMES, seed=3)
  src_input, tgt_input = collate(datasets_module, features, text)
  masked_input = {'input_ids': torch.from_numpy(text['masked_ids']),
                  'attention_mask': torch.from_numpy(text['mask'])}
  logits_per_image, logits_per_text, ground_truth = clip_model(src_input, tgt_input)
  criterion = utils.KLLoss()
  clip_loss = (criterion(logits_per_image, ground_truth)
               + criterion(logits_per_text, ground_truth)) / 2
  clip_loss.backward()
  lm_logits = text_decoder(tgt_input, masked_input, clip_model.model_txt)
  lm_loss = torch.nn.CrossEntropyLoss(ignore_index=1, label_smoothing=LABEL_SMOOTHING)(
      lm_logits.view(-1, lm_logits.shape[-1]), tgt_input['input_ids'].view(-1))
  lm_loss.backward()
  decoder_input_ids = modeling_mbart.shift_tokens_right(tgt_input['input_ids'], 1)
  out.update({
      'train_features': np.stack(features), 'train_video_lengths': src_input[
          'src_length_batch'].numpy(), 'text_ids': text['ids'], 'text_mask': text['mask'],
      'masked_ids': text['masked_ids'], 'decoder_input_ids': decoder_input_ids.numpy(),
      'train_logits_per_image': logits_per_image.detach().numpy(),
      'train_clip_loss': clip_loss.detach().numpy(),
      'train_lm_logits': lm_logits.detach().numpy(), 'train_lm_loss': lm_loss.detach().numpy()})
  for module in (clip_model, text_decoder):
    for name, parameter in module.named_parameters():
      if parameter.grad is not None:
        out[f'grad/{name}'] = parameter.grad.numpy()

  # --- evaluation mode: the embeddings of clips of different lengths ---------------------------
  load_weights()  # the running statistics as drawn, not as the training step updated them
  clip_model.eval()
  features = clips(EVAL_FRAMES, seed=4)
  src_input, tgt_input = collate(datasets_module, features, text)
  with torch.no_grad():
    video = clip_model.model_images(src_input)
    sentence, _ = clip_model.model_txt(tgt_input)
  padded = np.zeros((len(features), max(EVAL_FRAMES), FEATURES), np.float32)
  for i, f in enumerate(features):
    padded[i, :len(f)] = f
  out.update({'eval_features': padded, 'eval_lengths': np.array(EVAL_FRAMES),
              'eval_video_lengths': src_input['src_length_batch'].numpy(),
              'eval_attention_mask': src_input['attention_mask'].numpy(),
              'eval_video': video.numpy(), 'eval_text': sentence.numpy()})
  np.savez_compressed(GOLDEN_FILE, **{k: np.asarray(v, np.float32) if isinstance(v, np.ndarray)
                                      and v.dtype == np.float64 else v for k, v in out.items()})
  print(f'wrote {GOLDEN_FILE}: clip loss {float(clip_loss):.6f}, masked LM loss '
        f'{float(lm_loss):.6f}, {sum(k.startswith("grad/") for k in out)} gradients')


if __name__ == '__main__':
  release_golden_files.run_from_command_line(main, 'GFSLT-VLP')
