"""GFSLT-VLP's visual-language pretraining on a built video dataset (configs/gfslt.py):
the CLIP loss (its release's KL form) between the video and sentence embeddings plus
loss_lambda times the masked self-supervised text decoder's loss (sltjax/models/systems/
gfslt.py); scored by sign retrieval on the embeddings' cosine similarity, so
`python -m sltjax.retrieve` ranks videos and sentences with a trained workdir.
"""
import jax.numpy as jnp

from sltjax import experiments
from sltjax.convert import pretrained
from sltjax.data.tokenizers import UNK_ID
from sltjax.errors import UserError
from sltjax.experiments.retrieval import RetrievalExperiment, same_sentence
from sltjax.experiments.video import TOKENIZER_DIR
from sltjax.experiments.warm_start import WarmStart
from sltjax.losses import clip_kl_loss, l2_normalize, mean_cross_entropy
from sltjax.models.mbart import MBartConfig
from sltjax.models.systems.gfslt import (VisualConfig, VisualLanguagePretraining,
                                         mask_last_words)

# The release's frames (../shared/docs/REFERENCE.md; its datasets.py): every frame (at most 300),
# resized to 256 and cropped to 224 (random at train, centre at test), ImageNet statistics.
DATA_RECIPE = dict(sampling='all', max_frames=300, eval_resize=256, random_crop='fixed',
                   normalization='imagenet')


def pretraining_losses(model, frames, frame_mask, text_ids, text_mask, masked_ids,
                       decoder_input_ids, label_weights, positives, *, label_smoothing: float,
                       rngs=None):
  """GFSLT-VLP's two losses on a batch whose masked text is drawn: (the CLIP loss, the masked
  decoder's label-smoothed cross entropy per token, its tokens).

  frames [B, T, H, W, 3] normalised (or features [B, T, C]), frame_mask [B, T]; text_ids
  `X </s> lang` [B, L] (text_mask [B, L]), also the decoder's labels (label_weights [B, L]);
  masked_ids [B, L]: the text with its last tokens masked; decoder_input_ids [B, L];
  positives [B, B]: 1 where a video shows a text's sentence.
  """
  video = l2_normalize(model.visual(frames, frame_mask, rngs))  # [B, d]
  sentence, _ = model.encode_text(text_ids, text_mask, rngs)
  scores = video @ l2_normalize(sentence).T  # [videos, texts] cosine similarities
  clip = clip_kl_loss(scores, positives, model.logit_scale[...])
  logits = model.masked_text_logits(masked_ids, text_mask, decoder_input_ids, rngs)
  decoding, tokens = mean_cross_entropy(logits, text_ids, label_weights, label_smoothing)
  return clip, decoding, tokens


@experiments.register('gfslt')
class GFSLTPretraining(RetrievalExperiment):
  """Gloss-free visual-language pretraining (GFSLT-VLP's first stage)."""

  BACKBONE_START = ("ImageNet weights (torchvision's resnet18-f37072fd.pth, "
                    'https://download.pytorch.org/models/resnet18-f37072fd.pth)')

  REQUIRED_KEYS = RetrievalExperiment.REQUIRED_KEYS + ('model.visual', 'model.text',
                                                       'model.decoder', 'loss')

  @classmethod
  def warm_starts(cls, config) -> dict[str, WarmStart]:
    """init.mbart: a converted mBART's encoder (its decoder is left out) and its tokenizer."""
    return {'mbart': WarmStart(prefixes=(('text',),), files=(TOKENIZER_DIR,))}

  def __init__(self, config, workdir: str):
    super().__init__(config, workdir)
    m = config.model
    self.visual_config = VisualConfig(**m.visual.to_dict())
    vocabulary = {'vocab_size': self.tokenizer.vocab_size, 'pad_token_id': self.tokenizer.pad_id}
    encoder = MBartConfig.from_dict({**m.visual_encoder.to_dict(), 'vocab_size': 1})
    text = pretrained.mbart_config(config.init.get('mbart'), m.text.to_dict(),
                                   self.tokenizer.vocab_size, self.tokenizer.pad_id)
    if text.vocab_size != self.tokenizer.vocab_size:
      raise UserError(f'init.mbart has {text.vocab_size} ids but the tokenizer has '
                      f'{self.tokenizer.vocab_size}: use the tokenizer converted with it '
                      '(leave config.tokenizer.path empty).')
    decoder = MBartConfig.from_dict({**m.decoder.to_dict(), **vocabulary})
    self.set_model(lambda rngs: VisualLanguagePretraining(self.visual_config, encoder, text,
                                                          decoder, rngs=rngs))

  def model_summary(self) -> str:
    return f'GFSLT-VLP pretraining on {self.visual_config.backbone}'

  def converted_parts(self):
    """The backbone from model.backbone_weights (torchvision ResNet, ImageNet)."""
    return self.converted_backbone(('visual', 'backbone'), self.visual_config.backbone,
                                   self.visual_config.backbone_options)

  @property
  def mask_id(self) -> int:
    """The id that hides a masked token: the tokenizer's <mask> (mBART's), else <unk>."""
    return getattr(self.tokenizer, 'mask_id', UNK_ID)

  def loss(self, model, batch, rngs):
    cfg = self.config.loss
    frames, frame_mask = self.model_inputs(batch)
    text_ids, text_mask = self.text_inputs(batch['labels'])
    positives = (same_sentence(text_ids) if cfg.same_sentence_positives
                 else jnp.eye(len(text_ids)))
    masked = mask_last_words(text_ids, text_mask, rngs.dropout(), rate=cfg.mask_rate,
                             mask_id=self.mask_id)
    clip, decoding, tokens = pretraining_losses(
        model, frames, frame_mask, text_ids, text_mask, masked, batch['decoder_input_ids'],
        batch['label_weights'], positives, label_smoothing=self.config.label_smoothing,
        rngs=rngs)
    return clip + cfg.loss_lambda * decoding, {
        'frames': jnp.sum(batch['frame_mask']).astype(jnp.float32), 'tokens': tokens,
        'clip': clip, 'masked_lm': decoding, 'logit_scale': model.logit_scale[...]}

  # ------------------------------------------------------------------ retrieval
  def encode_video(self, model, inputs, mask):
    """The unit video embedding as one position: ([B, 1, d], [B, 1])."""
    video = l2_normalize(model.visual(inputs, mask))[:, None]
    return video, jnp.ones(video.shape[:2], jnp.int32)

  def encode_text(self, model, text_ids, text_mask):
    """The unit sentence embedding as one position, [B, 1, d]."""
    return l2_normalize(model.encode_text(text_ids, text_mask)[0])[:, None]

  def pair_scores(self, video, video_mask, text, text_mask):
    """Cosine similarity of the embeddings (both directions score alike)."""
    del video_mask, text_mask
    scores = video[:, 0] @ text[:, 0].T
    return scores, scores
