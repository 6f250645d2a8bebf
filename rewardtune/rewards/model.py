"""A trained reward model as a reward function, scoring with its own tokenizer.

The policy's tokenizer never touches the reward model: completions arrive as text and are
re-tokenised here, so a SmolLM2 policy can be scored by a MiniLM reward model.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import torch

from .base import RewardError

log = logging.getLogger("rewardtune.rewards")
REQUIRED = ("config.json", "rewardtune.json", "tokenizer_config.json")


class RewardModelError(RewardError):
    """A reward-model folder that is incomplete or inconsistent."""


def check_folder(path: str | Path) -> dict[str, Any]:
    """The folder's rewardtune.json, after checking the files a reward model needs."""
    folder = Path(path)
    if not folder.is_dir():
        raise RewardModelError(f"reward model {folder} is not a folder")
    lora = (folder / "adapter_config.json").exists()  # an adapter over its base: no config.json of its own
    required = [f for f in REQUIRED if not (lora and f == "config.json")]
    missing = [f for f in required if not (folder / f).exists()]
    weights = "adapter_model.safetensors" if lora else "model.safetensors"
    if not (folder / weights).exists():
        missing.append(weights)
    if missing:
        raise RewardModelError(f"reward model {folder} is missing {', '.join(missing)}; "
                               "was it written by `rewardtune rm train` (or `sft`)?")
    meta = json.loads((folder / "rewardtune.json").read_text())
    head = meta.get("head", "classifier")
    n_labels = None if lora else len(json.loads((folder / "config.json").read_text()).get("id2label") or {}) or None
    if head == "scalar" and n_labels not in (None, 1):
        raise RewardModelError(f"{folder}: rewardtune.json says head=scalar but config.json has {n_labels} labels")
    if head == "classifier" and meta.get("label_names") and n_labels not in (None, len(meta["label_names"])):
        raise RewardModelError(f"{folder}: {len(meta['label_names'])} label names but the head has {n_labels} outputs")
    return meta


class RewardModel:
    """`RewardModel(path)(prompts, completions) -> list[float]`, batched, deterministic (eval mode).

    Classifier heads score P(positive_label | text); scalar heads (pairwise-trained) return the
    score itself. The prompt is joined to the completion as a text pair when the reward model
    was trained with prompts (`use_prompt`), else only the completion is scored.
    """

    def __init__(self, path: str | Path, batch_size: int = 32, max_length: int | None = None,
                 truncation_side: Literal["left", "right"] = "right", positive_label: str | None = None,
                 use_prompt: bool | None = None, device: str = "cpu") -> None:
        from ..models import load_trained_classifier

        self.meta = check_folder(path)
        self.model, self.tok = load_trained_classifier(path)
        self.model.to(device).eval()
        self.tok.truncation_side = truncation_side
        self.batch_size, self.device = batch_size, device
        self.max_length = max_length or self.meta.get("max_length", 256)
        self.use_prompt = self.meta.get("use_prompt", False) if use_prompt is None else use_prompt
        self.head = self.meta.get("head", "classifier")
        names = self.meta.get("label_names", [])
        pos = positive_label or self.meta.get("positive_label") or _guess_positive(names)
        self.positive = names.index(pos) if self.head == "classifier" else None
        self._warned = False

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str], **_: Any) -> list[float | None]:
        scores: list[float | None] = []
        for s in range(0, len(completions), self.batch_size):
            p, c = prompts[s:s + self.batch_size], completions[s:s + self.batch_size]
            enc = self._encode(p, c)
            logits = self.model(**enc).logits.float()  # (b, A) or (b, 1)
            out = logits[:, 0] if self.head == "scalar" else torch.softmax(logits, -1)[:, self.positive]
            scores += out.cpu().tolist()
        return scores

    def _encode(self, prompts: list[str], completions: list[str]) -> dict[str, torch.Tensor]:
        args = (prompts, completions) if self.use_prompt else (completions,)
        full = self.tok(*args, truncation=False)["input_ids"]
        if not self._warned and any(len(ids) > self.max_length for ids in full):
            log.warning("reward model input longer than %d tokens: truncated on the %s (said once)",
                        self.max_length, self.tok.truncation_side)
            self._warned = True
        enc = self.tok(*args, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def _guess_positive(names: list[str]) -> str | None:
    for cand in ("positive", "pos", "1", "good", "true"):
        if cand in names:
            return cand
    return names[-1] if names else None


def reward_model(path: str | Path, **kwargs: Any) -> RewardModel:
    """A reward function backed by the reward model in `path` (see `RewardModel`)."""
    return RewardModel(path, **kwargs)
