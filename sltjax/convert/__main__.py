r"""Converts a Hugging Face mBART directory into an sltjax pretrained directory.

  python -m sltjax.convert --model=mbart-trimmed --output=pretrained/mbart_phoenix [--dtype=bfloat16]

then train from it with `--config.init.model=pretrained/mbart_phoenix` (see
configs/gloss2text.py:pretrained). Trim the vocabulary first with `python -m sltjax.convert.trim_vocab`.
"""
from absl import app, flags

from sltjax import storage
from sltjax.convert.hf import load_mbart
from sltjax.convert.pretrained import save_pretrained
from sltjax.errors import UserError, exit_with_user_error

_MODEL = flags.DEFINE_string('model', None, 'Hugging Face mBART directory (config.json + weights; '
                             'gs:// is read through a local copy).')
_TOKENIZER = flags.DEFINE_string('tokenizer', None, 'Directory with sentencepiece.bpe.model '
                                 '(default: --model).')
_OUTPUT = flags.DEFINE_string('output', None, 'sltjax pretrained directory to write (local or '
                              'gs://).')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Storage dtype.')
flags.mark_flags_as_required(['model', 'output'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    model = load_mbart(storage.local_copy(_MODEL.value), dtype=_DTYPE.value)
    save_pretrained(model, _OUTPUT.value, _TOKENIZER.value or _MODEL.value)
  except UserError as e:
    exit_with_user_error(str(e))
  print(f'Wrote {_OUTPUT.value} (vocabulary {model.config.vocab_size}, d_model '
        f'{model.config.d_model}, {model.config.encoder_layers}+{model.config.decoder_layers} '
        'layers).')


if __name__ == '__main__':
  app.run(main)
