"""Classifier REINFORCE advantages under a real 2-process gloo group; tests/test_distributed.py launches it.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/gather_worker.py OUT.json BASELINE

Rank 0 holds 3 rows of a 5-row batch and rank 1 holds 2 (a last batch that splits unevenly, so the
gather must pad); the main process writes every process's advantages and EMA, and one process's
advantages of the whole batch, to OUT.json.
"""
from __future__ import annotations

import gc
import json
import sys

import torch
from accelerate import Accelerator

from rewardtune.algorithms import EMABaseline
from rewardtune.collectives import gather_rows
from rewardtune.train.rl_classifier import RLSettings, label_advantages

STEPS = [[[1.0, 0.0], [5.0, 5.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]],
         [[0.0, 1.0], [5.0, 5.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]]
KEEP = [1.0, 0.0, 1.0, 1.0, 1.0]  # row 1: a failed reward, dropped


def main(out: str, baseline: str) -> None:
    acc = Accelerator(cpu=True)
    rank, rl = acc.process_index, RLSettings(estimator="reinforce", baseline=baseline)
    rows = slice(0, 3) if rank == 0 else slice(3, 5)
    gather, mine, one = gather_rows(acc), EMABaseline(), EMABaseline()
    result: dict = {"world": acc.num_processes, "shards": [], "whole": [], "ema": []}
    for rewards in map(torch.tensor, STEPS):
        keep = torch.tensor(KEEP)
        adv = label_advantages(rewards[rows], keep[rows], rl, mine, gather, rank)
        result["shards"].append(torch.cat(gather(adv)).tolist())
        result["whole"].append(label_advantages(rewards, keep, rl, one).tolist())
    result["ema"] = [float(v) for v in acc.gather(torch.tensor([mine.value]))] + [one.value]
    if acc.is_main_process:
        with open(out, "w", encoding="utf-8") as fh:
            json.dump(result, fh)
    acc.wait_for_everyone()
    gc.collect()  # as the CLI does: DDP models and accelerators in reference cycles would free gloo work at exit
    torch.distributed.destroy_process_group()  # left to interpreter shutdown, gloo can abort the process


if __name__ == "__main__":
    main(*sys.argv[1:3])
