#!/usr/bin/env bash
# The GPU measurements of the batched eta* search, as one prepared run for a machine with a CUDA
# GPU (a session that is lent the project's H200 has ~15 device minutes: run this once, with a
# 600 s limit, and copy the JSON files from $OUT into benchmarks/results/).
#
#   1. CUDA tests of the trainer and search (equivalence with the CPU, no host-device sync per
#      step);
#   2. bench_search.py --device cuda: sequential vs batched on the default grid (target >= 20x);
#   3. bench_search.py --grid paper --device cuda --no-sequential: the paper grid, batched only,
#      timed configuration by configuration (JSON written after every configuration, so a run
#      cut short by BUDGET_S still reports what finished).
#
# Uses the machine's python3 (it must hold torch with CUDA, numpy, scipy, pandas, pyyaml,
# hypothesis, pytest) with this checkout on PYTHONPATH; nothing is installed. Fashion-MNIST:
# copy /usr/share/datasets/fashion-mnist/*.gz into data/raw/fashion-mnist/ (git-ignored) and
# carry that folder; without it the benchmarks fall back to the Gaussian task.
#
# Exit status: 0 if all three parts finished, 1 if one failed or was cut short by BUDGET_S.
#
#   DEVICE=cpu PY=.venv/bin/python BUDGET_S=60 bash benchmarks/gpu_check.sh   # dry run on a CPU
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MILR_PROGRESS=off
PY=${PY:-python3}
OUT=${OUT:-build/gpu_check}
DEVICE=${DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-480}   # seconds for all three parts together
mkdir -p "$OUT"
if ! $PY -c "import torch, milr" 2>/dev/null; then
  echo "gpu_check: '$PY' cannot import torch and milr; set PY (e.g. PY=.venv/bin/python)" >&2
  exit 2
fi
rc=0
t0=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - t0) )); }
# a time limit of at least 1 s (timeout 0 would mean none)
limit() { local t=$(( $1 )); (( t < 1 )) && t=1; echo $t; }

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  'available', torch.cuda.is_available())"; } | tee "$OUT/machine.txt"

echo "== 1. CUDA tests ($(left) s left)"
timeout "$(limit "$(left) / 6")" $PY -m pytest -q -p no:cacheprovider tests/test_train.py \
  tests/test_search.py 2>&1 | tee "$OUT/tests_trainer.log" | tail -5 || rc=1

echo "== 2. sequential vs batched, default grid ($(left) s left)"
timeout "$(limit "$(left) / 2")" $PY benchmarks/bench_search.py --device "$DEVICE" \
  --out "$OUT/bench_search_${DEVICE}_default.json" 2>&1 | tee "$OUT/bench_default.log" || rc=1

echo "== 3. paper grid, batched only ($(left) s left)"
timeout "$(limit "$(left) - 10")" $PY benchmarks/bench_search.py --device "$DEVICE" --grid paper \
  --no-sequential --out "$OUT/bench_search_${DEVICE}_paper.json" 2>&1 \
  | tee "$OUT/bench_paper.log" || rc=1   # 124 = cut by the budget: the JSON keeps what finished
echo "done in $(( $(date +%s) - t0 )) s (status $rc); results in $OUT"
exit $rc
