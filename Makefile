# Developer entry points. `make serve` and `make test` are the two commands the README promises.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
CONFIG ?=
PYTEST_ARGS ?=

.PHONY: setup serve test lint bench clean

setup: $(STAMP)

# torch is installed first and pinned: the CPU build of 2.13.0 (otherwise pip pulls a multi-GB CUDA build).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[llamacpp,transformers,diffusers,dev]'
	touch $(STAMP)

serve: setup
	$(VENV)/bin/llmops serve $(if $(CONFIG),--config $(CONFIG))

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

bench: setup
	$(PY) -m bench.run --out bench/results

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
