#!/usr/bin/env bash
# The GPU measurements still owed (issues 5 and 9), as ONE prepared script for a lent H100/H200.
# The device image has torch, torchvision, timm and scipy but not rbx's other dependencies, no
# pyautoattack, no robustbench and no internet; everything else travels in .gpu/ (<= 64 MiB).
#
# Prepare on the CPU machine (once):
#   python ../shared/tools/gpu_bundle.py .gpu --test 1000               # data slice, models, slim pyautoattack
#   .venv/bin/pip install --no-deps --target .gpu/site tqdm torchattacks   # pure-Python extras the image lacks
#   echo /.gpu/ >> .git/info/exclude
#   GPU_DRY_RUN=1 bash benchmarks/gpu_checks.sh                         # the same script at tiny size on CPU
# Run on the device (device tool), then copy $OUT into results/gpu/ and commit it with this provenance:
#   run(command="bash benchmarks/gpu_checks.sh", carry=[".gpu"], timeout_s=600)   # 230 + 90 + 270 s at most
# Without robustbench, `resnet18` uses rbx's own key-compatible definition (tested to give the same logits).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/.gpu/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export RBX_DATA="$PWD/.gpu/data" RBX_MODELS="$PWD/.gpu/models"
PY=${PYTHON:-python}
N=${N:-500}
DEV=cuda
BS=500
if [ -n "${GPU_DRY_RUN:-}" ]; then N=16; DEV=cpu; BS=16; fi

{ date -u; $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"; \
  git log -1 --format='commit %H' 2>/dev/null || true; } | tee "$OUT/provenance.txt"

# 1. Speed (issue 9): ceiling, rbx vs torchattacks PGD, APGD-CE vs pyautoattack, switches.
timeout 230 $PY benchmarks/perf.py --model cifar10-resnet18-linf-at --n "$N" --device "$DEV" --batch-size "$BS" \
    --variants --repeat 3 --out "$OUT/perf_resnet18_n$N" 2>&1 | grep -v Warning | tail -25
# 1b. Union-only (issue 19): the default suite in full and union-only, back to back; union flags must be identical.
timeout 90 $PY benchmarks/perf.py --model cifar10-resnet18-linf-at --n "$N" --device "$DEV" --batch-size "$BS" \
    --no-quick --repeat 1 --union-only --out "$OUT/perf_resnet18_union_only_n$N" 2>&1 | grep -v Warning | tail -12
# 2. Strength and time against AutoAttack standard, union of three threat models (issues 5 and 9).
timeout 270 $PY benchmarks/aa_vs_rbx.py --model cifar10-resnet18-linf-at --n "$N" --device "$DEV" --batch-size "$BS" \
    --out "$OUT/aa_vs_rbx_resnet18_n$N" 2>&1 | grep -v Warning | tail -15
ls -la "$OUT"
