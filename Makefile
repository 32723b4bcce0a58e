# Set-up and everyday commands. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

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

test: $(STAMP)
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
