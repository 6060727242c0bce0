r"""A checkpoint written by MMTLB's released code, with the vocabulary files the release ships and
the release's own translations of a batch, for tests/test_release_converter.py
(python -m sltjax.convert.release).

Release: https://github.com/FangyunWei/SLRT, commit 38a4f7b00da7a858d59b7fabe5093876a84db8e0,
folder TwoStreamNetwork. Regenerate where that folder and torch + transformers are present:

  python tests/mmtlb_release_checkpoint.py /path/to/SLRT/TwoStreamNetwork

It builds the release's SignLanguageModel for Sign2Text (task S2T, as its
phoenix-2014t_s2t.yaml, at a small width) and saves it as the release's training.py does
(`{'model_state', 'optimizer_state', 'scheduler_state', ...}`), into
tests/mmtlb_release_checkpoint/:
  s2t.ckpt              the checkpoint (random weights)
  gloss2ids_old.pkl     the release's own recognition vocabulary (data/phoenix-2014t/, 1,094
                        glosses; copied as shipped)
  mBart_de/             the pruned mBART folder as the release's utils/prune_embedding.ipynb
                        makes it: config.json, the whole SentencePiece model (here a small
                        unigram one trained on sltjax's synthetic German, standing in for
                        mBART's), map_ids.pkl (tokenizer.json's added tokens first, then every
                        piece of the corpus texts and lowercased glosses) and gloss2ids.pkl
  golden.npz            a batch of S3D-width features, the release's gloss logits, its beam-5
                        translations (prediction.py's generate_cfg) and its tokenizer's labels
"""
import contextlib
import json
import logging
import pathlib
import pickle
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from sltjax.data.tokenizers import MBART_CC25_LANGUAGE_CODES  # pylint: disable=wrong-import-position
from tests import release_golden_files  # pylint: disable=wrong-import-position
from tests.mmtlb_release_golden import (RELEASE_COMMIT,  # pylint: disable=wrong-import-position
                                        _stub_logging_imports)

FOLDER = pathlib.Path(__file__).with_name('mmtlb_release_checkpoint')
FEATURES, HIDDEN, FF, FRAMES = 832, 32, 64, 12  # S3D's output width; the head's sizes
MBART = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
             decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
             max_position_embeddings=128, scale_embedding=True)
GENERATE = dict(num_beams=5, max_length=100, length_penalty=1)  # the release's test config
SENTENCES = 3  # rows of the batch
EOS_BIAS = 3.0
EMB = 0.1  # the random weights' scales: embeddings, other matrices
MAT = 0.15
PRUNED_ON = 20  # the pairs whose pieces the pruned vocabulary keeps (the release: every split)


def corpus() -> list[tuple[str, str]]:
  """(glosses, German sentence) pairs of sltjax's synthetic weather corpus."""
  from sltjax.data import synthetic_text  # pylint: disable=import-outside-toplevel
  return synthetic_text.generate(400, seed=3)


