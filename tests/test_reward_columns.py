"""Rewards that see the data: every column of the prompt rows reaches each reward by keyword, aligned with the
completions (K per prompt), in training and in held-out evaluation, and across a resumption; a reward that needs a
column the data lacks is refused before anything is written."""
from __future__ import annotations

import json

import pytest

from rewardtune.config import load_config
from rewardtune.rewards import RewardError, build_rewards
from rewardtune.rewards.signature import binding, call_reward
from rewardtune.train.gen_config import GenRLConfig
from rewardtune.train.rl_generate import train_rl_generate

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
SEEN: list[tuple[list[str], list[str]]] = []  # (prompts, ground_truth) of every call of `trl_style`


def trl_style(completions, ground_truth, **kwargs):
    """A reward written for TRL: completions first, the reference column by name, the rest in **kwargs. Raises if a
    row's ground truth is not its own prompt's (the prompt ends with it), so misaligned columns fail the run."""
    prompts = kwargs["prompts"]
    assert len(prompts) == len(completions) == len(ground_truth)
    for p, g in zip(prompts, ground_truth):
        if not p.endswith(g):
            raise AssertionError(f"ground truth {g!r} is not the prompt's {p!r}")
    SEEN.append((list(prompts), list(ground_truth)))
    return [float(g in c) + len(c.split()) / 100 for c, g in zip(completions, ground_truth)]


def test_a_trl_style_reward_gets_completions_and_the_column_by_name():
    # Before, the prompts landed in `completions` (first positional argument) and such a reward scored the prompts.
    reward = build_rewards([trl_style])
    out = reward(["say alpha", "say bravo"], ["alpha beta", "nothing"], ground_truth=["alpha", "bravo"])
    assert out.total.tolist() == pytest.approx([1.02, 0.01])  # 'alpha' in 'alpha beta' + 2 words/100; 1 word/100


def test_the_older_positional_contract_still_binds_prompts_then_completions():
    reward = build_rewards([lambda p, c, **_: [float(len(x)) for x in c]])
    assert reward(["a long prompt"], ["abc"], label=["x"]).total.tolist() == [3.0]  # the completion, not the prompt


def test_a_reward_without_kwargs_gets_only_what_it_names():
    def exact(completions, answer):
        return [float(c == a) for c, a in zip(completions, answer)]

    how = binding(exact)
    assert not how.positional and how.accepts == {"completions", "answer"} and how.required == ("answer",)
    assert call_reward(exact, ["p"], ["x"], {"answer": ["x"], "other": [1]}) == [1.0]  # 'other' and prompts not passed


def test_a_missing_column_names_the_function_the_parameter_and_the_columns():
    reward = build_rewards([trl_style])
    with pytest.raises(RewardError, match=r"reward 'trl_style' needs a column 'ground_truth'.*has only: topic"):
        reward.check_columns(["topic"], "prompts.jsonl")
    reward.check_columns(["ground_truth", "topic"], "prompts.jsonl")  # present: no error
    with pytest.raises(RewardError, match="a column is called 'completions'"):
        reward.check_columns(["ground_truth", "completions"], "prompts.jsonl")


def _prompts(path, column="ground_truth"):
    rows = [{"prompt": f"the film was {w}", column: w, "n": i} for i, w in enumerate(WORDS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _cfg(model_dir, prompts, tmp_path, name, *extra):
    return load_config(GenRLConfig, None, [
        f"model.name={model_dir}", "model.lora.r=4", f"data.path={prompts}", "rl.prompts_per_step=2",
        "rl.samples_per_prompt=3", "rl.steps=3", "eval.prompts=2", "eval.samples=2", "eval.every=0",
        "reward.functions=[test_reward_columns:trl_style]", "gen.max_new_tokens=4", f"runs_dir={tmp_path}",
        f"name={name}", *extra])


def test_columns_follow_their_prompts_through_sampling_evaluation_and_resumption(tiny_causal_lm_dir, tmp_path):
    prompts = _prompts(tmp_path / "p.jsonl")
    SEEN.clear()
    train_rl_generate(_cfg(tiny_causal_lm_dir, prompts, tmp_path, "r", "ckpt.stop_after=1"), show_progress=False)
    out = train_rl_generate(_cfg(tiny_causal_lm_dir, prompts, tmp_path, "r", "ckpt.resume=auto"), show_progress=False)
    assert out["steps"] == 3  # every call passed the alignment check in trl_style
    batch_sizes = [len(p) for p, _ in SEEN]
    assert 2 * 3 in batch_sizes and 2 * 2 in batch_sizes  # training batches (P·K) and held-out ones (2 prompts × 2)
    for p, g in SEEN:  # the K consecutive completions of one prompt share its row (K = 3 training, 2 held-out)
        k = 3 if len(g) == 6 else 2
        assert all(g[i] == g[i - i % k] for i in range(len(g))) and len(set(g)) == len(g) // k
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert any("reward/test_reward_columns:trl_style" in r for r in rows if r.get("split") == "train")


def test_a_reward_needing_an_absent_column_fails_before_the_run_folder_exists(tiny_causal_lm_dir, tmp_path):
    prompts = _prompts(tmp_path / "p.jsonl", column="topic")
    with pytest.raises(RewardError, match=r"needs a column 'ground_truth'.*has only: topic, n"):
        train_rl_generate(_cfg(tiny_causal_lm_dir, prompts, tmp_path, "bad"), show_progress=False)
    assert not (tmp_path / "bad").exists()  # nothing written, nothing to lose
