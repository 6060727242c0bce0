r"""GFSLT-VLP (Zhou et al., ICCV 2023): gloss-free visual-language pretraining of a sign encoder
against a text encoder (CLIP loss) with a masked self-supervised text decoder.

  pretrain (default)  ResNet-18 + TemporalConv + CLS + a 3-layer mBART-shaped encoder (d 1024);
                      the text encoder of mBART-large-cc25 (init.mbart: a converted, trimmed one);
                      a 3-layer text decoder; SGD 0.01, momentum 0.9, 80 epochs, batch 16
  runlocal            the same objective, small, on synthetic_signs (built on first use)

  python -m sltjax.main --config=configs/gfslt.py:runlocal
  python -m sltjax.retrieve --workdir=workdirs/gfslt_runlocal_synthetic_signs index \
      --index=my_index videos/

Every variant takes the dataset after it (configs/common.py), e.g. :pretrain,dataset=csl_daily.
On PHOENIX-2014T (build the dataset and convert the trimmed mBART first, as for configs/c2rl.py):
  python -m sltjax.main --config=configs/gfslt.py --workdir=w/vlp --config.data.data_dir=DATA \
      --config.init.mbart=pretrained/mbart_phoenix \
      --config.model.backbone_weights=resnet18-f37072fd.pth
"""
import ml_collections

from configs import common
from sltjax.experiments import gfslt as gfslt_experiment

VARIANTS = ('pretrain', 'runlocal')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, dataset = common.parse_argument(arg, VARIANTS, 'pretrain', 'configs/gfslt.py')[:2]
  c = common.base('gfslt', variant=variant, label_smoothing=0.2)  # the masked decoder's loss
  c.data = common.video_data(gfslt_experiment.DATA_RECIPE, dataset)
  c.tokenizer = common.tokenizer('mbart', dataset)  # path '' = the one init.mbart brings
  c.shapes = common.shapes(dataset, 'mbart')  # for --mode=compile, which reads no dataset
  c.init = ml_collections.ConfigDict({'mbart': ''})  # a converted mBART: the text encoder

  c.model = ml_collections.ConfigDict()
  c.model.input_normalization = 'imagenet'
  # torchvision ResNet-18 (ImageNet) checkpoint; the paper recipe refuses to start without it
  # unless it is 'scratch'.
  c.model.backbone_weights = ''
  c.model.visual = ml_collections.ConfigDict({
      'backbone': 'resnet18', 'backbone_width': 1.0, 'frozen_bn': False, 'bn_momentum': 0.0,
      'conv_kernel': 5, 'conv_blocks': 2, 'dtype': 'float32', 'param_dtype': 'float32',
      # The release's collate: 8 copies of a clip's first frame before it, its last frame
      # after, to ceil(n / 4) * 4 + 16 frames.
      'pad_clip_edges': True})
  # The release's "mytran": mBART-shaped, 3 layers, 8 heads, from scratch.
  heads = dict(encoder_attention_heads=8, decoder_attention_heads=8, dropout=0.1,
               attention_dropout=0.0)
  c.model.visual_encoder = common.mbart(encoder_layers=3, decoder_layers=0, **heads)
  # mBART-large-cc25's encoder (init.mbart's architecture when set; then only dropout and dtypes
  # of this block apply), and the masked-text decoder of the small shape.
  c.model.text = common.mbart(decoder_layers=0, dropout=0.1)
  c.model.decoder = common.mbart(encoder_layers=0, decoder_layers=3, **heads)

  c.loss = ml_collections.ConfigDict({
      'loss_lambda': 1.0,  # weight of the masked decoder's loss
      'mask_rate': 0.15,  # up to this fraction of a sentence's last tokens masked
      # Clips of one sentence in a batch are each other's positives (the release: negatives).
      'same_sentence_positives': False,
  })
  c.batch_size = 16  # 4 per GPU x 4
  c.total_steps = 80 * common.steps_per_epoch(dataset, c.batch_size)
  c.eval_every_steps = 5 * common.steps_per_epoch(dataset, c.batch_size)
  c.optimizer = common.optimizer('sgd', 1e-2, momentum=0.9)
  c.schedule = common.schedule('cosine')
  c.eval = common.evaluation(dataset, best_metric='t2v_r1')

  if variant == 'runlocal':  # minutes on a 2-core CPU
    common.runlocal(c, crop_size=48, eval_resize=56, frame_buckets=(16, 24, 32))
    c.tokenizer.kind = 'word'
    c.model.backbone_weights = 'scratch'
    c.batch_size = 16
    c.log_every_steps = 25
    # Without the release's edge padding: on these 16-32-frame clips it adds 16-19 copies of a
    # clip's first and last frames, and in 900 steps the CLIP loss stayed at ln(batch) (dev T2V
    # R@1 0.0), where without it the loss fell to 1.8 by step 250 (docs/systems/gfslt.md).
    c.model.visual.update(backbone_width=0.125, bn_momentum=0.9, pad_clip_edges=False)
    for block in (c.model.visual_encoder, c.model.text, c.model.decoder):
      layers = {key: min(block[key], 1) for key in ('encoder_layers', 'decoder_layers')}
      block.update(**common.LAPTOP_MBART, max_position_embeddings=64)
      block.update(layers)
    c.loss.same_sentence_positives = True  # synthetic_signs repeats sentences
    # Adam: at this size the release's SGD (tried at 0.05) lets the embeddings collapse, the
    # logit scale falling and the CLIP loss staying at ln(batch) (docs/systems/gfslt.md).
    c.optimizer = common.optimizer('adam', 1e-3, grad_clip_norm=1.0)
    c.total_steps = 900
    c.schedule.warmup_steps = 30
    c.eval_every_steps = c.checkpoint_every_steps = c.total_steps // 3
  return c
