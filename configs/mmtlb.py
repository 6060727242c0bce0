r"""MMTLB (Chen et al., CVPR 2022) on a built video dataset, one variant per stage.

  runlocal             a small Sign2Text model trained end to end from scratch on synthetic_signs
                       (built on first use under data/), minutes on a laptop CPU
  sign2gloss,runlocal  the same data and backbone, Sign2Gloss only, trained on CTC and on each
                       frame's gloss (which synthetic_signs records)
  staged,runlocal      runlocal started as MMTLB starts Sign2Text, from sign2gloss,runlocal's
                       workdir and the Gloss2Text stage's (configs/gloss2text.py:mmtlb,runlocal),
                       backbone frozen: the README's main job
  sign2gloss           S3D + head, CTC (PHOENIX-2014T recipe); scored by WER
  sign2gloss2text      --mode=eval only: a Sign2Gloss workdir's glosses -> a Gloss2Text workdir
  sign2text (default)  S3D + head + V-L mapper + mBART, CTC + CE, from the two stages above
  sign2text_features   the release's Sign2Text: head + mapper + mBART on frozen S3D features that
                       --mode=extract_features wrote from the Sign2Gloss workdir

  python -m sltjax.main --config=configs/mmtlb.py:sign2gloss,runlocal
  python -m sltjax.main --config=configs/gloss2text.py:mmtlb,runlocal
  python -m sltjax.main --config=configs/mmtlb.py:staged,runlocal
  python -m sltjax.translate --workdir=workdirs/mmtlb_runlocal_staged_synthetic_signs my_video.mp4

Every variant takes the dataset after it (configs/common.py; default phoenix2014t, runlocal
variants synthetic_signs), e.g. --config=configs/mmtlb.py:sign2text,dataset=csl_daily: CSL-Daily
scores Chinese by character and maps gloss probabilities (model.mapper='gloss_probs') through rows
started from the glosses' mBART embeddings.

The PHOENIX-2014T pipeline (build the dataset first: python -m sltjax.data.build --help):
  python -m sltjax.main --config=configs/mmtlb.py:sign2gloss --workdir=w/s2g \
      --config.data.data_dir=DATA --config.model.backbone_weights=s3d_kinetics_wlasl.pth
  python -m sltjax.main --config=configs/gloss2text.py:pretrained --workdir=w/g2t \
      --config.init.model=pretrained/mbart_phoenix
  python -m sltjax.main --config=configs/mmtlb.py:sign2gloss2text --workdir=w/s2g2t --mode=eval \
      --config.data.data_dir=DATA --config.init.visual=w/s2g --config.init.translation=w/g2t
  python -m sltjax.main --config=configs/mmtlb.py:sign2text --workdir=w/s2t \
      --config.data.data_dir=DATA --config.init.visual=w/s2g --config.init.translation=w/g2t
Or, as released, Sign2Text on frozen features of the Sign2Gloss S3D (written to w/s2g/features):
  python -m sltjax.main --config=configs/mmtlb.py:sign2gloss --workdir=w/s2g \
      --mode=extract_features --config.data.data_dir=DATA
  python -m sltjax.main --config=configs/mmtlb.py:sign2text_features --workdir=w/s2t_f \
      --config.data.features_dir=w/s2g/features --config.init.visual=w/s2g \
      --config.init.translation=w/g2t
"""
import ml_collections

from configs import common
from sltjax.experiments import mmtlb as mmtlb_experiment

VARIANTS = ('sign2text', 'sign2text_features', 'sign2gloss', 'sign2gloss2text', 'runlocal',
            'runlocal_sign2gloss', 'runlocal_staged')
# The Gloss2Text stage is its own system's config (configs/gloss2text.py).
MOVED = {'gloss2text': 'configs/gloss2text.py:pretrained',
         'runlocal_gloss2text': 'configs/gloss2text.py:mmtlb,runlocal'}
