# Set-up and everyday commands. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The example's webhook secret: WEBHOOK_SECRET when set, else one made for this checkout and
# kept in data/ (never committed), which `engine fake-webhooks` is then given the same way.
DEV_SECRET := data/dev-webhook-secret

$(DEV_SECRET):
	@mkdir -p data
	@$(BIN)/python -c "import base64, os; print('whsec_' + base64.b64encode(os.urandom(32)).decode())" > $@

run: $(STAMP) $(DEV_SECRET)
	WEBHOOK_SECRET="$${WEBHOOK_SECRET:-$$(cat $(DEV_SECRET))}" $(BIN)/engine run --config routes.yaml

# The browser tests (tests/browser) drive Debian's chromium through Playwright; Playwright's
# own browser download is never used. Installed with apt-get when missing (as root, or with
# sudo when it needs no password); otherwise a clear message says what to run.
CHROMIUM := /usr/bin/chromium

chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; \
		elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO=sudo; \
		else echo "$(CHROMIUM) is missing: run 'sudo apt-get install chromium' (the browser tests need it)" >&2; exit 1; fi; \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; \
	fi

test: $(STAMP) chromium
	$(BIN)/ruff check engine tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check engine tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/engine bench

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache
