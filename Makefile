# goose-proxy developer tasks. Needs only python3, pip and make: uv is installed
# with pip when it is missing, and uv installs everything else from uv.lock.

SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
PYTHON ?= python3

UV := $(shell command -v uv 2>/dev/null)
ifeq ($(strip $(UV)),)
# (a system Python that refuses pip, PEP 668, gets it in ~/.local instead)
UV := $(shell $(PYTHON) -m uv --version >/dev/null 2>&1 || \
	$(PYTHON) -m pip install --quiet uv >&2 2>/dev/null || \
	$(PYTHON) -m pip install --quiet --user --break-system-packages uv >&2; \
	echo $(PYTHON) -m uv)
endif

PYENV_ROOT ?= $(shell pyenv root 2>/dev/null || echo $(HOME)/.pyenv)
PY39 ?= $(firstword $(wildcard $(PYENV_ROOT)/versions/3.9*/bin/python3.9) $(shell command -v python3.9 2>/dev/null))
PY312 ?= $(firstword $(wildcard $(PYENV_ROOT)/versions/3.12*/bin/python3.12) $(shell command -v python3.12 2>/dev/null))
PYTEST_ARGS ?=

.PHONY: help sync dev run test test-matrix lint check man bench bench-smoke pyz fuzz-long clean

help:
	@echo "make dev          run the proxy (auto-reload) against the bundled development backend"
	@echo "make run          the same without auto-reload"
	@echo "make sync         install goose-proxy and its development tools into .venv"
	@echo "make test         run the test suite"
	@echo "make test-matrix  run the test suite on Python 3.9 and 3.12 where present"
	@echo "make lint         ruff"
	@echo "make check        type check (mypy)"
	@echo "make man          build the man pages into docs/_build/man"
	@echo "make bench        benchmarks (table + JSON); make bench-smoke: about 15 s"
	@echo "make pyz          build dist/goose-proxy.pyz (zipapp)"
	@echo "make fuzz-long    the long fuzz run (30,000 examples, a few minutes)"

sync:
	$(UV) sync --locked --inexact  # keeps what `make man` added (sphinx)

dev: sync
	$(UV) run python -m devbackend.devrun

run: sync
	$(UV) run python -m devbackend.devrun --no-reload

test: sync
	$(UV) run pytest $(PYTEST_ARGS)

test-matrix:
	@for py in $(PY39) $(PY312); do \
	  echo "== pytest on $$py"; \
	  UV_PROJECT_ENVIRONMENT=.venv-$$(basename $$py) $(UV) run --locked --python $$py pytest $(PYTEST_ARGS) || exit 1; \
	done
	@if [ -z "$(PY39)$(PY312)" ]; then echo "no Python 3.9 or 3.12 interpreter found: matrix skipped"; fi

lint: sync
	$(UV) run ruff check goose_proxy devbackend tests benchmarks

check: sync
	$(UV) run mypy

man:
	$(UV) sync --locked --group docs
	$(UV) run --group docs sphinx-build -q -b man docs/man docs/_build/man
	@ls docs/_build/man

bench: sync
	$(UV) run python -m benchmarks.run

bench-smoke: sync
	$(UV) run python -m benchmarks.run --smoke

pyz: sync
	$(UV) run python tools/build_pyz.py

fuzz-long: sync
	$(UV) run pytest tests/fuzz -p no:randomly --hypothesis-profile=long

clean:
	rm -rf .venv .venv-* dist docs/_build .dev .pytest_cache .mypy_cache .ruff_cache
