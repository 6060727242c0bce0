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

# The main job: Gloss2Text on PHOENIX-2014T (DATA=folder with {train,dev}.{gloss,de}).
DATA ?= ../shared/data/phoenix2014t
WORKDIR ?= workdirs/gloss2text
CONFIG ?= configs/gloss2text.py
train: setup
	$(BIN)/python -m sltjax.main --config=$(CONFIG) --workdir=$(WORKDIR) --config.data.path=$(DATA)

test: setup
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q tests
