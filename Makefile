# make demo   - create .venv, install the stack, generate the synthetic world, train the default models, compare
# make test   - create/use .venv and run the test suite (CI runs exactly this)
# make bench  - throughput (CPU) and data path benchmarks; results in benchmarks/results (docs/benchmarks.md)
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.recsys-installed

.PHONY: install demo test test-all bench clean

$(STAMP): scripts/install.sh scripts/requirements.txt pyproject.toml
	bash scripts/install.sh $(VENV)
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(PYTHON) -m recsys demo

test: $(STAMP)
	$(PYTHON) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PYTHON) -m pytest -q

bench: $(STAMP)
	$(PYTHON) -m benchmarks.throughput --device cpu
	$(PYTHON) -m benchmarks.loader

clean:
	rm -rf runs data/synthetic .pytest_cache
