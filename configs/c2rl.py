r"""C2RL (Chen, Zhou et al., 2024): gloss-free pretraining, then Sign2Text and sign retrieval.

  pretrain (default)  ResNet-18 + Conv1D + 3-layer encoder with a 3+3-layer text network:
                      ICL (CLCL) + ECL (captioning), the paper's PHOENIX-2014T recipe
  slt                 Sign2Text on the pretrained encoder's features: Linear -> mBART-large-cc25
  slret               retrieval: features -> Linear -> mBART encoder; text -> a second one
  runlocal            pretraining, small, on synthetic_signs (built on first use): minutes on a CPU
  slt,runlocal        Sign2Text from runlocal's workdir (its encoder frozen, run on the frames)
  slret,runlocal      retrieval from runlocal's workdir

  python -m sltjax.main --config=configs/c2rl.py:runlocal
  python -m sltjax.main --config=configs/c2rl.py:slt,runlocal
  python -m sltjax.translate --workdir=workdirs/c2rl_runlocal_slt_synthetic_signs my_video.mp4
  python -m sltjax.main --config=configs/c2rl.py:slret,runlocal
  python -m sltjax.retrieve --workdir=workdirs/c2rl_runlocal_slret_synthetic_signs index \
      --index=my_index videos/
  python -m sltjax.retrieve --workdir=workdirs/c2rl_runlocal_slret_synthetic_signs search \
      --index=my_index "a sentence"

Every variant takes the dataset after it (configs/common.py), e.g.
--config=configs/c2rl.py:slt,dataset=csl_daily.

The PHOENIX-2014T pipeline (build the dataset first: python -m sltjax.data.build --help; convert
and trim mBART-large-cc25: python -m sltjax.convert --help). Pretraining tokenizes text with the
trimmed mBART's tokenizer, so that the downstream stages share it:
  python -m sltjax.main --config=configs/c2rl.py:pretrain --workdir=w/pre \
      --config.data.data_dir=DATA --config.tokenizer.path=pretrained/mbart_phoenix \
      --config.model.backbone_weights=resnet18-f37072fd.pth
  python -m sltjax.main --config=configs/c2rl.py:pretrain --workdir=w/pre \
      --config.data.data_dir=DATA --mode=extract_features
  python -m sltjax.main --config=configs/c2rl.py:slt --workdir=w/slt \
      --config.data.data_dir=DATA --config.data.features_dir=w/pre/features \
      --config.init.visual=w/pre --config.init.mbart=pretrained/mbart_phoenix
  python -m sltjax.main --config=configs/c2rl.py:slret --workdir=w/slret \
      --config.data.data_dir=DATA --config.data.features_dir=w/pre/features \
      --config.init.visual=w/pre --config.init.mbart=pretrained/mbart_phoenix
"""
import ml_collections

from configs import common
from sltjax.experiments import c2rl as c2rl_experiment

