# make demo   - create .venv, install the stack, generate the synthetic world, train the default models, compare
# make test   - create/use .venv, lint and type-check, run the test suite (CI runs exactly this)
# make lint   - ruff (lint + format check) and mypy (strict on the public API); `make format` rewrites the code
# make test-compat - the suite on the older supported stack (torchrec 1.6.1, scripts/requirements-torchrec1.6.txt)
# make bench  - throughput (CPU) and data path benchmarks; results in benchmarks/results (docs/benchmarks.md)
# make install-k8s - also the Kubernetes client for `torchx run -s kubernetes` (scripts/requirements-kubernetes.txt)
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.recsys-installed

.PHONY: install install-k8s demo lint format test test-all test-compat bench clean

$(STAMP): scripts/install.sh scripts/requirements.txt pyproject.toml
	bash scripts/install.sh $(VENV)
	@touch $@

install: $(STAMP)

# opt-in: only the machine that submits Kubernetes jobs needs it; the main pins constrain its dependencies
install-k8s: $(STAMP)
	$(PYTHON) -m pip install -q --disable-pip-version-check -r scripts/requirements-kubernetes.txt \
		-c scripts/requirements.txt

demo: $(STAMP)
	$(PYTHON) -m recsys demo

LINTED := recsys tests benchmarks torchx_specs

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix $(LINTED)
	$(VENV)/bin/ruff format $(LINTED)

test: lint
	$(PYTHON) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PYTHON) -m pytest -q

COMPAT_VENV := .venv-torchrec1.6
$(COMPAT_VENV)/.recsys-installed: scripts/install.sh scripts/requirements-torchrec1.6.txt pyproject.toml
	PINS=scripts/requirements-torchrec1.6.txt bash scripts/install.sh $(COMPAT_VENV)
	@touch $@

test-compat: $(COMPAT_VENV)/.recsys-installed
	$(COMPAT_VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(PYTHON) -m benchmarks.throughput --device cpu
	$(PYTHON) -m benchmarks.loader

clean:
	rm -rf runs data/synthetic .pytest_cache
