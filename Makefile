# The two commands of the README: `make run` and `make test`. Each creates or updates the
# virtual environment itself (pip only: it reads this machine's local wheel folder and mirrors).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

.PHONY: install run benchmark test test-slow fuzz compose-tool clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --progress-bar off -e '.[dev]' 2>&1 | { grep -v '^WARNING: Location' || true; }
	$(BIN)/python -c "import torch, torchvision, timm, sklearn, torchmetrics"
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded default: train (or reuse) a synthfaces model, start the API and a
# worker on SQLite, erase one person over HTTP and print the finished request with its audit.
run: install
	$(BIN)/lethe demo

# The 1-SHUI benchmark on synthfaces, every method, 3 seeds (docs/benchmark/attributes, ~35 min).
benchmark: install
	$(BIN)/lethe benchmark --dataset synthfaces --task attributes --requests 5,10 --seeds 0,1,2 --methods all --out runs/benchmark

# Debian's docker-compose validates docker-compose.yml without a Docker engine (tests/test_compose.py).
compose-tool:
	@command -v docker-compose >/dev/null || [ "$$(id -u)" != 0 ] || { \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; }; }

test: install compose-tool
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# Schemathesis over the OpenAPI schema with a larger budget than the test run's 5 cases an
# operation (tests/test_fuzz.py): no server error, no undocumented status (about 2 min).
fuzz: install
	LETHE_FUZZ_EXAMPLES=200 $(BIN)/python -m pytest -q tests/test_fuzz.py

test-slow: install
	$(BIN)/python -m pytest -m slow

clean:
	rm -rf runs .lethe .pytest_cache .ruff_cache
