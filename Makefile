# Two commands do all set-up: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_WORKERS ?= auto

.PHONY: run bench test install install-dev lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# The dev extra pins torch==2.13.0 (for meta_opt.torch's tests): the CPU build on the build
# machines' disk; a newer torch would download a multi-GB CUDA build.
$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The default comparison (MetaOpt vs baselines on the digits MLP, ~1 min on 2 CPUs);
# ends with the comparison table and the plots' folder. Run again to resume.
run: install
	$(BIN)/meta-opt run

bench: install
	$(BIN)/meta-opt bench synthetic

lint: install-dev
	$(BIN)/ruff check .

test: install-dev lint
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --durations=15

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
