r"""Laptop-size stand-ins for the pretrained networks Sign2GPT starts from, trained on the
synthetic_signs domain and saved as Hugging Face directories, so that configs/sign2gpt.py's
runlocal variants load them exactly as a user loads facebook/xglm-564M and facebook/dinov2-small:

  xglm/    an XGLM-shaped LM trained by language modelling alone on sentences of the synthetic
           grammar, with a SentencePiece tokenizer trained on them (fairseq ids, as XGLM's):
           a frozen LM that knows the language but has never seen a video
  dinov2/  a DINOv2 trained to tell which gloss a single rendered frame shows (or none), on
           videos rendered for it (the training signers, seeds other than the dataset's)

  python -m sltjax.stand_ins --output_dir=pretrained/synthetic_signs

Deterministic for a seed; a directory already there is kept (each is written whole or not at all).
"""
import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
from absl import app, flags
from flax import nnx

from sltjax.convert.dinov2 import save_dinov2
from sltjax.convert.xglm import save_xglm
from sltjax.data import augmentation, synthetic_signs, video
from sltjax.data.tokenizers import SENTENCEPIECE_FILE, XGLMTokenizer
from sltjax.experiments import sign2gpt
from sltjax.models.backbones.dinov2 import DINOv2, DINOv2Config
from sltjax.models.xglm import XGLM, XGLMConfig

XGLM_DIR, DINOV2_DIR = 'xglm', 'dinov2'
# synthetic_signs' defaults: frames rendered at 112 px; signers 0-5 sign its training split.
RENDER_SIZE, TRAIN_SIGNERS = 112, 6
# synthetic_signs tells glosses apart by hand colour, among other cues: hue jitter is kept small.
SYNTHETIC_HUE_JITTER = 0.02


def train_tokenizer(sentences: list[str], directory: str) -> None:
  """A SentencePiece model in directory/sentencepiece.bpe.model (XGLM's file, which sltjax
  reads; of whole words: the grammar has a few dozen) and, when transformers is installed, the
  same vocabulary as its tokenizer.json (fairseq ids: 4 specials, the pieces after
  SentencePiece's own 3, then XGLM's <madeupword>s), for AutoTokenizer."""
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_prefix=os.path.join(directory, 'sentencepiece.bpe'),
      vocab_size=1000, model_type='word', hard_vocab_limit=False, character_coverage=1.0,
      unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
      minloglevel=2, num_threads=1)
  try:
    from transformers import XGLMTokenizer as HFXGLMTokenizer  # pylint: disable=import-outside-toplevel
  except ImportError:
    return
  proto = sentencepiece_model_pb2.ModelProto()
  with open(os.path.join(directory, SENTENCEPIECE_FILE), 'rb') as f:
    proto.ParseFromString(f.read())
  vocab = ([(token, 0.0) for token in ('<s>', '<pad>', '</s>', '<unk>')]
           + [(p.piece, p.score) for p in proto.pieces[3:]])
  HFXGLMTokenizer(vocab=vocab).save_pretrained(directory)


def _fit(model: nnx.Module, loss_fn, batches, learning_rate: float, seed: int) -> float:
  """AdamW with warm-up and cosine decay over `batches` (tuples of arrays); the last loss."""
  steps = len(batches)
  schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, steps // 10, steps)
  optimizer = nnx.Optimizer(model, optax.adamw(schedule, weight_decay=0.01), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, key, *batch):
    loss, grads = nnx.value_and_grad(loss_fn)(model, nnx.Rngs(dropout=key), *batch)
    optimizer.update(model, grads)
    return loss

  root = jax.random.key(seed)
  loss = float('nan')
  for i, batch in enumerate(batches):
    loss = step(model, optimizer, jax.random.fold_in(root, i), *batch)
  return float(loss)


def train_xglm(output: str, *, seed: int = 0, sentences: int = 4000, steps: int = 600,
               batch_size: int = 32, d_model: int = 128, num_layers: int = 2) -> float:
  """Trains and saves the XGLM stand-in; returns its last training loss (nats per token)."""
  rng = np.random.default_rng([seed, 101])
  texts = [synthetic_signs.sample_sentence(rng)[1] for _ in range(sentences)]
  with tempfile.TemporaryDirectory() as scratch:
    train_tokenizer(texts, scratch)
    tokenizer = XGLMTokenizer(scratch)
    rows = [[tokenizer.eos_id] + tokenizer.encode(t) + [tokenizer.eos_id] for t in texts]
    length = max(map(len, rows))
    ids = np.full((len(rows), length), tokenizer.pad_id, np.int32)
    for i, row in enumerate(rows):
      ids[i, :len(row)] = row
    cfg = XGLMConfig(vocab_size=tokenizer.vocab_size, d_model=d_model, num_layers=num_layers,
                     attention_heads=4, ffn_dim=4 * d_model, max_position_embeddings=128,
                     dropout=0.1, attention_dropout=0.0)
    model = XGLM(cfg, rngs=nnx.Rngs(seed))

    def loss_fn(model, rngs, batch):  # next-token cross entropy over the real tokens
      logits = model(batch[:, :-1], (batch[:, :-1] != tokenizer.pad_id).astype(jnp.int32),
                     rngs=rngs)
      weights = (batch[:, 1:] != tokenizer.pad_id).astype(jnp.float32)
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:])
      return jnp.sum(losses * weights) / jnp.sum(weights)

    order = np.random.default_rng([seed, 102])
    batches = [(jnp.asarray(ids[order.choice(len(ids), batch_size, replace=False)]),)
               for _ in range(steps)]
    loss = _fit(model, loss_fn, batches, 3e-3, seed)
    save_xglm(model, output, scratch)
  return loss


