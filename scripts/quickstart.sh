#!/usr/bin/env bash
# Fresh machine → the main job: set up .venv, then `rewardtune quickstart` (extra args are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."
REWARDTUNE_EXTRAS=test bash scripts/setup.sh  # the trackers are for the tests, not the main job
exec .venv/bin/rewardtune quickstart "$@"
