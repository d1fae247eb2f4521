# Set-up and the two everyday commands. `make train` and `make test` create the virtual
# environment on first use; pass Hydra overrides with ARGS, pytest options with PYTEST_ARGS.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.autoexp-installed

.PHONY: setup train test lint data

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev,joblib]'
	-bash scripts/install-fashion-mnist.sh
	touch $(STAMP)

data:
	bash scripts/install-fashion-mnist.sh

train: $(STAMP)
	$(VENV)/bin/autoexp-train $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check autoexp scripts tests
	$(VENV)/bin/ruff format --check autoexp scripts tests
