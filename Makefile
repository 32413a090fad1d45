# Everything pgqueue needs is installed from here: on a fresh machine with Python and make,
# `make demo` and `make test` do all the set-up themselves.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: install demo test test-server test-embedded lint chaos bench bench-quick bench-deps clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# The browser tests drive Debian's Chromium through Playwright (never `playwright install`: no downloads).
CHROMIUM ?= /usr/bin/chromium
chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
		echo "== installing Debian's chromium for the browser tests"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; \
	fi

# The main job end to end. No PGQUEUE_DSN: the embedded PostgreSQL in ./.pgqueue (stopped again at the end).
demo: $(STAMP)
	@if [ -n "$$PGQUEUE_DSN" ]; then \
		$(BIN)/pgqueue demo; \
	else \
		$(BIN)/pgqueue demo; status=$$?; $(BIN)/pgqueue embedded stop >/dev/null; exit $$status; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check pgqueue tests $(wildcard bench)
	$(BIN)/mypy

# The suite runs against the server named by PGQUEUE_DSN (when set) and against the embedded PostgreSQL.
# Each run creates its own database and drops it. The chaos slice (real processes, minutes) runs once: on the
# server leg when there is one, else on the embedded one.
test: lint
	@if [ -n "$$PGQUEUE_DSN" ]; then \
		$(MAKE) --no-print-directory test-server && \
		$(MAKE) --no-print-directory test-embedded PYTEST_ARGS='-m "not chaos" $(PYTEST_ARGS)'; \
	else \
		$(MAKE) --no-print-directory test-embedded; \
	fi

test-server: $(STAMP) chromium
	@echo "== tests against $${PGQUEUE_DSN%%\?*}"
	$(BIN)/pytest $(PYTEST_ARGS)

test-embedded: $(STAMP) chromium
	@echo "== tests against the embedded PostgreSQL"
	env -u PGQUEUE_DSN $(BIN)/pytest $(PYTEST_ARGS)

# The fault and abuse suite at full size (about 50 minutes, 30 of them the soak; make test runs a quick slice):
# each scenario's figures against its bounds, then `chaos: N passed, M failed`. Against $$PGQUEUE_DSN's server
# when set, else an embedded PostgreSQL; scenarios that restart or reconfigure PostgreSQL start their own.
chaos: $(STAMP)
	@mkdir -p test-artifacts
	$(BIN)/python -m tests.chaos --markdown test-artifacts/chaos.md $(CHAOS_ARGS)

# Performance, side by side with the peers (see README "Performance"). Peers live in bench/.venv-peers and
# bench/node/node_modules, never in pgqueue's venv; a peer that cannot be installed shows as n/a in the table.
PEERS       := bench/.venv-peers
PEERS_STAMP := $(PEERS)/.installed-$(shell cksum bench/requirements-peers.txt | cut -d' ' -f1)
BENCH_ARGS  ?=

$(PEERS_STAMP): bench/requirements-peers.txt
	rm -rf $(PEERS)
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS)/bin/python -m pip install --quiet -r bench/requirements-peers.txt || rm -f $(PEERS)/bin/python
	touch $(PEERS_STAMP)

bench/node/node_modules/.installed: bench/node/package.json bench/node/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		(cd bench/node && npm ci --no-audit --no-fund --loglevel=error) && touch $@ \
			|| echo "graphile-worker could not be installed; the table will say so"; \
	else echo "no npm: graphile-worker is left out of the table"; fi

bench-deps: $(STAMP) $(PEERS_STAMP)
	@$(MAKE) --no-print-directory bench/node/node_modules/.installed || true

bench: bench-deps
	$(BIN)/python bench/run.py $(BENCH_ARGS)

bench-quick: bench-deps
	$(BIN)/python bench/run.py --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist build