# Where runlocal_staged finds its two earlier stages: their default workdirs
# (sltjax/workdirs.py: workdirs/<config>_<variant>_<dataset>).
RUNLOCAL_STAGE_WORKDIRS = {'visual': 'workdirs/mmtlb_runlocal_sign2gloss_{dataset}',
                           'translation': 'workdirs/gloss2text_runlocal_mmtlb_{dataset}'}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  common.refuse_moved(arg, MOVED, 'configs/mmtlb.py')
  choice = common.parse_argument(arg, VARIANTS, 'sign2text', 'configs/mmtlb.py')
  variant, dataset = choice.variant, choice.dataset
  # sign2text_features and staged are Sign2Text recipes.
  stage = choice.word if choice.word in ('sign2gloss', 'sign2gloss2text') else 'sign2text'
  epoch = common.steps_per_epoch(dataset, 8)
  c = common.base('mmtlb', stage, variant=variant, total_steps=40 * epoch, batch_size=8,
                  eval_every_steps=2 * epoch, label_smoothing=0.2,
                  # The release sums CTC and cross entropy over each sentence and divides both
                  # by the batch ('token': the cross entropy per target token).
                  translation_loss_per='sentence')

  # features_dir: with backbone='features', a dataset written by --mode=extract_features.
  c.data = common.video_data(mmtlb_experiment.DATA_RECIPE, dataset,
                             # Gloss2Text inputs (sign2gloss2text): mBART's lowercase pieces
                             lowercase_source=True)

  c.tokenizer = common.tokenizer('mbart', dataset)  # path '' = init.translation's tokenizer
  # Vocabulary and video sizes for --mode=compile, which reads no dataset (common.shapes).
  c.shapes = common.shapes(dataset, 'mbart')

  c.init = ml_collections.ConfigDict({'visual': '', 'translation': ''})

  c.model = ml_collections.ConfigDict()
  c.model.backbone = 's3d'  # a registered backbone (sltjax/models/backbones/registry.py)
  c.model.backbone_width = 1.0
  # S3D / ResNet checkpoint (Kinetics, WLASL; the release's or torchvision's naming); the paper
  # variants refuse to start without it unless it is 'scratch'.
  c.model.backbone_weights = ''
  c.model.feature_dim = 832
  c.model.frozen_bn = False
  # The release's frozen S3D block 0 (freeze_block=1): its BatchNorms run in inference mode, and
  # optimizer.frozen below keeps its weights; runlocal trains it.
  c.model.backbone_frozen_layers = 1
  # Backbone BatchNorm running-statistics momentum, Flax convention; 0: the released value (S3D
  # 0.999, i.e. PyTorch 0.001, which barely moves in a short run from scratch; ResNet 0.9).
  c.model.bn_momentum = 0.0
  c.model.input_normalization = 'minus_one_one'  # the release feeds BGR in [-1, 1]
  c.model.head_dim = 512
  c.model.head_ffn_dim = 2048
  c.model.head_kernel = 3
  c.model.head_dropout = 0.1
  # 'mlp' (PHOENIX) | 'gloss_probs' (CSL-Daily: a bias-free Linear over gloss probabilities,
  # its rows started from the glosses' mBART embeddings of init.translation when
  # mapper_init='gloss_embeddings')
  c.model.mapper = 'gloss_probs' if dataset == 'csl_daily' else 'mlp'
  c.model.mapper_init = 'gloss_embeddings' if dataset == 'csl_daily' else ''
  c.model.mapper_hidden = 1024
  # What follows the mapped frames: 'text' (the text embedding's </s> and tokenizer.src_lang) or
  # 'own' (two vectors of its own: the release's gloss-embedding rows of </s> and de_DGS, which
  # python -m sltjax.convert.release sets for a released Sign2Text checkpoint).
  c.model.suffix = 'text'
  c.model.dtype = 'float32'
  c.model.param_dtype = 'float32'
  # From scratch unless init.translation is a converted mBART (then only dropout/dtypes apply).
  c.model.translation = common.mbart()

  # frame_gloss_weight (not MMTLB's): cross entropy of the gloss logits against each frame's
  # gloss, for data that labels its frames (data.frame_glosses; synthetic_signs).
  c.loss = ml_collections.ConfigDict({'ctc_weight': 1.0, 'translation_weight': 1.0,
                                      'frame_gloss_weight': 0.0})

  # The release: head/mapper at 1e-3, mBART at 1e-5; S3D block 0 frozen.
  c.optimizer = common.optimizer('adam', 1e-3, b2=0.998, weight_decay=1e-3,
                                 param_groups={'^translation/': 0.01},
                                 frozen='^backbone/features/0/')
  c.schedule = common.schedule('cosine')
  c.eval = common.evaluation(dataset, ctc_beam_size=5,
                             best_metric='wer' if c.stage == 'sign2gloss' else 'bleu4')

  if variant == 'sign2text_features':  # frame_buckets then bucket the feature lengths T/4
    c.model.backbone = 'features'
    c.optimizer.frozen = ''
  if c.stage == 'sign2gloss':
    c.optimizer.param_groups = {}
    c.eval.ctc_beam_size = 1  # the release validates greedily; test with beam 5
  if choice.runlocal:  # minutes on a 2-core CPU
    # 48 px: S3D steps take half the time they take at 64 px, and learn as fast
    # (docs/systems/mmtlb.md). 32 frames, evenly spaced (3-5 per sign), in one compiled shape.
    # No colour jitter: hue jitter would move the marker colours that name glosses.
    common.runlocal(c, crop_size=48, eval_resize=48, frame_buckets=(32,), max_frames=32,
                    lowercase_source=False, colour_jitter_prob=0.0)
    c.tokenizer.kind = 'word'
    c.total_steps = 400
    c.eval_every_steps = c.checkpoint_every_steps = 200
    c.model.backbone_width = 0.125
    c.model.bn_momentum = 0.9  # from scratch: running statistics must follow within the run
    c.model.head_dim = 64
    c.model.head_ffn_dim = 128
    c.model.mapper_hidden = 128
    c.model.translation.update(**common.LAPTOP_MBART, max_position_embeddings=128)
    c.optimizer.update(learning_rate=2e-3, weight_decay=0.0, grad_clip_norm=1.0, frozen='')
    c.model.backbone_frozen_layers = 0
    c.model.backbone_weights = 'scratch'
    c.translation_loss_per = 'token'  # the laptop recipe's rates were chosen with it
    # From scratch, mBART learns at the full rate. Assigned, not update()d: ConfigDict.update
    # merges a dict into the existing one, which would keep the release's '^translation/': 0.01.
    c.optimizer.param_groups = {}
    c.schedule.warmup_steps = 50
    c.eval.update(num_beams=2, max_new_tokens=24, ctc_beam_size=2)
  if variant == 'runlocal_sign2gloss':  # the main job's first stage, most of its time
    # Each frame's gloss (the renderer knows it) trains the gloss logits beside CTC, which lets
    # the visual network learn at 2.5x the rate; the rate rises over 200 steps, which takes CTC
    # out of its blank phase early on every seed tried (the measurements: docs/results.md).
    c.data.frame_glosses = True
    c.loss.frame_gloss_weight = 1.0
    c.optimizer.learning_rate = 5e-3
    c.schedule.warmup_steps = 200
    c.total_steps = 900
    c.eval_every_steps = c.checkpoint_every_steps = 300
  if variant == 'runlocal_staged':
    # As the release trains Sign2Text on frozen S3D features: the backbone from Sign2Gloss stays
    # fixed (no backward pass through it: several times faster steps), head and translation train.
    c.init.update({name: path.format(dataset=dataset)
                   for name, path in RUNLOCAL_STAGE_WORKDIRS.items()})
    c.optimizer.frozen = '^backbone/'
    c.total_steps = 300
    c.eval_every_steps = c.checkpoint_every_steps = 150
  return c
