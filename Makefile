# Set-up and test commands of setapay-engine; README.md explains them.
#
# Everything runs in ./.venv, created on first use. The install is remembered
# in a stamp file so that a second `make test` goes straight to the tests; it
# is redone when the package description or the kernel sources change.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SETAPAY := $(VENV)/bin/setapay
STAMP := $(VENV)/.setapay-installed
# The shared rating vectors live beside the repository; CI and clones elsewhere point this at them.
SETAPAY_VECTORS_DIR ?= ../shared/vectors
# The build needs these in the venv because the package is built without an
# isolated environment (faster, and works offline once they are installed).
BUILD_REQUIREMENTS := "setuptools>=68" wheel "Cython>=3.0,<3.4" "numpy>=1.26"

.PHONY: install lint test test-vectors demo bench clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml setup.py $(wildcard ext/*.pyx ext/*.pxd ext/*.h MANIFEST.in)
	$(PY) -m pip install --quiet $(BUILD_REQUIREMENTS)
	$(PY) -m pip install --quiet --no-build-isolation -e '.[test]'
	touch $@

# The suite runs with the compiled kernel (the default when it is built), then
# the tests of the engine and of the store that calls it run again with the
# pure-Python twin forced: tests/rating (which also holds the two engines equal
# on every input in both passes), tests/store (the ledger, its group paths, the
# re-rate, the import) and the top-level tests (the demo among them). The tests
# above the store (HTTP, pages, finance, settlement, lifecycle, concurrency)
# reach the engine only through that store code and run once: on a slow
# two-core machine the compiled pass alone took 55 minutes, and the whole suite
# twice would not fit CI's 90.
PURE_PYTHON_TESTS = tests/rating tests/store $(wildcard tests/test_*.py)
test: $(STAMP)
	$(PY) -m pytest
	SETAPAY_PURE_PYTHON=1 $(PY) -m pytest $(PURE_PYTHON_TESTS)
	$(MAKE) --no-print-directory test-vectors

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test-vectors: $(STAMP)
	@test -d "$(SETAPAY_VECTORS_DIR)" || { echo "no rating vectors at $(SETAPAY_VECTORS_DIR); set SETAPAY_VECTORS_DIR" >&2; exit 1; }
	$(SETAPAY) rate --check --engine python $(SETAPAY_VECTORS_DIR)/*.json
	$(SETAPAY) rate --check --engine cython $(SETAPAY_VECTORS_DIR)/*.json

demo: $(STAMP)
	$(SETAPAY) demo

bench: $(STAMP)
	$(PY) bench/rating.py

clean:
	rm -rf build *.egg-info engine/rating/_kernel_c*.so ext/_kernel_c.c $(STAMP)
