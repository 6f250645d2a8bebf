"""The epoch loop shared by the classifier and reward-model trainers, with exact resumption.

A trainer supplies what differs: the batches of an epoch (from a position) and the loss of one
batch. This loop does the rest in one place: clipping, the NaN/inf guard, the optimiser and
scheduler steps, logging, checkpoints (every N steps, at the end, and on SIGTERM/SIGINT), the
end-of-epoch evaluation, and continuing from a checkpoint exactly where it stopped.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from tqdm.auto import tqdm

from ..checkpoint import Checkpointer, CheckpointSettings, rng_state
from ..stop import StopGuard
from ..rewards import RewardError
from ..collectives import over_processes
from ..run import RunContext, seed_this_process

# One batch → (loss already scaled for backward, rows it holds, stats to log, batch row ids).
BatchLoss = Callable[[Any], tuple[torch.Tensor, int, dict[str, Any], Any]]


@dataclass
class LoopResult:
    step: int = 0
    best: float | None = None
    seen: int = 0
    train_s: float = 0.0
    stopped: bool = False
    signal: str = ""  # SIGTERM / SIGINT when a signal stopped the run
    checkpoint_save_s: list[float] = field(default_factory=list)


def train_epochs(run: RunContext, ckpt: CheckpointSettings, model: Any, optim: Any, sched: Any, *, epochs: int,
                 total: int, max_grad_norm: float, log_every: int,
                 batches: Callable[[int, int], Iterable[Any]], batch_loss: BatchLoss,
                 end_of_epoch: Callable[[int, int, float | None], float | None],
                 state: dict[str, Any] | None = None, desc: str = "train", show_progress: bool = True,
                 after_step: Callable[[int, int, float | None], float | None] | None = None,
                 at_start: Callable[[], float | None] | None = None) -> LoopResult:
    """Run `epochs` (at most `total` optimiser steps); `state` holds objects with state_dict/load_state_dict (EMA
    baselines, reward statistics) checkpointed with the run. `after_step(step, epoch, best)` → best: an evaluation
    between steps (before the step's checkpoint, so a resumed run does not repeat it). `at_start()` → best: the
    start model's score (a fresh run only; the best kept can be the start), after step 1's loss and before its
    update, so a reward failing at step 1 leaves an empty folder (`discard_failed_start`)."""
    state, guard = state or {}, StopGuard(ckpt.stop_after)
    cp = Checkpointer(run, ckpt, {"model": model}, optim, sched, guard)
    res, epoch0, start = _restore_or_start(run, cp, state)
    at_start = at_start if res.step == 0 else None

    def snapshot(epoch: int, batch: int) -> dict[str, Any]:
        return {"epoch": epoch, "batch": batch, "best": res.best, "seen": res.seen, "train_s": res.train_s,
                "algo": {k: obj.state_dict() for k, obj in state.items()}}

    bar = run.progress = tqdm(total=total, initial=res.step, disable=not (show_progress and run.is_main), desc=desc)
    with guard:
        for epoch in range(epoch0, epochs):
            model.train()
            t_epoch, first = time.time(), start if epoch == epoch0 else 0
            for i, batch in enumerate(batches(epoch, first), start=first):
                loss, rows, stats, ids = _loss_or_rescue(batch_loss, batch, cp, res.step, lambda: snapshot(epoch, i))
                if at_start is not None:  # the weights are still the start's: only gradients have been computed
                    res.best, at_start = _score_start(at_start, model), None
                _update(run, cp, model, optim, sched, max_grad_norm, loss, ids, rows, res)
                bar.update(1)
                if res.step % log_every == 0 or res.step == total:
                    row = over_processes(run, {"loss": loss.detach(), **stats}, getattr(batch, "weight", 1.0))
                    run.log(res.step, epoch=epoch, split="train", lr=sched.get_last_lr()[0], **row)
                res.best = after_step(res.step, epoch, res.best) if after_step else res.best
                last = res.step >= total
                if not last and cp.step_done(res.step, lambda: snapshot(epoch, i + 1)):
                    res.train_s += time.time() - t_epoch
                    return _stopped(res, cp, bar)
                if last:
                    break
            res.train_s += time.time() - t_epoch  # evaluation time is not training time
            res.best = end_of_epoch(res.step, epoch, res.best)
            if res.step >= total:
                break
        cp.save(res.step, snapshot(epochs, 0))  # the end: a later, longer run may continue from here
    bar.close()
    res.checkpoint_save_s = cp.save_s
    return res


def _score_start(at_start: Callable[[], float | None], model: Any) -> float | None:
    best = at_start()
    model.train()  # the evaluation left it in eval mode
    return best


def _update(run: RunContext, cp: Checkpointer, model: Any, optim: Any, sched: Any, max_grad_norm: float,
            loss: torch.Tensor, ids: Any, rows: int, res: LoopResult) -> None:
    """One optimiser step from the computed gradients (not taken when `cp` finds the loss or the norm not finite)."""
    norm = run.accelerator.clip_grad_norm_(model.parameters(), max_grad_norm or float("inf"))
    if cp.ok_to_step(res.step + 1, loss, norm, ids):
        optim.step()
    sched.step()
    optim.zero_grad(set_to_none=True)
    res.step += 1
    res.seen += rows


def _restore_or_start(run: RunContext, cp: Checkpointer, state: dict[str, Any]) -> tuple[LoopResult, int, int]:
    """The loop's counters and position (epoch, batch) from the newest checkpoint, with `state`; or a fresh start."""
    res, saved = LoopResult(), cp.restore()
    if not saved:
        seed_this_process(run)  # the batch order has its own seed: this changes dropout masks and sampled actions
        return res, 0, 0
    res.step, res.best, res.seen, res.train_s = saved["step"], saved["best"], saved["seen"], saved["train_s"]
    for k, obj in state.items():
        obj.load_state_dict(saved["algo"][k])
    return res, saved["epoch"], saved["batch"]


def _loss_or_rescue(batch_loss: BatchLoss, batch: Any, cp: Checkpointer, done: int,
                    snapshot: Callable[[], dict[str, Any]]) -> tuple[torch.Tensor, int, dict[str, Any], Any]:
    """The batch's loss (and backward pass). A reward that fails does so before this step's update: the steps before
    it are kept first (`Checkpointer.save_before_failure`: resumable exactly), and the error says where."""
    began = rng_state()
    try:
        return batch_loss(batch)
    except RewardError as e:
        raise RewardError(f"{e}; while scoring step {done + 1}; {cp.save_before_failure(done, snapshot, began)}") from e


def _stopped(res: LoopResult, cp: Checkpointer, bar: Any) -> LoopResult:
    bar.close()
    res.stopped, res.signal, res.checkpoint_save_s = True, cp.guard.stop_signal, cp.save_s
    return res
