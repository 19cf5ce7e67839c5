# Two commands on a fresh machine:
#   make run    create .venv if missing, install the default deps + [tb,plot], run the default experiment
#   make test   create .venv if missing, install [test] (+ EXTRAS), run the test suite
#   (make test-fast: the fast tier, each package's unit tests + one tiny run; make lint: ruff)
# CI (.ci/run) runs `make test EXTRAS=interop,jpeg`: the open_clip / PyTorch equivalence tests and the
# libjpeg-turbo window-decode tests need those extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/supervised_digits
PYTEST_ARGS ?=
EXTRAS ?=
comma := ,
RUN_EXTRAS := tb,plot
TEST_EXTRAS := test$(if $(EXTRAS),$(comma)$(EXTRAS))

.PHONY: run test test-fast lint install install-test clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# One stamp per extras set: `make run` never pulls the test or interop extras.
$(VENV)/.installed-%: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e ".[$*]"
	touch $@

install: $(VENV)/.installed-$(RUN_EXTRAS)

install-test: $(VENV)/.installed-$(TEST_EXTRAS)

run: install
	$(PY) -m jaxsup.train --config configs/supervised_digits.py --workdir $(WORKDIR)

test: install-test
	$(PY) -m pytest -q -n 2 $(PYTEST_ARGS)

test-fast: install-test
	$(PY) -m pytest -q -n 2 -m "fast and not slow and not gpu" $(PYTEST_ARGS)

lint: install-test
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) workdirs
