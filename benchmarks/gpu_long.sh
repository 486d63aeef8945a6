#!/usr/bin/env bash
# One lent-GPU check for issue 3 (about 9 minutes on an H100):
# 1. the central comparison with 3x longer runs, configs/study-long.yaml, through benchmarks/gpu_study.sh;
# 2. beside it, a longer reasoner stage of the base (REASONING_STEPS, default 1,200 instead of 400) from the
#    stage-1 checkpoint in STAGE1 (commit 8fce73e's checkpoints/base), to see whether more reasoner SFT
#    raises the base's thought accuracy; the checkpoint comes back as $OUT/base-reasoner.tgz.
# As run on 2026-11-26 (docs/results.md): the study's 12 non-explicit runs finished, explicit CoT's
# evaluation did not fit in 555 s, and the reasoner stage, sharing the 16 cores with 13 training
# processes, ran at 0.65 s/step and was cut at step 788: give it a call of its own.
#   bash benchmarks/gpu_long.sh [BUDGET_SECONDS] [WORKERS]   (DEVICE=cpu CONFIG=... for a dry run)
set -u
export OUT=${OUT:-runs/gpu-long-out} PYTHONPATH=src PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}
BUDGET=${1:-560}
mkdir -p "$OUT" runs
( timeout $((BUDGET - 20)) python3 -m tteflash.cli base --perception "${STAGE1:-checkpoints/stage1.work}" \
    --reading-steps 0 --answering-steps 0 --reasoning-steps "${REASONING_STEPS:-1200}" --out runs/base-reasoner --device "$DEVICE" > "$OUT/base.log" 2>&1
  echo "base rc $?" >> "$OUT/base.log"
  tar czf "$OUT/base-reasoner.tgz" -C runs --exclude='*.work*' base-reasoner ) &
CONFIG=${CONFIG:-configs/study-long.yaml} bash benchmarks/gpu_study.sh "$BUDGET" "${2:-13}"
wait
grep -vE "it/s\]|s/it\]" "$OUT/base.log" | tail -30
