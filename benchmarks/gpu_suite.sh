#!/usr/bin/env bash
# The GPU checks of issue 24 in one script, for a short lease of one GPU (written to stay under 8 minutes on an H200).
#
#   bash benchmarks/gpu_suite.sh              # on the GPU machine, from a copy of the repository
#   GPU_SUITE_DRY=1 bash benchmarks/gpu_suite.sh   # anywhere: toy models on the CPU, to know the script runs
#
# Needs the repository and the GPU image's torch, transformers, peft and accelerate; nothing else travels: the
# models are built from a config with random weights (benchmarks/gpu_models.py). TRL and datasets come as wheels in
# benchmarks/wheels/ (not committed; fetch them with
#   pip download trl==1.16.0 datasets==5.2.0 --no-deps -d benchmarks/wheels
# ), installed --no-deps into a folder of the work directory; without them TRL is skipped and the table says so.
#
# Steps: (1) tests/test_gpu.py, (2) the two models, (3) GRPO steps of rewardtune (its defaults, then gen.cuda_graph)
# and TRL at 4×4 prompts×samples × 32 tokens and 16×8 × 256 tokens on each model, each step under a time limit,
# (4) the table: s/step, × TRL, sampling tokens/s, peak GPU memory. Raw rows: $WORK/results.jsonl.
# Environment: PYTHON (default python), GPU_SUITE_WORK (default /tmp/rewardtune-gpu-suite), GPU_SUITE_STEPS (3).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
WORK=${GPU_SUITE_WORK:-/tmp/rewardtune-gpu-suite}
DRY=${GPU_SUITE_DRY:-0}
STEPS=${GPU_SUITE_STEPS:-3}
START=$(date +%s)
mkdir -p "$WORK"
: > "$WORK/results.jsonl"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
say() { echo "== gpu_suite [$(( $(date +%s) - START ))s] $*"; }

if [ "$DRY" = 1 ]; then
    SIZES="1x2x4,2x2x8"; EXTRA="--cpu --vocab 512 --step-timeout 60"; LIMIT=300
    say "dry run: toy models on the CPU (GPU_SUITE_DRY=1)"
else
    SIZES="4x4x32,16x8x256"; EXTRA="--step-timeout 45"; LIMIT=170
    $PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" \
        || { echo "gpu_suite: no CUDA device (GPU_SUITE_DRY=1 runs the toy version)"; exit 1; }
fi

HAVE_TRL=0
if ls benchmarks/wheels/trl-*.whl >/dev/null 2>&1; then
    $PY -m pip install --quiet --no-deps --target "$WORK/site" benchmarks/wheels/*.whl >/dev/null 2>&1 || true
    if PYTHONPATH="$PYTHONPATH:$WORK/site" $PY -c "import trl, datasets" 2>/dev/null; then
        HAVE_TRL=1
    else
        echo "gpu_suite: NOTE the wheels in benchmarks/wheels/ installed but 'import trl, datasets' fails: TRL skipped"
    fi
else
    echo "gpu_suite: NOTE no TRL wheels in benchmarks/wheels/ (pip download trl==1.16.0 datasets==5.2.0 --no-deps -d benchmarks/wheels): TRL skipped"
fi

say "1/4 tests/test_gpu.py"
timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -n 15

say "2/4 models"
timeout 120 $PY benchmarks/gpu_models.py "$WORK/models" $([ "$DRY" = 1 ] && echo --dry) || exit 1

say "3/4 GRPO steps"
for model in smollm2-135m llama-400m; do
    timeout $LIMIT $PY benchmarks/gpu_grpo.py --framework rewardtune --model "$WORK/models/$model" --sizes "$SIZES" \
        --steps "$STEPS" --work "$WORK" --out "$WORK/results.jsonl" $EXTRA > "$WORK/rewardtune-$model.log" 2>&1 \
        || say "rewardtune on $model: exit $? (log: $WORK/rewardtune-$model.log)"
    if [ "$HAVE_TRL" = 1 ]; then
        PYTHONPATH="$PYTHONPATH:$WORK/site" timeout $LIMIT $PY benchmarks/gpu_grpo.py --framework trl \
            --model "$WORK/models/$model" --sizes "$SIZES" --steps "$STEPS" --work "$WORK" --out "$WORK/results.jsonl" \
            $EXTRA > "$WORK/trl-$model.log" 2>&1 || say "TRL on $model: exit $? (log: $WORK/trl-$model.log)"
    fi
    say "$model done"
done

say "4/4 table ($( [ "$HAVE_TRL" = 1 ] && echo "with TRL" || echo "TRL SKIPPED: no wheels" ))"
$PY benchmarks/gpu_grpo.py --table "$WORK/results.jsonl"
