"""A generative-RL run's held-out evaluations on their schedule, and its best policy so far, kept in
checkpoints/best; the policy's saved form (adapter or weights, tokenizer, value head)."""
from __future__ import annotations

from typing import Any, Callable

from ..run import RunContext


class HeldOut:
    """A run's held-out evaluations and its best policy so far by rl.best_metric, kept in checkpoints/best. The first
    evaluation is the starting policy's, which is the first best: checkpoints/best exists even if nothing beats it."""

    def __init__(self, run: RunContext, model: Any, tok: Any, head: Any, rl: Any,
                 evaluate_at: Callable[[int], dict[str, float]]) -> None:
        self.run, self.model, self.tok, self.head, self.rl, self.evaluate_at = run, model, tok, head, rl, evaluate_at
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.best = float("-inf") if rl.best_mode == "max" else float("inf")

    def due(self, step: int) -> bool:
        return bool(self.rl.eval_every and step % self.rl.eval_every == 0) or step == self.rl.steps

    def evaluate(self, step: int) -> None:
        """Evaluate the policy now; when rl.best_metric improved, save it in checkpoints/best and log a `best` row."""
        self.last = self.evaluate_at(step)
        self.first = self.first or self.last
        value, metric = self.last[self.rl.best_metric], self.rl.best_metric
        if value > self.best if self.rl.best_mode == "max" else value < self.best:
            save_policy(self.run, self.model, self.tok, self.head, "best")
            self.run.log(step, split="best", **{metric: value})
            self.best = value

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "eval_start": self.first, "eval": self.last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.first, self.last = state["best"], state["eval_start"], state["eval"]


def save_policy(run: RunContext, model: Any, tok: Any, head: Any = None, name: str = "final") -> None:
    """Weights (adapter only with LoRA) as safetensors, with the tokenizer (and PPO's value head)."""
    if run.is_main:
        out = run.checkpoints / name
        run.accelerator.unwrap_model(model).save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        if head is not None:
            from safetensors.torch import save_file
            save_file(head.state_dict(), str(out / "value_head.safetensors"))
