# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both build .venv from pyproject.toml on first use (and again whenever it changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: check
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/hot_path.py
	$(BIN)/python benchmarks/herd.py
	$(BIN)/python benchmarks/refresh_all.py
	$(BIN)/python benchmarks/cache_memory.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
