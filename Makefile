# Two commands do all set-up: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_WORKERS ?= auto

.PHONY: run bench test install install-dev lint docs check-docstrings check-references clean

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

# The default comparison (MetaOpt vs LR-tuned baselines on the digits MLP, ~20 s on 2 CPUs);
# ends with the comparison table and the plots' folder. Run again to resume.
run: install
	$(BIN)/meta-opt run

bench: install
	$(BIN)/meta-opt bench synthetic

lint: install-dev
	$(BIN)/ruff check .

test: install-dev lint
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --durations=15

# The site (guides in docs/ and the API reference built from docstrings) in build/site;
# any warning (a broken link, a docstring mkdocstrings cannot parse) fails the build.
docs: install-dev
	$(BIN)/mkdocs build --strict

# The two library-hygiene checks on their own: every public name has a docstring; no file
# points to a file outside the repository.
check-docstrings: install-dev
	$(BIN)/python -m pytest tests/test_library_basics.py -n 0 -k docstring

check-references: install-dev
	$(BIN)/python -m pytest tests/test_library_basics.py -n 0 -k refer

clean:
	rm -rf $(VENV) runs build .pytest_cache .ruff_cache
