# One command to set up and run the demo (`make demo`), one to run the tests (`make test`).
# Both create ./.venv on first use; nothing is downloaded at run time.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: setup demo test test-fast test-clip lint bench clean

setup: $(VENV)/.installed

# torch is pinned to the CPU build that pip serves from local disk; a plain `torch`
# would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,clip-hf]'
	touch $@

demo: setup
	$(VENV)/bin/mmsearch demo

test: setup
	$(PY) -m pytest

# The fast tier: fake providers and an in-memory Milvus (tests/fakes.py); no models, data
# sets or Milvus process, a few seconds.
test-fast: setup
	$(PY) -m pytest tests/unit -q

# The open_clip tests need torchvision, so they run in a venv of their own with torch 2.14.1
# (pip takes it from local disk; about 6 GB).
CLIP_VENV ?= .venv-clip
$(CLIP_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(CLIP_VENV)
	$(CLIP_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CLIP_VENV)/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(CLIP_VENV)/bin/python -m pip install --quiet -e '.[dev,clip]'
	touch $@

test-clip: $(CLIP_VENV)/.installed
	$(CLIP_VENV)/bin/python -m pytest tests/test_clip.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) $(CLIP_VENV) *.egg-info .pytest_cache .ruff_cache