VARIANTS = ('pretrain', 'slt', 'slret', 'runlocal', 'runlocal_slt', 'runlocal_slret')
# The pretraining workdir the runlocal downstream variants start from (its default workdir).
RUNLOCAL_PRETRAINING = 'workdirs/c2rl_runlocal_{dataset}'


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  choice = common.parse_argument(arg, VARIANTS, 'pretrain', 'configs/c2rl.py')
  variant, dataset, stage = choice.variant, choice.dataset, choice.word
  c = common.base('c2rl', stage, variant=variant, label_smoothing=0.2)  # label smoothing: ECL and Sign2Text

  # features_dir: downstream, what --mode=extract_features wrote from the pretraining workdir.
  c.data = common.video_data(c2rl_experiment.DATA_RECIPE, dataset)

  # Pretraining and downstream share the trimmed mBART tokenizer (path: its directory; the
  # downstream stages bring it from init.visual's workdir).
  c.tokenizer = common.tokenizer('mbart', dataset)
  # Vocabulary and video sizes for --mode=compile, which reads no dataset (common.shapes).
  c.shapes = common.shapes(dataset, 'mbart')
  c.init = ml_collections.ConfigDict({'visual': '', 'mbart': ''})

  c.model = ml_collections.ConfigDict()
  c.model.input_normalization = 'imagenet'
  # torchvision ResNet-18 (ImageNet) checkpoint, pretraining only; the paper recipe refuses to
  # start without it unless it is 'scratch'.
  c.model.backbone_weights = ''
  c.model.visual = ml_collections.ConfigDict({
      'backbone': 'resnet18', 'backbone_width': 1.0, 'frozen_bn': False, 'bn_momentum': 0.0,
      'conv_kernel': 3, 'd_model': 512, 'layers': 3, 'heads': 8, 'ffn_dim': 2048,
      'dropout': 0.1, 'max_frames': 512, 'dtype': 'float32', 'param_dtype': 'float32'})
  # Pretraining's text encoder and decoder (mBART-shaped, from scratch, width = the visual one).
  c.model.text = common.mbart(
      d_model=512, encoder_layers=3, decoder_layers=3, encoder_attention_heads=8,
      decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
      max_position_embeddings=256, dropout=0.1, attention_dropout=0.0)
  # Downstream mBART: init.mbart's architecture when it is a converted mBART (then only dropout
  # and dtypes apply), else trained from scratch with this one.
  c.model.mbart = common.mbart()

  c.loss = ml_collections.ConfigDict({
      'alpha': 1.0, 'beta': 1.0,  # alpha * ICL + beta * ECL
      'temperature': 0.07,  # CLCL's softmax temperature (fixed, as CiCo)
      'mask_padding': True,  # False: CiCo's padding inside the softmax
      'contrastive_label_smoothing': 0.2,  # C2RL's lineage; CiCo: 0
      'cico_mix': False,  # CiCo's four-term InfoNCE
      # Clips of one sentence in a batch are each other's positives (the papers: negatives).
      'same_sentence_positives': True,
      'text_block': 0,  # > 0: CLCL over that many texts at a time (memory ~ batch x block)
  })

  if stage == 'pretrain':  # SGD 0.9, lr 1e-2 cosine to 0, 200 epochs, global batch 64
    c.batch_size = 64
    c.total_steps = 200 * common.steps_per_epoch(dataset, c.batch_size)
    c.eval_every_steps = 5 * common.steps_per_epoch(dataset, c.batch_size)
    c.optimizer = common.optimizer('sgd', 1e-2, momentum=0.9)
    c.eval = common.evaluation(dataset, best_metric='t2v_r1')
  elif stage == 'slt':  # Adam, mBART 1e-5 and the projection 1e-3, cosine, 80 epochs
    c.batch_size = 128  # 16 per GPU x 8, as the paper's downstream stages
    c.total_steps = 80 * common.steps_per_epoch(dataset, c.batch_size)
    c.eval_every_steps = 2 * common.steps_per_epoch(dataset, c.batch_size)
    c.optimizer = common.optimizer('adam', 1e-3, param_groups={'^translation/': 0.01},
                                   frozen='^visual/')
    c.eval = common.evaluation(dataset, best_metric='bleu4')
  else:  # slret: Adam 1e-4, 80 epochs, batch 16 per GPU x 8
    c.batch_size = 128
    c.total_steps = 80 * common.steps_per_epoch(dataset, c.batch_size)
    c.eval_every_steps = 2 * common.steps_per_epoch(dataset, c.batch_size)
    c.optimizer = common.optimizer('adam', 1e-4, frozen='^visual/')
    c.eval = common.evaluation(dataset, best_metric='t2v_r1')
  c.schedule = common.schedule('cosine')

  if choice.runlocal:  # minutes on a 2-core CPU
    common.runlocal(c, crop_size=48, eval_resize=56, frame_buckets=(16, 24, 32))
    c.tokenizer.kind = 'word'
    c.batch_size = 16
    c.log_every_steps = 25
    c.model.visual.update(backbone_width=0.125, bn_momentum=0.9, d_model=64, layers=1,
                          heads=4, ffn_dim=128, max_frames=64)
    c.model.text.update(**common.LAPTOP_MBART, max_position_embeddings=64)
    c.model.mbart.update(**common.LAPTOP_MBART, max_position_embeddings=64)
    c.eval.update(num_beams=2, max_new_tokens=24)
    c.schedule.warmup_steps = 30
    if stage == 'pretrain':
      c.model.backbone_weights = 'scratch'
      # The contrastive loss takes hold suddenly, after a number of steps that depends on the
      # seed: 800 steps take every seed tried (docs/results.md).
      c.total_steps = 800
      c.optimizer.update(learning_rate=0.05, grad_clip_norm=1.0)
    else:
      c.init.visual = RUNLOCAL_PRETRAINING.format(dataset=dataset)
      c.total_steps = 300
      c.optimizer.update(learning_rate=2e-3, grad_clip_norm=1.0)
      c.optimizer.param_groups = {}  # assigned: update() would merge into the release's groups
    c.eval_every_steps = c.checkpoint_every_steps = c.total_steps // 2
  return c
