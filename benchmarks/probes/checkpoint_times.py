"""Save and load times of a resumable checkpoint for the bundled models (weights + AdamW state + RNG).

    .venv/bin/python benchmarks/probes/checkpoint_times.py

Each case: build the model, take one AdamW step (so the optimiser holds its moment estimates),
then time `save_checkpoint` (fsynced, atomic rename) and `load_checkpoint` into a fresh model.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))  # benchmarks/, for record.py
from record import record  # noqa: E402

from rewardtune.checkpoint import load_checkpoint, save_checkpoint, save_rng, tmp_folder
from rewardtune.config import LoraSettings
from rewardtune.models import apply_lora, load_causal_lm, load_classifier


def build(case: str):
    if case.startswith("minilm"):
        model, _ = load_classifier("minilm-l6", 2)
    else:
        model, _ = load_causal_lm("smollm2-135m-instruct")
    if case.endswith("lora"):
        model = apply_lora(model, LoraSettings(r=16, alpha=32))
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ids = torch.randint(0, 1000, (2, 16))
    out = model(input_ids=ids)
    out.logits.float().mean().backward()
    optim.step()
    optim.zero_grad()
    return model, optim


def main() -> None:
    for case in ("minilm-l6 full", "smollm2-135m full", "smollm2-135m lora"):
        model, optim = build(case)
        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            t = time.perf_counter()
            tmp_folder(root, 1).mkdir(parents=True)
            save_rng(tmp_folder(root, 1))
            folder = save_checkpoint(root, 1, {"model": model}, optim, None, {}, "", keep_last=2)
            save_s = time.perf_counter() - t
            size = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
            fresh, fresh_optim = build(case)
            t = time.perf_counter()
            load_checkpoint(folder, {"model": fresh}, fresh_optim, None)
            load_s = time.perf_counter() - t
        row = {"case": case, "trainable_params_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
               "checkpoint_mib": round(size, 1), "save_s": round(save_s, 3), "load_s": round(load_s, 3)}
        record(row)


if __name__ == "__main__":
    main()
