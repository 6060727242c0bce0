r"""Golden outputs of MMTLB's released PyTorch modules, for the release-parity tests
(tests/test_mmtlb_release_parity.py).

Release: https://github.com/FangyunWei/SLRT, commit 38a4f7b00da7a858d59b7fabe5093876a84db8e0,
folder TwoStreamNetwork (MMTLB is its SingleStream-SLT). Regenerate where that folder and torch +
transformers are present (the release's own S3D, VisualHead, VLMapper, TranslationNetwork, XentLoss
and CTC loss are imported and run; nothing of the release is copied here):

  python tests/mmtlb_release_golden.py /path/to/SLRT/TwoStreamNetwork   # rewrites the .npz

The release imports wandb, tensorboard, tensorflow and torchvision at module level for logging,
CTC beam search and augmentation; none of them runs in the modules used here, so absent ones are
replaced by empty modules before the import.

What the file holds, all float32 (computed in float64):
- s3d: the release's S3D_backbone(use_block=4, freeze_block=1) in its own naming (base.N.conv_s,
  ...), weights drawn by key name (tests/s3d_golden.py's seeded_weights, so only names and shapes
  are stored), on tests/s3d_golden.py's clip: 'sgn' features in training mode (block 0 frozen:
  its BatchNorms use running statistics, the rest batch statistics) and in evaluation mode.
- s2t: a small Sign2Text model on features (the release's Sign2Text input) composed exactly as
  SignLanguageModel composes it (recognition_network.visual_head -> vl_mapper ->
  translation_network), its whole state dict in the release's naming, a batch, the CTC and
  translation losses, the logits and the gradient of the total loss for every parameter. Training
  mode with dropout off; label smoothing 0 (see the test for the smoothing difference).
- translation_lengths: the mapper and translation network on rows of different lengths (the
  release slices each row's valid frames and appends `</s>` and the sign-language code).
- ctc: the release's recognition loss on rows of different input and gloss lengths, and its
  gradient.
- head_eval: the visual head in evaluation mode (BatchNorm running statistics).
"""
import importlib
import json
import logging
import math
import pathlib
import sys
import types

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from tests import release_golden_files  # pylint: disable=wrong-import-position
from tests.s3d_golden import seeded_clip, seeded_weights  # pylint: disable=wrong-import-position

GOLDEN_FILE = pathlib.Path(__file__).with_name('mmtlb_release_golden.npz')
RELEASE_COMMIT = '38a4f7b00da7a858d59b7fabe5093876a84db8e0'

