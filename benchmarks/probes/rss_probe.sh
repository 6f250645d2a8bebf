#!/usr/bin/env bash
# Resident memory over a full-IMDb `sft` run: RSS and its high-water mark every 10 s, with the last logged step.
#   bash benchmarks/probes/rss_probe.sh TAG STEPS [ENV=VALUE ...]   e.g. ONEDNN_PRIMITIVE_CACHE_CAPACITY=1024
# Writes /tmp/bench/rss_TAG.trace (one line per sample) and appends the run's result to /tmp/bench/rss_probe_results.jsonl.
set -euo pipefail
TAG=$1; STEPS=$2; shift 2
cd "$(dirname "$0")/../.."
RD=/tmp/rss-probe-$TAG
mkdir -p /tmp/bench && rm -rf "$RD" "/tmp/bench/rss_$TAG.trace"
env "$@" .venv/bin/python benchmarks/classifier_sst2.py --task imdb --max-examples 0 --epochs 1 --methods sft \
  --runs-dir "$RD" --out /tmp/bench/rss_probe_results.jsonl \
  --set train.mixed_precision=bf16 "train.max_steps=$STEPS" train.log_every=10 > "/tmp/bench/rss_$TAG.log" 2>&1 &
PID=$!
while kill -0 $PID 2>/dev/null; do
  rss=$(awk '/VmRSS/{print $2}' /proc/$PID/status 2>/dev/null || true)
  hwm=$(awk '/VmHWM/{print $2}' /proc/$PID/status 2>/dev/null || true)
  step=$(grep -h '"split": "train"' "$RD"/*/metrics.jsonl 2>/dev/null | tail -1 | grep -o '"step": [0-9]*' || true)
  echo "$(date +%s) rss_kb=$rss hwm_kb=$hwm $step" >> "/tmp/bench/rss_$TAG.trace"
  sleep 10
done
wait $PID
