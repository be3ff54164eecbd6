# The two set-up commands of the README:
#   make demo   -> the whole pipeline end to end (synthetic DFDC-like data when DATA is empty)
#   make test   -> install everything and run the whole test suite
# Both create (or reuse) ./.venv with the pins in constraints.txt.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?=
PYTEST_ARGS ?=

.PHONY: venv demo test lint browser ffmpeg clean

$(STAMP): setup.cfg constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/dfpipe run $(DATA)

browser:
	bash scripts/install_browser.sh

ffmpeg:
	bash scripts/install_ffmpeg.sh

test: $(STAMP) browser ffmpeg
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check pipeline tests scripts

clean:
	rm -rf runs reports faces .pytest_cache
