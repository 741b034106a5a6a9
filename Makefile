# The two user-facing commands (see README):
#   make demo   create .venv if missing, install, run the default benchmark, write results/ and results/leaderboard.md
#   make test   install, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_N ?= 100
# Reinstalls when the package metadata or the pins change.
STAMP := $(VENV)/.rbx-installed

.PHONY: demo test

demo: $(STAMP)
	$(BIN)/rbx run --n-examples $(DEMO_N)
	$(BIN)/rbx leaderboard

test: $(STAMP)
	$(BIN)/python -m pytest

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)
