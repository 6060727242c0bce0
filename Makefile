# Two entry points, both doing their own setup on a fresh machine (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup train train-gloss2text test

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/.installed

# The main job: a small MMTLB Sign2Text model trained end to end on synthetic_signs (built under
# DATA_DIR on first use), scored on the test split, then translating the videos in VIDEOS.
DATA_DIR ?= data
WORKDIR ?= workdirs/mmtlb_local
VIDEOS ?= ../shared/data/videos
train: setup
	$(BIN)/python -m sltjax.main --config=configs/mmtlb.py:runlocal --workdir=$(WORKDIR) \
	  --config.data.data_dir=$(DATA_DIR)
	$(BIN)/python -m sltjax.main --config=configs/mmtlb.py:runlocal --workdir=$(WORKDIR) \
	  --config.data.data_dir=$(DATA_DIR) --mode=eval --config.eval.split=test
	@if ls $(VIDEOS)/*.mp4 >/dev/null 2>&1; then \
	  $(BIN)/python -m sltjax.translate --workdir=$(WORKDIR) $(VIDEOS)/*.mp4; \
	else echo "No videos in $(VIDEOS): translate your own with"; \
	  echo "  $(BIN)/python -m sltjax.translate --workdir=$(WORKDIR) VIDEO..."; fi

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

test: setup
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q tests
