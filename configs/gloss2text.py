r"""Gloss2Text: glosses -> spoken language with an mBART-shaped transformer, trained from scratch
(default; runlocal: a small one on synthetic_signs' labels, built on first use) or fine-tuned
from mBART-large-cc25 (pretrained: MMTLB's recipe). The dataset follows the variant
(configs/common.py): PHOENIX-2014T by default, e.g. `:pretrained,dataset=csl_daily` for
CSL-Daily's text files (pass --config.data.path) scored by character.

  python -m sltjax.main --config=configs/gloss2text.py --workdir=workdirs/g2t
  python -m sltjax.main --config=configs/gloss2text.py:runlocal
  python -m sltjax.main --config=configs/gloss2text.py:runlocal,dataset=phoenix2014t
  python -m sltjax.main --config=configs/gloss2text.py:mmtlb,runlocal  (the main job's Gloss2Text:
      configs/mmtlb.py:runlocal's translation network and schedule, on synthetic_signs' labels)
  python -m sltjax.main --config=configs/gloss2text.py --workdir=workdirs/g2t \
      --mode=eval --config.eval.split=dev

Pretrained (download facebook/mbart-large-cc25 first; the corpus files are the dataset's):
  python -m sltjax.convert.trim_vocab --model=mbart-large-cc25 --output=mbart_phoenix \
      --texts=train.de,dev.de --glosses=train.gloss,dev.gloss
  python -m sltjax.convert --model=mbart_phoenix --output=pretrained/mbart_phoenix
  python -m sltjax.main --config=configs/gloss2text.py:pretrained --workdir=workdirs/g2t_mbart \
      --config.init.model=pretrained/mbart_phoenix  # embeddings frozen, as released

data.path holds {split}.gloss and {split}.de, one sentence per line (../shared/data/phoenix2014t
in this project's development setup; any folder laid out the same way works).
"""
import ml_collections

from configs import common

