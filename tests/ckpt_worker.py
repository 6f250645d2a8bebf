"""A checkpoint write failing on one process of a real 2-process gloo group; tests/test_distributed.py launches it.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ckpt_worker.py OUT_PREFIX RUNS_DIR

Every process calls `Checkpointer.save` three times: at step 1, process 1's random-state file fails to write
(ENOSPC); at step 2, the main process's weights fail to write; step 3 goes through. Each process writes what
each save raised to OUT_PREFIX-<rank>.json. Before the processes agreed between the parts of a save, the
process that had not failed waited at the next barrier for ever.
"""
from __future__ import annotations

import errno
import gc
import json
import sys
from unittest import mock

import torch

from rewardtune import checkpoint
from rewardtune.checkpoint import CheckpointError, Checkpointer, CheckpointSettings
from rewardtune.stop import StopGuard
from rewardtune.config import load_config
from rewardtune.run import start_run
from rewardtune.train.gen_config import GenRLConfig


def full(*_: object, **__: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def main(out: str, runs_dir: str) -> None:
    cfg = load_config(GenRLConfig, None, [f"runs_dir={runs_dir}", "name=ckpt", "data.path=demo-prompts"])
    run = start_run(cfg, cfg.name, cfg.runs_dir, cfg.seed)
    rank = run.accelerator.process_index
    model = torch.nn.Linear(2, 2)
    cp = Checkpointer(run, CheckpointSettings(), {"model": model}, torch.optim.SGD(model.parameters(), lr=0.1), None,
                      StopGuard(0))
    faults = {1: ("save_rng", 1), 2: ("save_checkpoint", 0), 3: (None, None)}
    said = {}
    for step, (name, where) in faults.items():
        patch = mock.patch.object(checkpoint, name, full) if name and rank == where else mock.MagicMock()
        try:
            with patch:
                cp.save(step, {"step": step})
            said[step] = "saved"
        except CheckpointError as e:
            said[step] = str(e)
    with open(f"{out}-{rank}.json", "w", encoding="utf-8") as fh:
        json.dump(said, fh)
    torch.distributed.barrier()
    gc.collect()  # as the CLI does: DDP models and accelerators in reference cycles would free gloo work at exit
    torch.distributed.destroy_process_group()  # left to interpreter shutdown, gloo can abort the process


if __name__ == "__main__":
    main(*sys.argv[1:3])
