"""The `rewardtune` command line, unchanged, plus a check of the process group; tests/test_distributed.py launches it.

    python tests/ddp_worker.py INFO.json sft key=value ...
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py INFO.json rl key=value ...
    accelerate launch --multi_gpu --num_processes 2 tests/ddp_worker.py INFO.json rl key=value ...

Everything after INFO.json goes to `rewardtune.cli.main` as is (with the garbage collector off). Afterwards the
worker checks that no DDP model outlived the command (left to interpreter finalisation, it can abort the finished
process), and that
accelerate formed the process group the launcher started (a silent fallback to N independent
single-process runs would otherwise train N times on all the data and could look like a pass),
and the main process writes INFO.json: process count, distributed type and backend.
"""
from __future__ import annotations

import json
import os
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    info_path, cli_args = argv[0], argv[1:]

    from accelerate import PartialState

    from rewardtune.cli import main as rewardtune_main

    import gc

    from torch.nn.parallel import DistributedDataParallel

    # No automatic collection during the run, as when none happens to run between its end and the process's exit:
    # what the command leaves in reference cycles then stays, unless the command collects it itself.
    gc.disable()
    rc = rewardtune_main(cli_args)
    if rc:
        return rc
    # The command freed its DDP model before closing the process group (gc.get_objects does not collect): one left
    # for interpreter finalisation can abort the finished process there (exit -6).
    left = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
    if left:
        print(f"ddp_worker: {left} DistributedDataParallel model(s) outlived the command", file=sys.stderr)
        return 4

    state = PartialState()  # the state the trainer's Accelerator set up
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if state.num_processes != launched:
        print(f"ddp_worker: the launcher started {launched} processes but accelerate sees {state.num_processes} "
              f"(distributed_type={state.distributed_type}): each process trained alone", file=sys.stderr)
        return 3
    if state.is_main_process:  # (the command has already closed the process group: no barrier here)
        info = {"num_processes": state.num_processes, "distributed_type": state.distributed_type.value,
                "backend": state.backend}
        with open(info_path, "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
