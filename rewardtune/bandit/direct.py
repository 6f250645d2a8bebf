"""The reward model of the doubly robust estimator: q̂(x, a) for every action a at once.

The project's reward models (train/reward_model.py, rewards/model.py) score one (prompt, completion) pair per
forward pass: q̂(x, ·) over A actions would cost A encoder passes per context (77 for Banking77). DR needs the
whole row q̂(x, ·) for Σ_a π(a|x) q̂(x, a), so this model reads the context once: frozen encoder features φ(x)
(mean-pooled last hidden states) and one ridge regression per action on the rows that logged it,

    q̂(x, a) = r̄ + [φ(x), 1] · β_a,   β_a = argmin Σ_{i: a_i = a} (r_i − r̄ − [φ(x_i), 1]·β)² + l2 ‖β‖²,

solved in closed form (deterministic: a resumed run refits the same model). The intercept is penalised too, so an
action seen a few times is predicted near the log's mean reward r̄. Predictions are clipped to the logged rewards'
range. `cross_fit` gives each row predictions from a model fitted on the other rows (for an honest DR interval).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..batching import batch_order, encode, iterate


@torch.no_grad()
def embed(model: Any, tok: Any, texts: Sequence[str], max_length: int, batch_size: int = 64,
          device: Any = "cpu") -> torch.Tensor:
    """Mean-pooled last hidden states (N, H) of `model`'s encoder (a sequence classifier's base model), float64."""
    was_training = model.training
    model.eval()
    net = model.get_base_model() if hasattr(model, "get_base_model") else model  # a LoRA wrapper's inner model
    encoder = net.base_model  # the encoder without its classification head
    encoded = encode(tok, texts, max_length)
    order = batch_order([len(e) for e in encoded], batch_size, 0, 0, shuffle=False, group_by_length=True, mega=10**9)
    rows: dict[int, torch.Tensor] = {}
    for batch in iterate(encoded, None, order, tok.pad_token_id):
        batch = batch.to(device)
        hidden = encoder(**batch.model_inputs()).last_hidden_state.float()  # (b, L, H)
        mask = batch.attention_mask[..., None].float()  # (b, L, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # (b, H)
        rows.update(zip(batch.index.tolist(), pooled.double().cpu()))
    model.train(was_training)
    return torch.stack([rows[i] for i in range(len(texts))])


@dataclass
class RewardTable:
    """A fitted q̂: per-action coefficients (A, H + 1), the mean reward r̄ and the clip range."""

    beta: torch.Tensor
    mean: float
    low: float
    high: float

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """q̂(x, ·) for features (N, H) → (N, A)."""
        x = torch.cat([features.double(), torch.ones(len(features), 1, dtype=torch.float64)], 1)  # (N, H + 1)
        return (self.mean + x @ self.beta.T).clamp(self.low, self.high)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"beta": self.beta, "stats": torch.tensor([self.mean, self.low, self.high], dtype=torch.float64)}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "RewardTable":
        mean, low, high = state["stats"].tolist()
        return cls(state["beta"], mean, low, high)


def fit_reward_table(features: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, num_actions: int,
                     l2: float = 1.0) -> RewardTable:
    """Per-action ridge regressions (see the module doc): features (N, H), actions (N,), rewards (N,)."""
    x = torch.cat([features.double(), torch.ones(len(features), 1, dtype=torch.float64)], 1)  # (N, H + 1)
    r = rewards.double()
    mean = r.mean().item()
    eye = torch.eye(x.shape[1], dtype=torch.float64) * l2  # (H + 1, H + 1)
    beta = torch.zeros(num_actions, x.shape[1], dtype=torch.float64)
    for a in range(num_actions):
        rows = actions == a
        if rows.any():  # an action never logged keeps β = 0: predicted at r̄
            xa = x[rows]  # (n_a, H + 1)
            beta[a] = torch.linalg.solve(xa.T @ xa + eye, xa.T @ (r[rows] - mean))
    return RewardTable(beta, mean, r.min().item(), r.max().item())


def cross_fit(features: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, num_actions: int,
              l2: float = 1.0, folds: int = 2, seed: int = 0) -> torch.Tensor:
    """q̂(x_i, ·) (N, A) with each row predicted by a model fitted on the other folds (seeded fold assignment)."""
    n = len(features)
    gen = torch.Generator().manual_seed(seed)
    fold = torch.randperm(n, generator=gen) % folds  # (N,)
    out = torch.empty(n, num_actions, dtype=torch.float64)
    for k in range(folds):
        held = fold == k
        if bool(held.all()):  # one fold only (tiny logs): fit on everything
            return fit_reward_table(features, actions, rewards, num_actions, l2).predict(features)
        table = fit_reward_table(features[~held], actions[~held], rewards[~held], num_actions, l2)
        out[held] = table.predict(features[held])
    return out
