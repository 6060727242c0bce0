# Two entry points, both doing their own setup on a fresh machine (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup train test

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/.installed

# The main job: Gloss2Text on PHOENIX-2014T (DATA=folder with {train,dev}.{gloss,de}); without it,
# on the embedded synthetic corpus (generated, a shorter schedule, its own workdir).
DATA ?= ../shared/data/phoenix2014t
WORKDIR ?= workdirs/gloss2text
SYNTHETIC_WORKDIR ?= workdirs/gloss2text_synthetic
CONFIG ?= configs/gloss2text.py
train: setup
	@if [ -f "$(DATA)/train.gloss" ]; then \
	  $(BIN)/python -m sltjax.main --config=$(CONFIG) --workdir=$(WORKDIR) --config.data.path=$(DATA); \
	else \
	  echo "No PHOENIX-2014T text at $(DATA): training on the embedded synthetic corpus."; \
	  $(BIN)/python -m sltjax.data.synthetic_text --output_dir=$(SYNTHETIC_WORKDIR)/corpus && \
	  $(BIN)/python -m sltjax.main --config=$(CONFIG) --workdir=$(SYNTHETIC_WORKDIR) \
	    --config.data.path=$(SYNTHETIC_WORKDIR)/corpus --config.total_steps=1000 \
	    --config.eval_every_steps=500 --config.checkpoint_every_steps=500; \
	fi

test: setup
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q tests
