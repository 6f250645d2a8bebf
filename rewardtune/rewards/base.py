"""The reward contract and the combiner (build.py turns names and callables into one).

A reward function sees a batch: `fn(prompts=..., completions=..., **columns) -> list[float | None]`, every
argument by name (`signature.py` says how a function is bound), where `columns` holds the other data columns,
aligned with the completions (e.g. `label`, the gold label; a reference answer). `None` means "no opinion" on that
sample. For classifiers the prompt is the input text and the completion is the label name the policy chose.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import torch

from .signature import RESERVED, Binding, binding, call_reward, missing_columns


class RewardFn(Protocol):
    def __call__(self, prompts: list[str], completions: list[str], **columns: list[Any]) -> list[float | None]: ...


class RewardError(ValueError):
    """A reward function that raised, returned the wrong count, or returned NaN/inf."""


def _example(prompts: Sequence[str], completions: Sequence[str], i: int) -> str:
    if i >= min(len(prompts), len(completions)):
        return "an empty batch"
    return f"example {i}: prompt={prompts[i][:200]!r}, completion={completions[i][:200]!r}"


def _float(v: Any) -> float | None:
    """One reward value as a float: inf for a number too large for one (a huge int), None when it is not one number
    (a string, a tensor of several values)."""
    try:
        return float(v)
    except OverflowError:
        return -math.inf if v < 0 else math.inf
    except (TypeError, ValueError, RuntimeError):
        return None


def check_rewards(name: str, values: Any, prompts: Sequence[str], completions: Sequence[str],
                  nonfinite: bool = False) -> list[float | None]:
    """Validate one function's output: a list of len(prompts) finite floats or None. `nonfinite`: NaN and inf are
    returned (on_reward_error=skip drops those samples) instead of raising."""
    try:
        values = list(values)
    except TypeError:
        raise RewardError(f"reward {name!r} returned {type(values).__name__}, expected a list of floats") from None
    if len(values) != len(prompts):
        raise RewardError(f"reward {name!r} returned {len(values)} values for {len(prompts)} samples; "
                          f"it must return one per sample ({_example(prompts, completions, 0)})")
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        f = _float(v)
        if f is None:
            raise RewardError(f"reward {name!r} returned {v!r} on {_example(prompts, completions, i)}")
        if not math.isfinite(f) and not nonfinite:
            raise RewardError(f"reward {name!r} returned {f} on {_example(prompts, completions, i)}")
        out.append(f)
    return out


@dataclass
class RewardResult:
    """total (B,) and each component (B,) with NaN where the function had no opinion."""

    total: torch.Tensor
    components: dict[str, torch.Tensor]
    dropped: torch.Tensor | None = None  # (B,) bool: a function raised or gave NaN here (on_error="skip")


@dataclass
class RunningStats:
    """Count, mean and sum of squared deviations of every value seen (Welford 1962); checkpointable."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def update(self, x: torch.Tensor) -> None:
        for v in x[~torch.isnan(x)].tolist():
            self.n += 1
            d = v - self.mean
            self.mean += d / self.n
            self.m2 += d * (v - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n > 1 else 1.0


def _no_norm(x: torch.Tensor, st: RunningStats) -> torch.Tensor:
    return x


def _running_norm(x: torch.Tensor, st: RunningStats) -> torch.Tensor:
    """(r − mean) / std over every value seen so far, this batch included.  (B,) → (B,)"""
    st.update(x)
    return (x - st.mean) / max(st.std, 1e-8)


def _rank_norm(x: torch.Tensor, st: RunningStats) -> torch.Tensor:
    """Ranks within the batch scaled to [0, 1], ties averaged; NaN (no opinion) stays NaN.  (B,) → (B,)"""
    out = torch.full_like(x, math.nan)
    ok = ~torch.isnan(x)
    v = x[ok]
    if v.numel() == 1:
        out[ok] = 0.5
    elif v.numel() > 1:
        ranks = (v.unsqueeze(0) < v.unsqueeze(1)).sum(1).float() + 0.5 * ((v.unsqueeze(0) == v.unsqueeze(1)).sum(1).float() - 1)
        out[ok] = ranks / (v.numel() - 1)
    return out


NORMALIZERS: dict[str, Callable[[torch.Tensor, RunningStats], torch.Tensor]] = {
    "none": _no_norm, "running": _running_norm, "rank": _rank_norm,
}


@dataclass
class CombinedReward:
    """Weighted sum of reward functions; `None` values are left out and the weights rescaled.

    With components S present on a sample, total = (W / W_S) · Σ_{i∈S} w_i r_i, where W = Σ_i |w_i|
    and W_S = Σ_{i∈S} |w_i|: when every function has an opinion this is the plain weighted sum, and
    a missing opinion neither counts as 0 nor changes the scale (nor, with |w|, flips a penalty's sign).
    """

    fns: dict[str, Callable[..., Any]]
    weights: dict[str, float]
    normalize: str = "none"  # "none" | "running" (mean/std over all batches so far) | "rank" (within the batch)
    stats: dict[str, "RunningStats"] = field(default_factory=dict)
    on_error: str = "raise"  # "raise": stop and show the sample; "skip": drop failing samples (see `dropped`)
    # Several processes, each scoring its own equal share: `gather` returns every process's (B,) values in rank
    # order, so normalisation sees the global batch (the same statistics everywhere) and this process keeps its
    # share, number `rank`. None: one process.
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None
    rank: int = 0
    # Several processes: `failed_on(this process failed)` → the ranks whose scoring failed (a collective). Every
    # process then raises at the same call, so none waits forever in a later collective for one that stopped.
    failed_on: Callable[[bool], list[int]] | None = None
    # How each function is called (its signature, read once: scoring runs every step, per sample when skipping).
    bindings: dict[str, Binding] = field(default_factory=dict, repr=False)

    def __call__(self, prompts: list[str], completions: list[str], **columns: list[Any]) -> RewardResult:
        """Score a training batch: normalised as configured (the running statistics see it)."""
        return self._score(prompts, completions, columns, self.normalize)

    def unnormalized(self, prompts: list[str], completions: list[str], **columns: list[Any]) -> RewardResult:
        """The weighted sum of the raw values, statistics untouched: what held-out evaluation reports (normalisation
        is a training device, and held-out samples must not shift training's running statistics)."""
        return self._score(prompts, completions, columns, "none")

    def _normalized(self, name: str, v: torch.Tensor, mode: str) -> torch.Tensor:
        """(B,) → (B,), normalised over the global batch when `gather` is set."""
        if mode == "none":
            return v
        norm, st = NORMALIZERS[mode], self.stats.setdefault(name, RunningStats())
        if self.gather is None:
            return norm(v, st)
        B = v.shape[0]
        return norm(self.gather(v), st)[self.rank * B:(self.rank + 1) * B]

    def _score(self, prompts: list[str], completions: list[str], columns: dict[str, list[Any]],
               mode: str) -> RewardResult:
        try:
            comps, dropped, w_present = self._raw(prompts, completions, columns)
        except Exception as e:  # a RewardError, or values that break the checks themselves: every process stops
            self._agree(e)
            if isinstance(e, RewardError):
                raise
            # one error type on every process, so that each takes the same way out (the trainers' rescue catches it)
            raise RewardError(f"scoring raised {type(e).__name__}: {e} (batch of {len(prompts)}, first "
                              f"{_example(prompts, completions, 0)})") from e
        self._agree(None)  # before normalising, whose gather is a collective
        w = torch.tensor([self.weights[n] for n in comps])  # (F,)
        normed = {n: self._normalized(n, v, mode) for n, v in comps.items()}
        r = torch.stack(list(normed.values()), dim=-1)  # (B, F)
        total = torch.nan_to_num(r * w).sum(-1) * (w.abs().sum() / w_present.clamp(min=1e-12))  # (B,)
        return RewardResult(total.masked_fill(dropped, 0.0), comps, dropped)

    def _raw(self, prompts: list[str], completions: list[str],
             columns: dict[str, list[Any]]) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Each function's raw (B,) values (NaN: no opinion or dropped), the dropped samples (B,), and the |weight|
        of the functions present on each sample (B,); raises RewardError before any statistic sees the batch."""
        comps: dict[str, torch.Tensor] = {}
        dropped = torch.zeros(len(prompts), dtype=torch.bool)
        for name, fn in self.fns.items():
            vals, bad = self._call(name, fn, prompts, completions, columns)
            dropped |= bad
            comps[name] = torch.tensor([math.nan if v is None else v for v in vals], dtype=torch.float32)
        w = torch.tensor([self.weights[n] for n in comps])  # (F,)
        present = ~torch.isnan(torch.stack(list(comps.values()), dim=-1))  # (B, F)
        w_present = (present * w.abs()).sum(-1)  # (B,)
        if ((w_present == 0) & ~dropped).any():
            i = int(((w_present == 0) & ~dropped).nonzero()[0])
            raise RewardError(f"no reward function with a non-zero weight gave a value for {_example(prompts, completions, i)}")
        return comps, dropped, w_present

    def _agree(self, error: Exception | None) -> None:
        """Several processes: if scoring failed on another process, fail here too, saying where (this process's own
        error is raised by the caller)."""
        if self.failed_on is None:
            return
        ranks = self.failed_on(error is not None)
        if error is None and ranks:
            raise RewardError(f"the reward failed on process {', '.join(map(str, ranks))} (its error is in its output); "
                              f"process {self.rank} stops with it")

    def _call(self, name: str, fn: Callable[..., Any], prompts: list[str], completions: list[str],
              columns: dict[str, list[Any]]) -> tuple[list[float | None], torch.Tensor]:
        """One function's values and the samples it failed on (raised, NaN); failures raise unless on_error=skip."""
        try:
            raw = call_reward(fn, prompts, completions, columns, self._binding(name, fn))
        except Exception as e:
            if self.on_error != "skip":
                raise RewardError(f"reward {name!r} raised {type(e).__name__}: {e} (batch of {len(prompts)}, first "
                                  f"{_example(prompts, completions, 0)}); set on_reward_error=skip to drop such "
                                  "samples instead") from e
            return self._one_by_one(name, fn, prompts, completions, columns)
        if self.on_error != "skip":
            return check_rewards(name, raw, prompts, completions), torch.zeros(len(prompts), dtype=torch.bool)
        vals = check_rewards(name, raw, prompts, completions, nonfinite=True)  # the count and types must be right
        bad = torch.tensor([v is not None and not math.isfinite(v) for v in vals], dtype=torch.bool)
        return [None if b else v for v, b in zip(vals, bad.tolist())], bad

    def _one_by_one(self, name: str, fn: Callable[..., Any], prompts: list[str], completions: list[str],
                    columns: dict[str, list[Any]]) -> tuple[list[float | None], torch.Tensor]:
        """The batch raised: score each sample alone, so only the samples that raise are dropped."""
        vals: list[float | None] = []
        for i in range(len(prompts)):
            try:
                v = call_reward(fn, prompts[i:i + 1], completions[i:i + 1], {k: c[i:i + 1] for k, c in columns.items()},
                                self._binding(name, fn))
                v = check_rewards(name, v, prompts[i:i + 1], completions[i:i + 1])[0]
            except Exception:
                v = math.nan
            vals.append(v)
        bad = torch.tensor([v is not None and not math.isfinite(v) for v in vals], dtype=torch.bool)
        return [None if b else v for v, b in zip(vals, bad.tolist())], bad

    def _binding(self, name: str, fn: Callable[..., Any]) -> Binding:
        if name not in self.bindings:
            self.bindings[name] = binding(fn)
        return self.bindings[name]

    def check_columns(self, columns: Sequence[str], source: str) -> None:
        """Every function's required parameters are columns of the data (`source` names it), and no column takes
        the name of what every reward is given: a RewardError naming the function, the parameter and the columns."""
        clash = [c for c in columns if c in RESERVED]
        if clash:
            raise RewardError(f"{source}: a column is called {clash[0]!r}, the name under which every reward gets the "
                              f"{clash[0]}; rename that column")
        for name, fn in self.fns.items():
            missing = missing_columns(fn, columns)
            if missing:
                raise RewardError(
                    f"reward {name!r} needs a column {missing[0]!r} (a parameter of {getattr(fn, '__qualname__', fn)!s} "
                    f"without a default), but {source} has only: {', '.join(columns) or 'the prompt'}; add that column "
                    f"to the data, give the parameter a default, or rename it to the column it means")

    def state_dict(self) -> dict[str, Any]:
        """Normalisation statistics, for checkpoints."""
        return {n: [st.n, st.mean, st.m2] for n, st in self.stats.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats = {n: RunningStats(int(k), float(mean), float(m2)) for n, (k, mean, m2) in state.items()}