# The small Sign2Text model: features [B, T', FEATURES] -> head (HIDDEN, FF) -> mapper -> mBART.
FEATURES, HIDDEN, FF, GLOSSES = 48, 32, 64, 12
MBART = dict(vocab_size=40, d_model=32, encoder_layers=2, decoder_layers=2,
             encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
             decoder_ffn_dim=64, max_position_embeddings=64, scale_embedding=True,
             pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
SIGN_LANG_ID = 39  # the text vocabulary's id of the sign-language code (de_DGS)
LENGTHS = (7, 5, 3)  # valid feature lengths of translation_lengths' and ctc's rows


def batch() -> dict[str, np.ndarray]:
  """The inputs every part uses: features [3, 7, FEATURES], text [3, 6], glosses [3, 4]."""
  rng = np.random.default_rng(7)
  labels = np.array([[5, 9, 17, 33, 2, 1], [12, 4, 2, 1, 1, 1], [8, 21, 30, 6, 11, 2]])
  decoder_inputs = np.concatenate([np.full((3, 1), 2), labels[:, :-1]], axis=1)  # start: </s>
  return {
      'features': rng.standard_normal((3, 7, FEATURES)).astype(np.float32),
      'z': rng.standard_normal((3, 7, HIDDEN)).astype(np.float32),
      'gloss_logits': rng.standard_normal((3, 7, GLOSSES)).astype(np.float32),
      'labels': labels, 'decoder_input_ids': decoder_inputs,
      'gloss_ids': np.array([[3, 7, 7, 1], [5, 2, 0, 0], [11, 0, 0, 0]]),
      'gloss_lengths': np.array([4, 2, 1]), 'lengths': np.array(LENGTHS)}


def _stub_logging_imports():
  """Empty modules for the release's logging imports that are absent, after loading what
  looks their packages' specs up (transformers' models and generation, torch's compiler)."""
  for module in ('transformers.models.mbart.modeling_mbart', 'transformers.generation.utils',
                 'torch._dynamo'):
    importlib.import_module(module)
  for name in ('wandb', 'tensorflow', 'torchvision'):
    try:
      __import__(name)
    except ImportError:
      sys.modules[name] = types.ModuleType(name)
  try:
    importlib.import_module('torch.utils.tensorboard')
  except ImportError:
    stub = types.ModuleType('torch.utils.tensorboard')
    stub.SummaryWriter = None
    sys.modules['torch.utils.tensorboard'] = stub


def _no_dropout(module):
  """Training mode (batch statistics) with every Dropout off."""
  import torch  # pylint: disable=import-outside-toplevel
  for m in module.modules():
    if isinstance(m, torch.nn.Dropout):
      m.eval()
  return module


def main(release_dir: str):
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, release_dir)
  _stub_logging_imports()
  from modelling.recognition import RecognitionNetwork  # pylint: disable=import-outside-toplevel
  from modelling.S3D import S3D_backbone  # pylint: disable=import-outside-toplevel
  from modelling.translation import TranslationNetwork  # pylint: disable=import-outside-toplevel
  from modelling.Visualhead import VisualHead  # pylint: disable=import-outside-toplevel
  from modelling.vl_mapper import VLMapper  # pylint: disable=import-outside-toplevel
  from utils import misc  # pylint: disable=import-outside-toplevel
  from utils.loss import XentLoss  # pylint: disable=import-outside-toplevel
  misc.logger = logging.getLogger('slrt')  # the release's training script sets this global
  torch.set_default_dtype(torch.float64)
  out = {}

  # --- S3D in the release's naming, block 0 frozen -------------------------------------------
  s3d = S3D_backbone(in_channel=3, use_block=4, freeze_block=1)
  shapes = {k: tuple(v.shape) for k, v in s3d.state_dict().items()}
  weights = seeded_weights(shapes)
  clip = torch.from_numpy(seeded_clip()).double()
  lengths = torch.tensor([16, 16])
  for mode in ('train', 'eval'):
    s3d.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    s3d.double()
    if mode == 'train':
      s3d.set_train()  # the release's training mode: frozen block 0 stays in eval mode
    else:
      s3d.eval()
    with torch.no_grad():
      out[f's3d_{mode}'] = s3d(clip, lengths)['sgn'].float().numpy()  # [2, 4, 832]
  out['s3d_shapes'] = json.dumps(shapes)

  # --- Sign2Text on features ------------------------------------------------------------------
  torch.manual_seed(0)
  data = batch()
  config = transformers.MBartConfig(**MBART, dropout=0.0, attention_dropout=0.0,
                                    activation_dropout=0.0)
  translation = TranslationNetwork.__new__(TranslationNetwork)
  torch.nn.Module.__init__(translation)
  translation.task, translation.input_type, translation.gls_eos = 'S2T', 'feature', 'gls'
  translation.model = transformers.MBartForConditionalGeneration(config)
  gloss_tokens = {'<s>': 0, '<pad>': 1, '</s>': 2, 'de_DGS': 3}
  translation.gloss_tokenizer = types.SimpleNamespace(
      convert_tokens_to_ids=gloss_tokens.__getitem__, src_lang='de_DGS')
  translation.gloss_embedding = torch.nn.Embedding(len(gloss_tokens), config.d_model)
  with torch.no_grad():  # see the test: sltjax takes these two rows from the text embedding
    shared = translation.model.model.shared.weight
    translation.gloss_embedding.weight[2] = shared[MBART['eos_token_id']]
    translation.gloss_embedding.weight[3] = shared[SIGN_LANG_ID]
  translation.input_embed_scale = math.sqrt(config.d_model)
  translation.translation_loss_fun = XentLoss(pad_index=MBART['pad_token_id'], smoothing=0.0)

  model = torch.nn.Module()  # SignLanguageModel's attribute names, hence its state-dict names
  model.recognition_network = torch.nn.Module()
  model.recognition_network.visual_head = VisualHead(
      cls_num=GLOSSES, input_size=FEATURES, hidden_size=HIDDEN, ff_size=FF, pe=True,
      ff_kernelsize=[3, 3])
  model.vl_mapper = VLMapper(cfg={'type': 'projection'}, in_features=HIDDEN,
                             out_features=config.d_model)
  model.translation_network = translation
  with torch.no_grad():  # non-trivial BatchNorm affine parameters and running statistics
    norm = model.recognition_network.visual_head.bn1.norm
    norm.weight.uniform_(0.5, 1.5)
    norm.bias.normal_(0, 0.1)
    norm.running_mean.normal_(0, 0.1)
    norm.running_var.uniform_(0.5, 1.5)
  model.double()  # (SyncBatchNorm runs as BatchNorm outside a process group)
  state = {k: v.detach().clone() for k, v in model.state_dict().items()}
  out['s2t_state'] = json.dumps(sorted(k for k in state if not k.endswith('.pe.pe')))
  for k, v in state.items():  # less the fixed sinusoidal table (5,000 rows), a buffer
    if k.endswith('.pe.pe'):
      continue
    out[f's2t_param/{k}'] = v.float().numpy() if v.is_floating_point() else v.numpy()

  recognition_loss = RecognitionNetwork.compute_recognition_loss
  ctc = types.SimpleNamespace(recognition_loss_func=torch.nn.CTCLoss(
      blank=0, zero_infinity=True, reduction='sum'))  # as RecognitionNetwork.__init__ builds it
  features = torch.from_numpy(data['features']).double()
  full = torch.full((3,), features.shape[1])
  _no_dropout(model.train())
  head = model.recognition_network.visual_head(x=features, mask=torch.ones(3, 1, 7, dtype=bool),
                                               valid_len_in=full)
  mapped = model.vl_mapper(visual_outputs=head)
  text = model.translation_network(
      input_feature=mapped, input_lengths=full, labels=torch.from_numpy(data['labels']),
      decoder_input_ids=torch.from_numpy(data['decoder_input_ids']))
  recognition = recognition_loss(ctc, torch.from_numpy(data['gloss_ids']),
                                 torch.from_numpy(data['gloss_lengths']),
                                 head['gloss_probabilities_log'], full)
  total = recognition + text['translation_loss']  # SignLanguageModel: weights 1 and 1
  total.backward()
  out.update({'s2t_ctc': recognition.item(), 's2t_translation': text['translation_loss'].item(),
              's2t_gloss_logits': head['gloss_logits'].detach().float().numpy(),
              's2t_logits': text['logits'].detach().float().numpy()})
  for k, p in model.named_parameters():
    if p.grad is not None:
      out[f's2t_grad/{k}'] = p.grad.float().numpy()

  # --- the translation side on rows of different lengths --------------------------------------
  model.zero_grad()
  z = torch.from_numpy(data['z']).double().requires_grad_()
  mapped = model.vl_mapper(visual_outputs={'gloss_feature': z})
  text = model.translation_network(
      input_feature=mapped, input_lengths=torch.tensor(LENGTHS),
      labels=torch.from_numpy(data['labels']),
      decoder_input_ids=torch.from_numpy(data['decoder_input_ids']))
  text['translation_loss'].backward()
  out.update({'lengths_translation': text['translation_loss'].item(),
              'lengths_logits': text['logits'].detach().float().numpy(),
              'lengths_grad_z': z.grad.float().numpy()})

  # --- CTC on rows of different lengths -------------------------------------------------------
  logits = torch.from_numpy(data['gloss_logits']).double().requires_grad_()
  loss = recognition_loss(ctc, torch.from_numpy(data['gloss_ids']),
                          torch.from_numpy(data['gloss_lengths']), logits.log_softmax(2),
                          torch.tensor(LENGTHS))
  loss.backward()
  out.update({'ctc_loss': loss.item(), 'ctc_grad_logits': logits.grad.float().numpy()})

  # --- the head with running statistics -------------------------------------------------------
  model.load_state_dict(state)
  model.eval()
  with torch.no_grad():
    head = model.recognition_network.visual_head(x=features, mask=torch.ones(3, 1, 7, dtype=bool),
                                                 valid_len_in=full)
  out['head_eval_gloss_logits'] = head['gloss_logits'].float().numpy()
  out['head_eval_z'] = head['gloss_feature'].float().numpy()

  out.update(release_commit=RELEASE_COMMIT, torch=torch.__version__,
             transformers=transformers.__version__)
  np.savez_compressed(GOLDEN_FILE, **out)
  print(f'{GOLDEN_FILE}: {len(out)} arrays; losses ctc {out["s2t_ctc"]:.4f} translation '
        f'{out["s2t_translation"]:.4f}; torch {torch.__version__}, transformers '
        f'{transformers.__version__}')


def load_golden() -> dict:
  """The golden file's arrays (JSON-held fields decoded): {'s3d_shapes': {key: shape},
  's2t_state' and 's2t_grad': {release name: array}, ...}."""
  golden = release_golden_files.load(GOLDEN_FILE)
  golden['s3d_shapes'] = {k: tuple(v) for k, v in json.loads(str(golden['s3d_shapes'])).items()}
  golden['s2t_state'] = release_golden_files.named(golden, 's2t_param', 's2t_state')
  golden['s2t_grad'] = release_golden_files.named(golden, 's2t_grad')
  return golden


if __name__ == '__main__':
  release_golden_files.run_from_command_line(main, 'SLRT/TwoStreamNetwork')
