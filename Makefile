# The two commands of the README: `make run` and `make test`. Each bootstraps .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Workers of the parallel phase of `make test`; tests marked solo run after it, alone.
TEST_WORKERS ?= 3
# Emails per run of `make bench`.
BENCH_N ?= 20000

.PHONY: run test lint format mutate bench clean

# Python caches compiled modules (__pycache__, ignored by git) unless told not to. A
# machine that tells it not to (PYTHONDONTWRITEBYTECODE) makes every process compile
# Postline's sources again: 0.4 s of CPU per start of `postline`, for each of the
# hundreds of processes the test suite starts, and for pytest's rewritten test modules.
unexport PYTHONDONTWRITEBYTECODE

$(BIN)/postline: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.dev: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

# A local lab: the sandbox on, and webhook URLs on this machine allowed.
run: $(BIN)/postline
	POSTLINE_SANDBOX=$${POSTLINE_SANDBOX:-true} \
	POSTLINE_WEBHOOK_ALLOW_PRIVATE=$${POSTLINE_WEBHOOK_ALLOW_PRIVATE:-true} \
	$(BIN)/postline serve

# The official resend npm SDK, run by tests/sdk/test_resend_node.py (never installed by a
# test). Without Node those tests skip on a laptop and fail under CI, which has Node.
NODE_SDK := tests/sdk/node

$(NODE_SDK)/node_modules/.package-lock.json: $(NODE_SDK)/package.json $(NODE_SDK)/package-lock.json
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $(NODE_SDK) --no-audit --no-fund; \
	else \
		echo "# no node and npm on PATH: the resend npm SDK tests will skip (and fail under CI)"; \
	fi

test: $(VENV)/.dev $(NODE_SDK)/node_modules/.package-lock.json
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal -m "not solo" $(PYTEST_ARGS) || test $$? -eq 5
	$(BIN)/pytest -m solo $(PYTEST_ARGS) || test $$? -eq 5

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV)/.dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Mutation testing of the mail path (docs/TESTING.md); too slow for CI. The modules and the
# test files are [tool.mutmut] in pyproject.toml; MUTANTS narrows a run to some of them,
# e.g. make mutate MUTANTS='postline.delivery.lease.*'. Results stay in mutants/.
mutate: $(VENV)/.dev
	$(BIN)/mutmut run $(MUTANTS)
	$(BIN)/mutmut results

# Postline (embedded, and PostgreSQL + Redis) side by side with Postfix on this machine
# (docs/BENCHMARK.md); too slow and too noisy for CI. As root: it installs Debian's postfix
# package if missing and runs a private Postfix instance on loopback.
# e.g. make bench BENCH_N=5000
bench: $(VENV)/.dev
	$(BIN)/python bench/peers.py --emails $(BENCH_N) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache mutants $(NODE_SDK)/node_modules
