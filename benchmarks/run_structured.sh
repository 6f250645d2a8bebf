#!/usr/bin/env bash
# Issue 22's structured benchmarks at a chosen scale: sft, rl from the pretrained encoder, and sft -> rl, one process
# each (peak RSS per method), for one task. Results are appended to benchmarks/results.jsonl.
# Usage: [RUNS_DIR=runs/structured] bash benchmarks/run_structured.sh TASK MAX_EXAMPLES [MAX_VAL] [EPOCHS] [SEED] [more key=value overrides]
#   e.g. bash benchmarks/run_structured.sh squad 300 150 1 0
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}; RUNS=${RUNS_DIR:-runs/structured}
TASK=$1; N=$2; V=${3:-0}; E=${4:-1}; S=${5:-0}; shift $(( $# < 5 ? $# : 5 ))
for M in ${METHODS:-sft rl sft-rl}; do  # METHODS="sft rl sft-rl sft-sft" adds the control of sft-rl
  PYTHONPATH=$PWD $PY benchmarks/structured_tasks.py --task "$TASK" --method $M --max-examples "$N" --max-val "$V" \
    --epochs "$E" --seed "$S" --runs-dir "$RUNS" --set "$@"
done
