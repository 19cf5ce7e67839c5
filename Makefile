# Two commands on a fresh machine:
#   make run    create .venv if missing, install, run the default experiment
#   make test   create .venv if missing, install, run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/supervised_digits
PYTEST_ARGS ?=

.PHONY: run test install clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,tb,plot,interop,jpeg]"
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m jaxsup.train --config configs/supervised_digits.py --workdir $(WORKDIR)

test: install
	$(PY) -m pytest -q -n 2 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) workdirs
