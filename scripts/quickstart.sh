#!/usr/bin/env bash
# Fresh machine → the main job: set up .venv, then `rewardtune quickstart` (extra args are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/rewardtune quickstart "$@"