class FrameClassifier(nnx.Module):
  """DINOv2 -> its CLS feature -> Linear: which gloss a frame shows (the last class: none)."""

  def __init__(self, cfg: DINOv2Config, classes: int, *, rngs: nnx.Rngs):
    self.dinov2 = DINOv2(cfg, rngs=rngs)
    self.head = nnx.Linear(cfg.hidden_size, classes, rngs=rngs)

  def __call__(self, images):  # [batch, H, W, 3] normalised -> [batch, classes]
    return self.head(self.dinov2.images(images)[:, 0])


def labelled_frames(seed: int, videos: int, crop_size: int, resize: int):
  """(frames [n, crop, crop, 3] uint8, labels [n]: a GLOSSES index, len(GLOSSES) for none) of
  `videos` rendered videos, each augmented as Sign2GPT's training clips are."""
  rng = np.random.default_rng([seed, 201])
  aug = video.default_config()
  aug.update(**{**sign2gpt.DATA_RECIPE, 'hue': SYNTHETIC_HUE_JITTER}, crop_size=crop_size,
             eval_resize=resize)
  frames, labels = [], []
  for _ in range(videos):
    glosses, _ = synthetic_signs.sample_sentence(rng)
    clip, names = synthetic_signs.render_labelled(
        glosses, int(rng.integers(2**31)), int(rng.integers(TRAIN_SIGNERS)), RENDER_SIZE)
    transform = augmentation.draw_clip_transform(RENDER_SIZE, RENDER_SIZE, rng, aug, True)
    frames += [augmentation.apply(f, transform, crop_size) for f in clip]
    labels += [len(synthetic_signs.GLOSSES) if n is None else synthetic_signs.GLOSSES.index(n)
               for n in names]
  return np.stack(frames), np.array(labels, np.int32)


def train_dinov2(output: str, *, seed: int = 0, videos: int = 300, steps: int = 1500,
                 batch_size: int = 64, crop_size: int = 56, resize: int = 64,
                 hidden_size: int = 64, num_layers: int = 4) -> dict[str, float]:
  """Trains and saves the DINOv2 stand-in; returns its last training loss, its accuracy on
  frames of videos it did not see and the accuracy of always answering the commonest class."""
  frames, labels = labelled_frames(seed, videos, crop_size, resize)
  held_out, held_out_labels = labelled_frames(seed + 1000, 30, crop_size, resize)
  cfg = DINOv2Config(hidden_size=hidden_size, num_layers=num_layers, num_heads=2,
                     image_size=crop_size)
  model = FrameClassifier(cfg, len(synthetic_signs.GLOSSES) + 1, rngs=nnx.Rngs(seed))
  normalize = lambda x: augmentation.normalize(x, 'imagenet')

  def loss_fn(model, rngs, images, batch_labels):  # pylint: disable=unused-argument
    logits = model(images)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch_labels))

  order = np.random.default_rng([seed, 202])
  batches = []
  for _ in range(steps):
    rows = order.choice(len(frames), batch_size, replace=False)
    batches.append((jnp.asarray(normalize(frames[rows])), jnp.asarray(labels[rows])))
  loss = _fit(model, loss_fn, batches, 1e-3, seed)
  predicted = np.concatenate([np.argmax(model(jnp.asarray(normalize(held_out[i:i + 256]))), -1)
                              for i in range(0, len(held_out), 256)])
  save_dinov2(model.dinov2, output)
  return {'dinov2_train_loss': loss,
          'dinov2_held_out_accuracy': float(np.mean(predicted == held_out_labels)),
          'dinov2_commonest_class_accuracy': float(np.max(np.bincount(held_out_labels)) /
                                                   len(held_out_labels))}


def build(output_dir: str, seed: int = 0) -> dict[str, float]:
  """Writes output_dir/xglm and output_dir/dinov2 where missing; returns what training reached
  (written to output_dir/stand_ins.json)."""
  os.makedirs(output_dir, exist_ok=True)
  report_file = os.path.join(output_dir, 'stand_ins.json')
  report = {}
  if os.path.isfile(report_file):
    with open(report_file, encoding='utf-8') as f:
      report = json.load(f)
  if not os.path.isdir(os.path.join(output_dir, XGLM_DIR)):
    report['xglm_train_loss'] = train_xglm(os.path.join(output_dir, XGLM_DIR), seed=seed)
  if not os.path.isdir(os.path.join(output_dir, DINOV2_DIR)):
    report.update(train_dinov2(os.path.join(output_dir, DINOV2_DIR), seed=seed))
  with open(report_file, 'w', encoding='utf-8') as f:
    json.dump(report, f, indent=1)
  return report


_OUTPUT_DIR = flags.DEFINE_string('output_dir', 'pretrained/synthetic_signs',
                                  'Where xglm/ and dinov2/ are written.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the sentences, videos and training.')


def main(argv):
  del argv
  for name, value in build(_OUTPUT_DIR.value, _SEED.value).items():
    print(f'{name}: {value:.4f}')


if __name__ == '__main__':
  app.run(main)
