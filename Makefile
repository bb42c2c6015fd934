# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both build .venv from pyproject.toml on first use (and again whenever it changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check bench clean system-packages

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	@sh scripts/system-packages.sh postgresql
	$(BIN)/python examples/demo.py

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# PostgreSQL, PgBouncer, faketime, iptables, iproute2, util-linux, chromium and
# chromium-driver: installed when missing (as root), else the exact apt-get command is printed.
system-packages:
	@sh scripts/system-packages.sh

test: system-packages check
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/hot_path.py
	$(BIN)/python benchmarks/async_store.py
	$(BIN)/python benchmarks/herd.py
	$(BIN)/python benchmarks/refresh_all.py
	$(BIN)/python benchmarks/cache_memory.py
	$(BIN)/python benchmarks/recovery.py
	$(BIN)/python benchmarks/failover.py
	$(BIN)/python benchmarks/scale.py
	$(BIN)/python benchmarks/sealing.py
	$(BIN)/python benchmarks/versus_0_2.py
	$(BIN)/python benchmarks/api_server.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
