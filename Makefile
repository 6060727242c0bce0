# Two entry points, both doing their own setup on a fresh machine (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup train train-c2rl train-sign2gpt train-gloss2text test

# The main job needs sltjax alone; the tests also need transformers and torch (parity checks).
$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/.installed

# The main job, MMTLB's staged recipe on synthetic_signs (built under DATA_DIR on first use), each
# stage in its default workdir (workdirs/mmtlb_<variant>_synthetic_signs) and resuming on its own:
# Sign2Gloss (CTC and each frame's gloss), Gloss2Text on the dataset's labels, then Sign2Text
# started from both; the test split scored with the best dev checkpoint; then the videos in
# VIDEOS translated.
DATA_DIR ?= data
comma := ,
# Each at laptop size: $(1) is the variant (empty: the config's default), run with ,runlocal.
main_job = $(BIN)/python -m sltjax.main --config=configs/mmtlb.py:$(1)runlocal --config.data.data_dir=$(DATA_DIR)
WORKDIR := workdirs/mmtlb_runlocal_staged_synthetic_signs
VIDEOS ?= ../shared/data/videos
train: setup
	$(call main_job,sign2gloss$(comma))
	$(BIN)/python -m sltjax.main --config=configs/gloss2text.py:mmtlb,runlocal --config.data.data_dir=$(DATA_DIR)
	$(call main_job,staged$(comma))
	$(call main_job,staged$(comma)) --mode=eval --config.eval.split=test
	@if ls $(VIDEOS)/*.mp4 >/dev/null 2>&1; then \
	  $(BIN)/python -m sltjax.translate --workdir=$(WORKDIR) $(VIDEOS)/*.mp4; \
	else echo "No videos in $(VIDEOS): translate your own with"; \
	  echo "  $(BIN)/python -m sltjax.translate --workdir=$(WORKDIR) VIDEO..."; fi

# C2RL at laptop size on synthetic_signs: pretraining (ICL + ECL), then Sign2Text and retrieval
# from its frozen encoder, each scored on the test split; then the videos in VIDEOS translated,
# indexed and searched for a sentence.
c2rl = $(BIN)/python -m sltjax.main --config=configs/c2rl.py:$(1)runlocal --config.data.data_dir=$(DATA_DIR)
C2RL_SLT := workdirs/c2rl_runlocal_slt_synthetic_signs
C2RL_SLRET := workdirs/c2rl_runlocal_slret_synthetic_signs
train-c2rl: setup
	$(call c2rl,)
	$(call c2rl,slt$(comma))
	$(call c2rl,slt$(comma)) --mode=eval --config.eval.split=test
	$(call c2rl,slret$(comma))
	$(call c2rl,slret$(comma)) --mode=eval --config.eval.split=test
	@if ls $(VIDEOS)/*.mp4 >/dev/null 2>&1; then \
	  $(BIN)/python -m sltjax.translate --workdir=$(C2RL_SLT) $(VIDEOS)/*.mp4 && \
	  $(BIN)/python -m sltjax.retrieve --workdir=$(C2RL_SLRET) index \
	    --index=$(C2RL_SLRET)/video_index $(VIDEOS) && \
	  $(BIN)/python -m sltjax.retrieve --workdir=$(C2RL_SLRET) search \
	    --index=$(C2RL_SLRET)/video_index "$$(cat $(C2RL_SLRET)/predictions/test_best_step*.txt | head -1)"; \
	else echo "No videos in $(VIDEOS): translate and index your own with sltjax.translate and"; \
	  echo "sltjax.retrieve (see README.md, C2RL)."; fi

# Sign2GPT at laptop size on synthetic_signs: the stand-in DINOv2 and XGLM it adapts (trained here
# on the synthetic domain, saved as Hugging Face directories, loaded frozen as downloaded ones
# are), pseudo-gloss pretraining, then translation started from it, each scored on the test
# split; then the videos in VIDEOS translated.
sign2gpt = $(BIN)/python -m sltjax.main --config=configs/sign2gpt.py:$(1)runlocal --config.data.data_dir=$(DATA_DIR)
S2G_TRANSLATION := workdirs/sign2gpt_runlocal_translation_synthetic_signs
train-sign2gpt: setup
	$(BIN)/python -m sltjax.stand_ins --output_dir=pretrained/synthetic_signs
	$(call sign2gpt,)
	$(call sign2gpt,) --mode=eval --config.eval.split=test
	$(call sign2gpt,translation$(comma))
	$(call sign2gpt,translation$(comma)) --mode=eval --config.eval.split=test
	@if ls $(VIDEOS)/*.mp4 >/dev/null 2>&1; then \
	  $(BIN)/python -m sltjax.translate --workdir=$(S2G_TRANSLATION) $(VIDEOS)/*.mp4; \
	else echo "No videos in $(VIDEOS): translate your own with"; \
	  echo "  $(BIN)/python -m sltjax.translate --workdir=$(S2G_TRANSLATION) VIDEO..."; fi

# Gloss2Text on PHOENIX-2014T (G2T_DATA=folder with {train,dev}.{gloss,de}); without it, on the
# embedded synthetic corpus (generated, a shorter schedule, its own workdir).
G2T_DATA ?= ../shared/data/phoenix2014t
G2T_WORKDIR ?= workdirs/gloss2text
SYNTHETIC_WORKDIR ?= workdirs/gloss2text_synthetic
train-gloss2text: setup
	@if [ -f "$(G2T_DATA)/train.gloss" ]; then \
	  $(BIN)/python -m sltjax.main --config=configs/gloss2text.py --workdir=$(G2T_WORKDIR) \
	    --config.data.path=$(G2T_DATA); \
	else \
	  echo "No PHOENIX-2014T text at $(G2T_DATA): training on the embedded synthetic corpus."; \
	  $(BIN)/python -m sltjax.data.synthetic_text --output_dir=$(SYNTHETIC_WORKDIR)/corpus && \
	  $(BIN)/python -m sltjax.main --config=configs/gloss2text.py --workdir=$(SYNTHETIC_WORKDIR) \
	    --config.data.path=$(SYNTHETIC_WORKDIR)/corpus --config.total_steps=1000 \
	    --config.eval_every_steps=500 --config.checkpoint_every_steps=500; \
	fi

test: $(BIN)/.installed-test
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q tests
