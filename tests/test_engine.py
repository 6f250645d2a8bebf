"""The rollout-engine seam: the generative trainer takes every rollout from a `RolloutEngine`."""
from __future__ import annotations

import json

import torch

from rewardtune.policies.causal_lm import GenSettings, sample
from rewardtune.policies.engine import LocalEngine, RolloutEngine
from rewardtune.train import rl_generate
from rewardtune.train.rl_generate import train_rl_generate
from test_causal_lm_policy import PROMPTS, run_cfg


def test_the_local_engine_is_an_engine_and_samples_what_sample_samples(tiny_causal_lm_dir):
    from rewardtune.models import load_causal_lm

    model, tok = load_causal_lm(str(tiny_causal_lm_dir))
    engine = LocalEngine(model, tok)
    assert isinstance(engine, RolloutEngine)
    gen = GenSettings(max_new_tokens=5)
    torch.manual_seed(1)
    ours = engine.sample(PROMPTS, 2, gen, 50)
    torch.manual_seed(1)
    theirs = sample(model, tok, PROMPTS, 2, gen, 50)
    assert torch.equal(ours.completion_ids, theirs.completion_ids) and ours.completions == theirs.completions


def test_the_trainer_takes_each_rollout_from_its_engine(tiny_causal_lm_dir, tmp_path, monkeypatch):
    """An engine standing in for the local one (as a server engine would) sees every step's prompts, and its rollout
    is what the step scores and trains on."""
    asked = []

    class Recording(LocalEngine):
        def sample(self, prompts, k, gen, max_prompt_tokens, greedy=False, rows=0):
            asked.append((list(prompts), k))
            return super().sample(prompts, k, gen, max_prompt_tokens, greedy=greedy, rows=rows)
    monkeypatch.setattr(rl_generate, "LocalEngine", Recording)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS * 2))
    train_rl_generate(run_cfg(tiny_causal_lm_dir, prompts, tmp_path, "engine", "rl.steps=2"), show_progress=False)
    assert len(asked) == 2 and all(k == 3 and len(p) == 2 for p, k in asked)
