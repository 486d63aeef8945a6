#!/usr/bin/env bash
# A study config (CONFIG, default configs/study.yaml) on one lent GPU, inside a fixed time budget:
#   [CONFIG=configs/study-long.yaml] bash benchmarks/gpu_study.sh [BUDGET_SECONDS] [WORKERS]  (560 s, 14)
# (DEVICE=cpu runs the same steps on the CPU: a dry run of this script.)
# 1. a CUDA smoke pass: every configuration of the grid, 3 steps, 2 test queries per task (fails loudly),
#    then the CUDA-only tests;
# 2. the study itself (runs trained and evaluated in WORKERS processes sharing the GPU, main configurations
#    first), stopped when the budget nears its end;
# 3. `--finished-only`: encode costs timed alone and the report written from the runs that finished.
# Results go to $OUT (the device tool's folder; default runs/gpu-study-out): results.json, report.md, the
# logs and runs.tgz (each run's result, training record, encode cost and loss log); the plots are redrawn
# from results.json.
set -u
BUDGET=${1:-560}
WORKERS=${2:-14}
START=$(date +%s)
OUT=${OUT:-runs/gpu-study-out}
CONFIG=${CONFIG:-configs/study.yaml}
RUNS=$(python3 -c "import yaml; print(yaml.safe_load(open('$CONFIG'))['out'])")
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT" runs
export PYTHONPATH=src PYTHONUNBUFFERED=1
left() { echo $((BUDGET - ($(date +%s) - START))); }
# run_for SECONDS CMD...: CMD in its own process group, the whole group (worker processes included) ended
# after SECONDS; returns CMD's status, 124 when it was stopped
run_for() {
  local secs=$1; shift
  setsid "$@" & local pid=$!
  ( sleep "$secs"; kill -TERM -- -"$pid" 2>/dev/null; sleep 3; kill -KILL -- -"$pid" 2>/dev/null ) & local dog=$!
  wait "$pid"; local rc=$?
  kill "$dog" 2>/dev/null; kill -KILL -- -"$pid" 2>/dev/null  # no worker outlives its study
  [ $rc -ge 128 ] && return 124 || return $rc
}

python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" || exit 1
CONFIG=$CONFIG python3 - <<'EOF' || exit 1
import os, yaml
cfg = yaml.safe_load(open(os.environ["CONFIG"]))
cfg.pop("quick", None)
cfg.update(out="runs/gpu-smoke", n_test=2, seeds=[0], train={**cfg["train"], "steps": 3})
for r in cfg["runs"]:
    r.pop("seeds", None)
yaml.safe_dump(cfg, open("runs/gpu-smoke.yaml", "w"))
EOF
echo "== smoke: every configuration on $DEVICE ($(left) s left)"
run_for "${SMOKE_S:-150}" python3 -m tteflash.cli study --config runs/gpu-smoke.yaml --device "$DEVICE" --workers "$WORKERS" \
  > "$OUT/smoke.log" 2>&1
rc=$?
grep -vE "Loading weights|Writing model" "$OUT/smoke.log" | tail -40
[ $rc -eq 0 ] || { echo "smoke pass failed (rc $rc)"; exit 1; }

if [ "$DEVICE" = cuda ]; then  # the tests that only run on CUDA (mixed-precision training)
  timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_train_memory.py -k cuda 2>&1 | tail -3
fi
REPORT_S=120  # timing every read-out alone and writing the report
echo "== study: $(($(left) - REPORT_S)) s for training and evaluation"
run_for $(($(left) - REPORT_S)) python3 -m tteflash.cli study --config "$CONFIG" --device "$DEVICE" \
  --workers "$WORKERS" > "$OUT/study.log" 2>&1
echo "study rc $? ($(left) s left)"
grep -E "trained and evaluated" "$OUT/study.log" | tail -40
timeout $(($(left) - 10)) python3 -m tteflash.cli study --config "$CONFIG" --device "$DEVICE" --finished-only \
  2>&1 | grep -vE "Loading weights|Writing model" | tail -20
cp "$RUNS/results.json" "$RUNS/report.md" "$OUT/" 2>/dev/null
tar czf "$OUT/runs.tgz" "$RUNS"/seed*/*/{result,trained,encode_cost}.json "$RUNS"/seed*/*/log.jsonl 2>/dev/null
cat "$RUNS/report.md" 2>/dev/null | head -40
echo "done ($(left) s left)"
