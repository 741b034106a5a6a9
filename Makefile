# The two user-facing commands (see README):
#   make demo      create .venv if missing, install, run the default union suite on the embedded model and
#                  CIFAR-10 slice (offline), write the record and leaderboard into results-demo/ (ignored by git)
#   make test      install, then run the fast test tier (tests marked slow or gpu are left out). Measured 2026-12-04
#                  on this project's 2-core CPU machine: about 4 minutes of CPU time (230 s user+sys, tests and their
#                  subprocesses); wall time there was about 25 minutes because other jobs held both cores (load ~11)
#   make test-all  the whole suite, slow tests included (what CI runs: .ci/run); gpu tests still need -m gpu
# Bigger demos: make demo DEMO_N=1000, or make demo DEMO_MODEL=cifar10-resnet18-linf-at DEMO_DATA=cifar10
# (those two need ../shared, $RBX_MODELS / $RBX_DATA or internet; see README, "Data and models").
#
# What the install brings: rbx (editable) with torch and torchvision (pinned in constraints.txt), robustbench,
# pyautoattack, pandas, matplotlib and the test tools. On Linux x86-64 PyPI's torch wheels carry CUDA: about 6 GB
# installed (this project's .venv: 6.3 GB, of which 3.2 GB NVIDIA libraries, 1.2 GB torch, 0.9 GB triton).
# On a Linux machine without nvidia-smi the install adds PyTorch's CPU-only index (TORCH_INDEX) when it answers
# within 5 s (a machine that cannot reach it installs from PyPI alone instead of retrying it for every package), whose wheels are
# far smaller; pip takes a CPU wheel of the pinned version from there when one exists, else PyPI's.
# Choose yourself with TORCH_INDEX=<index URL> (or TORCH_INDEX= for PyPI's default wheels).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_MODEL ?= cifar10-smallcnn-linf-at
DEMO_DATA ?= cifar10-1k
DEMO_N ?= 300
DEMO_DIR ?= results-demo
CPU_INDEX := https://download.pytorch.org/whl/cpu
# Expanded (and the index probed) only by the install recipe.
CPU_INDEX_REACHABLE = $(shell $(PYTHON) -c "import urllib.request as u; u.urlopen('$(CPU_INDEX)/', timeout=5)" >/dev/null 2>&1 && echo yes)
TORCH_INDEX ?= $(if $(filter Linux,$(shell uname -s)),$(if $(shell command -v nvidia-smi 2>/dev/null),,$(if $(CPU_INDEX_REACHABLE),$(CPU_INDEX))),)
# Reinstalls when the package metadata or the pins change.
STAMP := $(VENV)/.rbx-installed

.PHONY: demo test test-all

demo: $(STAMP)
	@echo "rbx: running the default union suite (Linf, L2, L1) on $(DEMO_MODEL), first $(DEMO_N) images of $(DEMO_DATA)"
	$(BIN)/rbx run --model $(DEMO_MODEL) --dataset $(DEMO_DATA) --n-examples $(DEMO_N) --results-dir $(DEMO_DIR)
	$(BIN)/rbx leaderboard --results-dir $(DEMO_DIR)
	@echo ""
	@echo "rbx: done. The record is in $(DEMO_DIR)/records/, the leaderboard in $(DEMO_DIR)/leaderboard.{md,csv,html}."
	@echo "rbx: to run rbx yourself, put it on PATH:  source $(VENV)/bin/activate   (or call $(BIN)/rbx)"
	@echo "rbx: then e.g.  rbx run --model file:my_model.pt --arch my_package.nets:Net --n-examples 100"

test: $(STAMP)
	$(BIN)/python -m pytest

test-all: $(STAMP)
	$(BIN)/python -m pytest -m "not gpu"

$(STAMP): pyproject.toml constraints.txt
	@echo "rbx: installing rbx and its dependencies into $(VENV) (torch and torchvision pinned in constraints.txt)."
	@echo "rbx: torch wheels: $(if $(TORCH_INDEX),PyPI plus $(TORCH_INDEX) (pip takes its CPU-only wheel of the pinned version where it has one; TORCH_INDEX= for PyPI only),PyPI's default (on Linux x86-64 with CUDA: about 6 GB installed))."
	@echo "rbx: the first install takes minutes; pip lists each package as it goes."
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -c constraints.txt \
		$(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -e '.[test]'
	touch $(STAMP)
	@echo "rbx: installed. $$(du -sh $(VENV) 2>/dev/null | cut -f1) in $(VENV)."
