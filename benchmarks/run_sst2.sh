#!/usr/bin/env bash
# The SST-2 classifier comparison, one process per method (so peak RSS is per method).
# Usage: bash benchmarks/run_sst2.sh [MAX_EXAMPLES] [EPOCHS]   (results appended to benchmarks/results.jsonl)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-0}; E=${2:-1}
B=".venv/bin/python benchmarks/classifier_sst2.py --max-examples $N --epochs $E"
$B --methods trainer
$B --methods sft
$B --methods trainer --bf16
$B --methods sft --set train.mixed_precision=bf16
$B --methods sft --set train.mixed_precision=bf16 train.freeze_embeddings=true
$B --methods rl-expected
$B --methods rl-reinforce
$B --methods rl-value
