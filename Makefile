# One entry point. Every target bootstraps its own virtualenv on a fresh machine.
#   make demo   synthetic market, works offline      make run    live Binance + Coinbase
#   make test   the whole suite (real broker, real PostgreSQL, TimescaleDB, headless Chromium)
#   make bench  benchmarks that print figures         make lint   ruff + mypy

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install run demo test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

run: $(STAMP)
	$(BIN)/cryptostream up --source live

demo: $(STAMP)
	$(BIN)/cryptostream up --source synthetic

test: $(STAMP)
	scripts/ensure-test-tools
	$(BIN)/python -m pytest -n 2 --dist loadfile

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python -m bench.$$(basename $$b .py) || exit 1; done

clean:
	rm -rf $(VENV) .cryptostream data .pytest_cache tests/.tsdb test-artifacts
