# One command each on a fresh machine: `make serve`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install serve test lint train export clean

# torch is pinned to the CPU build this machine ships; an unpinned torch pulls
# gigabytes of CUDA wheels and is only needed for training and export.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[cpu,train,dev]'
	touch $@

install: $(BIN)/.installed

serve: install
	$(BIN)/python -m service --host $(HOST) --port $(PORT)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check service models tests
	$(BIN)/ruff format --check service models tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
