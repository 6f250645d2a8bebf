"""Every collective the trainers call, in one place: gathers, all-reduces and the agreement on failure.

A collective must be called by every process, in the same order, or the process group hangs; keeping them
together makes that contract visible. Each works with one process too (then it is a plain computation).
This module sits below run.py and checkpoint.py (both use it), so it takes a run as anything with an
`accelerator` (and `is_main`) rather than importing RunContext; it imports nothing heavy beyond torch
at the top (accelerate is imported where a function needs it).
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

import torch


class _Run(Protocol):
    """What the collectives read of a RunContext."""

    accelerator: Any

    @property
    def is_main(self) -> bool: ...


def gather_to_cpu(accelerator: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """t → every process's t concatenated in rank order, on the CPU (a collective: every process must call it)."""
    return lambda t: accelerator.gather(t.to(accelerator.device)).cpu()


def gather_rows(acc: Any) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """A gather of each process's (b_i, ...) rows, b_i may differ (a last batch that splits unevenly)."""
    def gather(t: torch.Tensor) -> list[torch.Tensor]:
        sizes = acc.gather(torch.tensor([t.shape[0]], device=acc.device)).tolist()
        padded = acc.gather(acc.pad_across_processes(t.to(acc.device), dim=0)).cpu()  # (world·max b, ...)
        m = max(sizes)
        return [padded[i * m:i * m + n] for i, n in enumerate(sizes)]
    return gather


def failed_ranks(accelerator: Any) -> Callable[[bool], list[int]]:
    """failed → the ranks of the processes that passed True, in order (a collective: every process must call it)."""
    def failed_on(failed: bool) -> list[int]:
        flags = accelerator.gather(torch.tensor([float(failed)], device=accelerator.device)).tolist()
        return [rank for rank, f in enumerate(flags) if f]
    return failed_on


def row_share(acc: Any, n: int) -> slice | None:
    """This process's contiguous share of n rows (rank r of W: rows r·n//W to (r+1)·n//W), or None with one process
    or fewer rows than processes (the caller decides who takes them all then)."""
    world = acc.num_processes
    if world == 1 or n < world:
        return None
    return slice(acc.process_index * n // world, (acc.process_index + 1) * n // world)


SUMMED = ("reward_dropped",)  # counts: summed over processes; the other numbers are means over the global batch


def over_processes(run: _Run, values: dict[str, Any], weight: float = 1.0) -> dict[str, Any]:
    """A train row's numbers over every process's share of the batch (one all-reduce), not the main process's alone.
    Each process's numbers count by its share's `weight` (world·local/global rows; 0 for a filler share, which holds
    no row of its own): means are row-weighted over the global batch, counts summed over real shares. Every process
    holds the same keys (the trainers' stats depend on the config only), reduced in sorted order."""
    acc = run.accelerator
    if acc.num_processes == 1:
        return values
    keys = sorted(k for k, v in values.items() if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1))
    w, real = float(weight), 1.0 if weight > 0 else 0.0
    vals = [float(values[k]) * (real if k in SUMMED else w) for k in keys] + [w]
    *sums, total = acc.reduce(torch.tensor(vals, device=acc.device), "sum").tolist()
    return {**values, **{k: x if k in SUMMED else x / max(total, 1e-12) for k, x in zip(keys, sums)}}


def over_shares(run: _Run, n: int, values: Callable[[slice], torch.Tensor]) -> torch.Tensor | None:
    """`values(rows)` of all n rows (N, ...) on the main process, None on the others. Under several processes each
    computes a contiguous share and the main process gets every share in rank order (a collective: every process
    calls it; an error on one raises on all); with fewer rows than processes the main process computes them all.
    For DDP: under FSDP/ZeRO-3 a forward call is itself a collective, and shares of different sizes make different
    numbers of them."""
    share = row_share(run.accelerator, n)
    if share is None:
        return values(slice(0, n)) if run.is_main else None
    from accelerate.utils import gather_object

    error = None
    try:
        mine: Any = values(share).cpu()
    except Exception as e:  # every process must still reach the gather, or the others wait there until a timeout
        mine, error = f"{type(e).__name__}: {e}", e
    parts = gather_object([mine])  # shares, or what went wrong (str), in rank order
    failed = [r for r, part in enumerate(parts) if isinstance(part, str)]
    if error is not None:
        raise error
    if failed:
        raise RuntimeError(f"process {failed[0]} failed while computing its share: {parts[failed[0]]}")
    return torch.cat(parts) if run.is_main else None


def token_mean_shares(acc: Any, stats: dict[str, float], mask: torch.Tensor,
                      keys: tuple[str, ...] = ("kl", "entropy")) -> dict[str, float]:
    """This process's token means (`keys`) as shares of the global token mean: × its tokens / (all tokens /
    processes), so that their plain mean over processes (`over_processes`) weighs every token alike (a collective)."""
    here = float(mask.sum())
    per_process = float(acc.reduce(torch.tensor(here, device=acc.device), "mean"))
    return {k: v * here / max(per_process, 1.0) if k in keys else v for k, v in stats.items()}


def average_gradients(params: list, mean: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Replace each gradient by its mean over processes (`mean`): for modules DDP does not wrap (PPO's value head)."""
    for p in params:
        if p.grad is not None:
            p.grad = mean(p.grad)
