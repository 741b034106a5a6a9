# The two user-facing commands (see README):
#   make demo   create .venv if missing, install, run the default union suite on the embedded model and
#               CIFAR-10 slice (offline), write the record and leaderboard into results-demo/ (ignored by git)
#   make test   install, then run the test suite
# Bigger demos: make demo DEMO_N=1000, or make demo DEMO_MODEL=cifar10-resnet18-linf-at DEMO_DATA=cifar10
# (those two need ../shared, $RBX_MODELS / $RBX_DATA or internet; see README, "Data and models").
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_MODEL ?= cifar10-smallcnn-linf-at
DEMO_DATA ?= cifar10-1k
DEMO_N ?= 300
DEMO_DIR ?= results-demo
# Reinstalls when the package metadata or the pins change.
STAMP := $(VENV)/.rbx-installed

.PHONY: demo test

demo: $(STAMP)
	$(BIN)/rbx run --model $(DEMO_MODEL) --dataset $(DEMO_DATA) --n-examples $(DEMO_N) --results-dir $(DEMO_DIR)
	$(BIN)/rbx leaderboard --results-dir $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)
