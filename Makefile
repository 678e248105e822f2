# One command each on a fresh machine: `make serve`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install browser redis serve test lint clean bench bench-quick bench-profile bench-peers

# torch is pinned to the CPU build this machine ships; an unpinned torch pulls
# gigabytes of CUDA wheels and is only needed for training and export.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[cpu,train,dev]'
	touch $@

install: $(BIN)/.installed

# The viewer's browser tests drive Debian's Chromium (Playwright's own browser
# download is not used). Installed when missing and we may use apt; otherwise
# those tests skip with a reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
		echo "chromium not installed: browser tests will skip"; }

# The shared work queue's tests start their own redis-server (Debian's package),
# installed when missing and we may use apt; otherwise those tests skip.
redis:
	@command -v redis-server >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) || \
		echo "redis-server not installed: shared queue tests will skip"; }

serve: install
	$(BIN)/python -m service --host $(HOST) --port $(PORT)

test: install browser redis
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check service models tests bench
	$(BIN)/ruff format --check service models tests bench
	$(BIN)/mypy

# Benchmarks (bench/README.md): raw ONNX Runtime limit, live server over HTTP, an
# 8192^2 scene job, then the peers; about 30 minutes on 2 cores; writes
# bench/results.{md,json}.
bench: install
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.peers.run

# attnserve beside hand FastAPI, Ray Serve and BentoML on the same model and tile,
# each peer in its own venv under .bench-venvs/ (made from PyPI on first use).
bench-peers: install
	$(BIN)/python -m bench.peers.run

bench-quick: install
	$(BIN)/python -m bench.run --quick

# py-spy profiles of the request path into bench/profiles/ (make bench-profile LABEL=after)
bench-profile: install
	$(BIN)/python -m bench.run --profile $(or $(LABEL),latest)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
