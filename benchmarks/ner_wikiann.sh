#!/usr/bin/env bash
# sft, rl from the pretrained encoder, sft -> rl on a seeded WikiANN-en subset, one process each (peak RSS per method).
# Usage (repository root): bash benchmarks/ner_wikiann.sh [extra args for ner_wikiann.py, e.g. --train 2000 --dev 1000]
set -euo pipefail
PY=${PY:-.venv/bin/python}
for method in sft rl sft-rl; do
  PYTHONPATH=. nice -n 5 "$PY" benchmarks/ner_wikiann.py --method "$method" "$@"
done