def write_mbart_folder(release_tokenizer, directory: pathlib.Path, pairs) -> dict:
  """mBart_de as prune_embedding.ipynb writes it; returns the random HF mBART's state dict."""
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  full = directory.parent / 'mBart_full'
  full.mkdir()
  spm.SentencePieceTrainer.train(  # mBART's conventions: unigram, <unk> 0, <s> 1, </s> 2
      sentence_iterator=iter([t for _, t in pairs] + [g.lower() for g, _ in pairs]),
      model_prefix=str(full / 'sentencepiece.bpe'), vocab_size=110, model_type='unigram',
      character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
  (full / 'sentencepiece.bpe.vocab').unlink()
  (full / 'tokenizer_config.json').write_text(json.dumps({'tokenizer_class': 'MBartTokenizer'}))
  tokenizer = release_tokenizer(str(full))
  # The notebook: tokenizer.json's added tokens (<s> <pad> </s> <unk>, the language codes,
  # <mask>) keep the first rows, then every piece of the texts and the lowercased glosses.
  added = tokenizer.convert_tokens_to_ids(['<s>', '<pad>', '</s>', '<unk>',
                                          *MBART_CC25_LANGUAGE_CODES, '<mask>'])
  map_ids = {old: new for new, old in enumerate(added)}
  for glosses, text in pairs[:PRUNED_ON]:
    for piece_ids in [tokenizer(text)['input_ids'][:-2]] + [
        tokenizer(g)['input_ids'][:-2] for g in glosses.lower().split()]:
      for old in piece_ids:
        map_ids.setdefault(old, len(map_ids))
  torch.manual_seed(1)
  config = transformers.MBartConfig(vocab_size=len(map_ids), **MBART)
  model = transformers.MBartForConditionalGeneration(config)
  with torch.no_grad():  # weights large enough that the translations depend on the input
    for name, weight in model.named_parameters():
      if weight.dim() == 2:
        weight.normal_(0, EMB if 'shared' in name else MAT)
    model.model.shared.weight[config.pad_token_id] = 0  # as transformers initialises it
    model.final_logits_bias.normal_(0, 0.5)
    # Only words and </s> come out, sentences of a few words.
    model.final_logits_bias[0, [map_ids[i] for i in added if i != 2]] = -30.0
    model.final_logits_bias[0, map_ids[2]] = EOS_BIAS
  directory.mkdir()
  model.save_pretrained(str(directory))
  for name in ('sentencepiece.bpe.model', 'tokenizer_config.json'):
    shutil.copy(full / name, directory / name)
  with open(directory / 'map_ids.pkl', 'wb') as f:
    pickle.dump(map_ids, f)
  # gloss2ids.pkl and gloss_embeddings.bin: the notebook's create_gloss_embedding order.
  embedding = model.model.shared.weight.detach()
  old_embedding = {old: embedding[new] for old, new in map_ids.items()}
  gls2emb = {t: old_embedding[tokenizer.convert_tokens_to_ids(t)]
             for t in ('<s>', '<pad>', '</s>', '<unk>', '<mask>', 'zh_CN', 'de_DE')}
  gls2emb['zh_CSL'], gls2emb['de_DGS'] = gls2emb['zh_CN'], gls2emb['de_DE']
  for gloss in sorted({g.lower() for glosses, _ in pairs[:PRUNED_ON] for g in glosses.split()}):
    ids = tokenizer(gloss)['input_ids'][:-2]
    gls2emb[gloss] = torch.stack([old_embedding[i] for i in ids]).mean(0)
  torch.save(gls2emb, directory / 'gloss_embeddings.bin')
  with open(directory / 'gloss2ids.pkl', 'wb') as f:
    pickle.dump({g: i for i, g in enumerate(gls2emb)}, f)
  shutil.rmtree(full)
  return model.state_dict()


def main(release_dir: str):
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, release_dir)
  _stub_logging_imports()
  from modelling.model import SignLanguageModel  # pylint: disable=import-outside-toplevel
  from utils import misc  # pylint: disable=import-outside-toplevel
  misc.logger = logging.getLogger('slrt')  # the release's training script sets this global
  # The release's mBART tokenizer class (TextTokenizer builds it from the folder).
  release_tokenizer = lambda folder: transformers.MBartTokenizer.from_pretrained(
      folder, tgt_lang='de_DE')

  if FOLDER.exists():
    shutil.rmtree(FOLDER)
  FOLDER.mkdir()
  shutil.copy(pathlib.Path(release_dir) / 'data/phoenix-2014t/gloss2ids_old.pkl', FOLDER)
  pairs = corpus()
  with tempfile.TemporaryDirectory() as scratch:
    mbart_dir = pathlib.Path(scratch) / 'mBart_de'
    write_mbart_folder(release_tokenizer, mbart_dir, pairs)
    cfg = {'task': 'S2T', 'device': 'cpu',
           'data': {'input_streams': ['rgb'], 'transform_cfg': {}},
           'model': {
               'RecognitionNetwork': {
                   'GlossTokenizer': {'gloss2id_file': str(FOLDER / 'gloss2ids_old.pkl')},
                   'fuse_method': 'empty',
                   'visual_head': {'hidden_size': HIDDEN, 'ff_size': FF, 'ff_kernelsize': [3, 3],
                                   'pe': True, 'input_size': FEATURES}},
               'TranslationNetwork': {
                   'GlossEmbedding': {'freeze': False,
                                      'gloss2embed_file': str(mbart_dir / 'gloss_embeddings.bin')},
                   'GlossTokenizer': {'gloss2id_file': str(mbart_dir / 'gloss2ids.pkl'),
                                      'src_lang': 'de_DGS'},
                   'TextTokenizer': {'pretrained_model_name_or_path': str(mbart_dir),
                                     'pruneids_file': str(mbart_dir / 'map_ids.pkl'),
                                     'tgt_lang': 'de_DE'},
                   'freeze_txt_embed': False, 'label_smoothing': 0.2,
                   'overwrite_cfg': {'attention_dropout': 0.1, 'dropout': 0.3},
                   'pretrained_model_name_or_path': str(mbart_dir)},
               'VLMapper': {'in_features': HIDDEN}}}
    torch.manual_seed(0)
    model = SignLanguageModel(cfg)
    with torch.no_grad():  # trained-looking BatchNorm statistics; the suffix rows moved by training
      norm = model.recognition_network.visual_head.bn1.norm
      norm.weight.uniform_(0.5, 1.5)
      norm.bias.normal_(0, 0.1)
      norm.running_mean.normal_(0, 0.1)
      norm.running_var.uniform_(0.5, 1.5)
      model.translation_network.gloss_embedding.weight.add_(
          torch.randn_like(model.translation_network.gloss_embedding.weight) * 0.05)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.998))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=40)
    torch.save({'epoch': 3, 'global_step': 1200, 'model_state': model.state_dict(),
                'optimizer_state': optimizer.state_dict(),
                'scheduler_state': scheduler.state_dict(), 'best_score': 0.0,
                'current_score': 0.0}, FOLDER / 's2t.ckpt')  # training.py's save_model
    (FOLDER / 'mBart_de').mkdir()
    for name in ('config.json', 'sentencepiece.bpe.model', 'tokenizer_config.json',
                 'map_ids.pkl', 'gloss2ids.pkl'):
      shutil.copy(mbart_dir / name, FOLDER / 'mBart_de' / name)

    # The release's evaluation of one batch (prediction.py), full-length rows (see
    # tests/test_mmtlb_release_parity.py on padding).
    texts = [t for _, t in pairs[:SENTENCES]]
    glosses = [g for g, _ in pairs[:SENTENCES]]
    rng = np.random.default_rng(5)
    features = rng.standard_normal((SENTENCES, FRAMES, FEATURES)).astype(np.float32)
    model.eval()
    # transformers 5 dropped as_target_tokenizer (4.x: the target language's `</s> de_DE`
    # suffix); the source-language setting gives the same ids.
    model.text_tokenizer.tokenizer.src_lang = 'de_DE'
    model.text_tokenizer.tokenizer.as_target_tokenizer = contextlib.nullcontext
    # The release's transformers (4.11) decodes from the decoder_input_ids it is given (the
    # target language code); from 4.27 on, generate puts decoder_start_token_id in front of them
    # unless they start with it.
    model.translation_network.model.generation_config.decoder_start_token_id = (
        model.text_tokenizer.sos_index)
    text_inputs = model.text_tokenizer(texts)
    # Sentences beyond PRUNED_ON too, whose pieces may have no row (<unk>).
    labelled = [t for _, t in pairs[:SENTENCES] + pairs[PRUNED_ON:PRUNED_ON + 30]]
    labels = model.text_tokenizer(labelled)['labels']
    gloss_inputs = model.gloss_tokenizer(glosses)
    lengths = torch.full((SENTENCES,), FRAMES)
    with torch.no_grad():
      out = model(is_train=False, translation_inputs=text_inputs, recognition_inputs={
          'gloss_labels': gloss_inputs['gloss_labels'], 'gls_lengths': gloss_inputs['gls_lengths'],
          'head_rgb_input': torch.from_numpy(features),
          'sgn_mask': torch.ones(SENTENCES, 1, FRAMES, dtype=torch.bool), 'sgn_lengths': lengths})
      generated = model.generate_txt(transformer_inputs=out['transformer_inputs'],
                                     generate_cfg=GENERATE)
  golden = {'features': features, 'gloss_logits': out['gloss_logits'].numpy(),
            'translations': np.array(generated['decoded_sequences']),
            'sequences': generated['sequences'].numpy(),
            'texts': np.array(labelled),
            'labels': labels.numpy(),
            'release_commit': RELEASE_COMMIT, 'torch': torch.__version__,
            'transformers': transformers.__version__}
  np.savez_compressed(FOLDER / 'golden.npz', **golden)
  print(f'{FOLDER}: translations {generated["decoded_sequences"]}')


if __name__ == '__main__':
  release_golden_files.run_from_command_line(main, 'SLRT/TwoStreamNetwork')
