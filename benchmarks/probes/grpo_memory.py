"""What holds memory during a GRPO step, on the CPU (BENCHMARKS.md, "GPU: decoding without synchronisation").

    python benchmarks/probes/grpo_memory.py [--size 4x4x32] [--set KEY=VALUE ...]

One GRPO step (after a warm-up step) of the random-weight SmolLM2-135M-shaped model of gpu_models.py (bf16 base
weights, LoRA r=16, fp32 on the CPU), run under a dispatch mode that counts the bytes of every tensor storage an op
creates until that storage is freed (a weakref finalizer on it): the bytes of tensors alive, which is what a GPU
allocator's peak counts (less its rounding and caching). Printed: the peak over the step and within each phase
(rollout, reference pass, each micro-batch's forward and backward, optimiser step), in MiB above what was alive when
the step began, and the largest storages alive at the step's peak (shape, dtype, the op that made them).
Known flaw: a view or in-place result of a tensor that existed before the step (a weight's `.t()`, an optimiser's
in-place update) counts as a new storage, so every phase carries ≈300 MiB of weight views; compare phases with each
other, not with zero. (To fix: register the storages of the parameters, buffers and optimiser state as seen first.)
"""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpu_grpo import rewardtune_config  # noqa: E402
from gpu_models import build  # noqa: E402

def phases() -> dict:
    """phase → (object, attribute) of the function that runs it."""
    import accelerate
    import torch

    from rewardtune.train import pg_update, rl_generate

    return {"rollout": (rl_generate, "rollout"), "reference": (pg_update, "plan_reference"),
            "forward": (pg_update, "policy_loss"), "backward": (accelerate.Accelerator, "backward"),
            "optimiser": (torch.optim.AdamW, "step")}


class LiveBytes:
    """A TorchDispatchMode (built lazily) counting live storage bytes; `phase(name)` brackets a phase's peak."""

    def __init__(self):
        import weakref

        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        me = self
        self.live, self.peak, self.phases, self.stack, self.tracked = 0, 0, {}, [], {}
        self.at_peak: list = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if hasattr(t, "untyped_storage") and t.device.type == "cpu":
                        me.track(t, func, weakref)
                return out
        self.mode = Mode()

    def track(self, t, func, weakref) -> None:
        s = t.untyped_storage()
        if id(s) in self.tracked or s.nbytes() == 0:
            return
        self.tracked[id(s)] = (s.nbytes(), tuple(t.shape), str(t.dtype), str(func))
        self.live += s.nbytes()
        weakref.finalize(s, self.free, id(s))
        if self.live > self.peak:
            self.peak = self.live
            for name in self.stack:
                self.phases[name] = max(self.phases.get(name, 0), self.live)
        if self.live >= self.peak:
            self.at_peak = sorted(self.tracked.values(), reverse=True)[:8] if s.nbytes() > 2**20 else self.at_peak

    def free(self, key) -> None:
        self.live -= self.tracked.pop(key)[0]

    @contextmanager
    def phase(self, name: str):
        self.stack.append(name)
        self.phases[name] = max(self.phases.get(name, 0), self.live)
        try:
            yield
        finally:
            self.stack.remove(name)


@contextmanager
def labelled(counter: LiveBytes):
    """Each phase's function runs inside `counter.phase`; its peak is the most bytes alive while it ran."""
    patches = []
    for phase, (owner, name) in phases().items():
        real = getattr(owner, name)

        def wrapped(*a, _real=real, _phase=phase, **k):
            with counter.phase(_phase):
                return _real(*a, **k)
        patches.append(mock.patch.object(owner, name, wrapped))
    for p in patches:
        p.start()
    try:
        yield
    finally:
        for p in patches:
            p.stop()


def main() -> None:
    import torch

    from rewardtune.run import seed_this_process
    from rewardtune.train.rl_generate import GenRLRun

    p = argparse.ArgumentParser()
    p.add_argument("--size", default="4x4x32")
    p.add_argument("--set", nargs="*", default=[], help="extra rewardtune overrides")
    p.add_argument("--work", default="/tmp/rewardtune-memory-probe")
    args = p.parse_args()
    model = build(Path(args.work), "smollm2-135m", dry=False)
    ns = argparse.Namespace(model=str(model), steps=2, vocab=49152, cpu=True)
    cfg = rewardtune_config(ns, args.size, "eager", Path(args.work), tuple(args.set))
    run = GenRLRun.setup(cfg)
    seed_this_process(run.run)
    batches = run.prompt_batches(0)
    run.step(1, next(batches))  # warm-up: the optimiser's state exists from here on
    counter = LiveBytes()
    with labelled(counter), counter.mode:
        run.step(2, next(batches))
    mib = lambda b: round(b / 2**20, 1)  # noqa: E731
    print(f"{args.size} {args.set}: peak {mib(counter.peak)} MiB above the step's start;",
          {k: mib(v) for k, v in counter.phases.items()})
    for nbytes, shape, dtype, op in counter.at_peak:
        print(f"  {mib(nbytes):8} MiB  {shape} {dtype}  from {op}")


if __name__ == "__main__":
    main()
