"""A generative-RL run's held-out evaluations on their schedule, and its best policy so far, kept in
checkpoints/best; the policy's saved form (adapter or weights, tokenizer, value head)."""
from __future__ import annotations

from typing import Any, Callable

from ..run import RunContext


class HeldOut:
    """A run's held-out evaluations and its best policy so far by eval.best_metric, kept in checkpoints/best. The
    first evaluation is the starting policy's, which is the first best: checkpoints/best exists even if nothing beats
    it. `settings`: the run's `EvalSettings`; `steps`: the run's last step (always evaluated)."""

    def __init__(self, run: RunContext, model: Any, tok: Any, value_head: Any, settings: Any, steps: int,
                 evaluate_at: Callable[[int], dict[str, float]]) -> None:
        self.run, self.model, self.tok, self.value_head = run, model, tok, value_head
        self.settings, self.steps, self.evaluate_at = settings, steps, evaluate_at
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.best = float("-inf") if settings.best_mode == "max" else float("inf")

    def due(self, step: int) -> bool:
        return bool(self.settings.every and step % self.settings.every == 0) or step == self.steps

    def evaluate(self, step: int) -> None:
        """Evaluate the policy now; when eval.best_metric improved, save it in checkpoints/best and log a `best` row."""
        self.last = self.evaluate_at(step)
        self.first = self.first or self.last
        metric = self.settings.best_metric
        value = self.last[metric]
        if value > self.best if self.settings.best_mode == "max" else value < self.best:
            save_policy(self.run, self.model, self.tok, self.value_head, "best")
            self.run.log(step, split="best", **{metric: value})
            self.best = value

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "eval_start": self.first, "eval": self.last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.first, self.last = state["best"], state["eval_start"], state["eval"]


def save_policy(run: RunContext, model: Any, tok: Any, value_head: Any = None, name: str = "final") -> None:
    """Weights (adapter only with LoRA) as safetensors, with the tokenizer (and PPO's value head)."""
    if run.is_main:
        out = run.checkpoints / name
        run.accelerator.unwrap_model(model).save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        if value_head is not None:
            from safetensors.torch import save_file
            save_file(value_head.state_dict(), str(out / "value_head.safetensors"))