VARIANTS = ('default', 'runlocal', 'pretrained', 'runlocal_mmtlb')
# Where each dataset's text files are ({split}.gloss, {split}.<suffix>); '' = pass data.path.
TEXT_DATA = {'phoenix2014t': ('../shared/data/phoenix2014t', 'de'), 'csl_daily': ('', 'zh')}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, dataset = common.parse_argument(arg, VARIANTS, 'default', 'configs/gloss2text.py')[:2]
  if variant == 'runlocal_mmtlb':
    return runlocal_mmtlb(dataset)
  # batch_size: global, over all devices and processes
  c = common.base('gloss2text', variant=variant, total_steps=3000, batch_size=64, eval_every_steps=1000,
                  label_smoothing=0.1, translation_loss_per='token')

  c.data = ml_collections.ConfigDict()
  if dataset in TEXT_DATA:  # text files
    c.data.corpus = dataset  # names the workdir
    c.data.path, c.data.target_suffix = TEXT_DATA[dataset]
    c.data.source_suffix = 'gloss'
  else:  # the (gloss, text) labels of the built video dataset, built on first use if it can be
    c.data.name = dataset
    c.data.data_dir = 'data'
    c.data.build_if_missing = dataset == 'synthetic_signs'
    c.data.lowercase_gloss = False
  c.data.train_split = 'train'
  c.data.lowercase_source = False
  c.data.length_buckets = (16, 24, 32, 48, 64, 96, 128)  # padded lengths (few XLA programs)
  c.data.num_workers = 0  # grain worker processes (0: load in the main process)

  c.tokenizer = common.tokenizer('word', dataset)

  # Where training starts: a directory written by `python -m sltjax.convert` (pretrained variant)
  # or an earlier Gloss2Text workdir ('': from scratch).
  c.init = ml_collections.ConfigDict({'model': ''})

  c.model = ml_collections.ConfigDict()
  c.model.d_model = 256
  c.model.encoder_layers = 2
  c.model.decoder_layers = 2
  c.model.encoder_attention_heads = 4
  c.model.decoder_attention_heads = 4
  c.model.encoder_ffn_dim = 1024
  c.model.decoder_ffn_dim = 1024
  c.model.max_position_embeddings = 256
  c.model.dropout = 0.3
  c.model.attention_dropout = 0.1
  c.model.activation_dropout = 0.1
  c.model.scale_embedding = True
  c.model.dtype = 'float32'  # compute dtype ('bfloat16' keeps float32 master weights)
  c.model.param_dtype = 'float32'
  c.model.remat = 'none'  # 'none' | 'full' | 'dots': activation rematerialisation per layer

  c.optimizer = common.optimizer('adam', 1e-3, b2=0.998, grad_clip_norm=1.0)
  c.schedule = common.schedule('cosine', warmup_steps=300)
  c.eval = common.evaluation(dataset, batch_size=128, max_new_tokens=64)

  if variant == 'pretrained':  # MMTLB's Gloss2Text recipe (released code)
    # 8 sentences on each of 8 GPUs, each sentence's loss summed over its tokens.
    steps_per_epoch = common.steps_per_epoch(dataset, 64)
    c.total_steps = 80 * steps_per_epoch
    c.batch_size = 64
    c.translation_loss_per = 'sentence'
    c.eval_every_steps = 5 * steps_per_epoch
    c.checkpoint_every_steps = steps_per_epoch
    c.label_smoothing = 0.2
    c.tokenizer.kind = 'mbart'  # path '' = the tokenizer saved with init.model
    c.data.lowercase_source = True  # mBART's pieces for glosses are the lowercased words'
    # The architecture comes from init.model; only these apply on top of it.
    c.model = ml_collections.ConfigDict({
        'dropout': 0.3, 'attention_dropout': 0.1, 'activation_dropout': 0.0,
        'dtype': 'float32', 'param_dtype': 'float32', 'remat': 'none'})
    c.optimizer.learning_rate = 1e-5
    c.optimizer.weight_decay = 1e-3
    c.optimizer.grad_clip_norm = 0.0
    # The release freezes its gloss and text embeddings; sltjax's glosses use the text's.
    c.optimizer.frozen = '^shared/'
    c.schedule.warmup_steps = 0
    c.eval.batch_size = 64
    c.eval.max_new_tokens = 100
  if variant == 'runlocal':  # about two minutes on a 2-core CPU
    c.total_steps = 300
    c.batch_size = 32
    c.log_every_steps = 25
    c.eval_every_steps = 150
    c.checkpoint_every_steps = 150
    c.model.d_model = 64
    c.model.encoder_layers = 1
    c.model.decoder_layers = 1
    c.model.encoder_ffn_dim = 128
    c.model.decoder_ffn_dim = 128
    c.model.dropout = 0.1
    c.optimizer.learning_rate = 3e-3
    c.schedule.warmup_steps = 50
    c.eval.num_beams = 2
  return c


def runlocal_mmtlb(dataset: str) -> ml_collections.ConfigDict:
  """runlocal with configs/mmtlb.py:runlocal's translation network, batch, schedule and decoding,
  on the (gloss, text) labels of its video dataset: the main job's Gloss2Text stage."""
  from configs import mmtlb  # pylint: disable=import-outside-toplevel
  video_config = mmtlb.get_config(f'runlocal,dataset={dataset}')
  c = get_config(f'runlocal,dataset={dataset}')
  c.variant = 'runlocal_mmtlb'
  c.data = ml_collections.ConfigDict({
      key: video_config.data[key] for key in ('name', 'data_dir', 'build_if_missing',
                                              'lowercase_gloss', 'length_buckets')})
  c.data.update(train_split='train', lowercase_source=False, num_workers=0)
  c.tokenizer.src_lang = c.tokenizer.tgt_lang = video_config.tokenizer.tgt_lang
  network = video_config.model.translation
  for key in ('d_model', 'encoder_layers', 'decoder_layers', 'encoder_attention_heads',
              'decoder_attention_heads', 'encoder_ffn_dim', 'decoder_ffn_dim',
              'max_position_embeddings', 'dropout', 'attention_dropout'):
    c.model[key] = network[key]
  for key in ('total_steps', 'batch_size', 'eval_every_steps', 'checkpoint_every_steps'):
    c[key] = video_config[key]
  c.optimizer.learning_rate = video_config.optimizer.learning_rate
  c.schedule.warmup_steps = video_config.schedule.warmup_steps
  c.eval.num_beams = video_config.eval.num_beams
  c.eval.max_new_tokens = video_config.eval.max_new_tokens
  return c
