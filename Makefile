# diffexp — the README's commands. Every target creates the project venv on first use.
# PIP_CONSTRAINT pins the tested CPU torch: without it pip pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATA_DIR ?= data
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv data train test test-all test-fast bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[all]"
	touch $(STAMP)

data: $(STAMP)
	$(PY) scripts/fetch_mnist.py $(DATA_DIR)/mnist

# The default experiment: MNIST, small UNet, EMA, on CPU (see README for what it does and its time).
train: data
	$(PY) train.py experiment=mnist_cpu $(ARGS)

# The default test suite (no slow tests; notebooks included).
test: $(STAMP)
	WANDB_MODE=disabled $(PY) -m pytest -q -m "not slow" $(ARGS)

test-all: $(STAMP)
	WANDB_MODE=disabled $(PY) -m pytest -q $(ARGS)

bench: $(STAMP) data
	$(PY) bench/run_all.py $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench train.py sample.py evaluate.py

clean:
	rm -rf outputs multirun .pytest_cache
