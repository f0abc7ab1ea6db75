# fcgicompose developer entry points. `make demo` and `make test` are all a new user needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
DEMO_ROOT ?= demo-root

.PHONY: help venv demo test test-deps test-fast lint fmt schema bench fuzz clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)  ## create .venv with fcgicompose and the dev tools

demo: venv  ## plan + apply samples/multi.toml into ./demo-root (no root needed)
	rm -rf $(DEMO_ROOT) && mkdir $(DEMO_ROOT)
	$(VENV)/bin/fcgicompose validate samples/multi.toml
	$(VENV)/bin/fcgicompose plan samples/multi.toml --root $(DEMO_ROOT)
	$(VENV)/bin/fcgicompose apply samples/multi.toml --root $(DEMO_ROOT) --auto-approve
	$(VENV)/bin/fcgicompose plan samples/multi.toml --root $(DEMO_ROOT) --detailed-exitcode
	@echo "demo: generated files are under $(DEMO_ROOT)/etc; a second plan shows no changes."

test-deps:  ## install what the tests need: nginx, fcgiwrap, systemd-nspawn, the test rootfs
	scripts/install-test-deps

test: venv test-deps  ## everything, system tests on a real systemd included
	$(PY) -m pytest -q

test-fast: venv  ## unit tests only (no root, no container)
	$(PY) -m pytest -q -m "not system"

lint: venv  ## ruff, ruff format --check, mypy --strict
	$(VENV)/bin/ruff check fcgicompose tests
	$(VENV)/bin/ruff format --check fcgicompose tests
	$(VENV)/bin/mypy

fmt: venv
	$(VENV)/bin/ruff format fcgicompose tests
	$(VENV)/bin/ruff check --fix fcgicompose tests

schema: venv  ## regenerate schemas/ and docs/spec.md from the models
	$(PY) -m fcgicompose.schema --write

bench: venv  ## benchmarks side by side with the I/O floor and Ansible (not part of make test)
	$(PY) -m bench

fuzz: venv test-deps  ## >= 10,000 generated specs through the loader and the real validators
	$(PY) -m fuzz

clean:
	rm -rf $(VENV) $(DEMO_ROOT) .pytest_cache .mypy_cache .ruff_cache
