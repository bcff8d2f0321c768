# Two commands for a newcomer: `make demo` and `make test`. Each sets up .venv first.
# TORCH_SPEC is what pip installs when the environment has no torch yet; users with CUDA
# override it, e.g. make demo TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= runs/demo
DEMO_ARGS ?=
PY := $(VENV)/bin/python

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e '.[dev]'
	touch $@

demo: install
	$(VENV)/bin/robustgate demo --out $(DEMO_OUT) $(DEMO_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

test: lint
	$(PY) -m pytest

# Every benchmark, one after the other (each also runs alone: $(PY) benchmarks/NAME.py).
bench: install
	set -e; for benchmark in benchmarks/*.py; do $(PY) $$benchmark; done

clean:
	rm -rf $(VENV) runs
