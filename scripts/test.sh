#!/usr/bin/env bash
# Fresh machine → the default test suite (offline, CPU; under 15 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
