# Quick start: `make demo` (set up + run the main job), `make test` (set up + run the tests).
# `make speed`: FLOPs table and measured throughput of the registered models (random weights).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU wheels by default. The two pins travel in one pip command, otherwise pip resolves a newer
# CUDA torch for torchvision. GPU users: see README ("Installing on a GPU machine").
TORCH_SPEC ?= torch==2.13.0 torchvision==0.28.0
STAMP := $(VENV)/.installed

.PHONY: install test demo speed clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[test,plots]"
	$(PY) -m sttabt_compat --install-pth
	touch $(STAMP)

test: install
	$(PY) -m pytest -q tests

# The whole STTABT pipeline on the bundled digits; a second `make demo` reuses the finished stages.
demo: install
	$(PY) tools/train_imagenet.py --config configs/digits_demo.yaml --auto-resume

speed: install
	$(PY) tools/demo.py

clean:
	rm -rf $(VENV) build *.egg-info
