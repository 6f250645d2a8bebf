"""A reward that raises or returns NaN: stop with the sample shown (default), or drop the sample (skip)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from rewardtune.config import load_config
from rewardtune.rewards import CombinedReward, RewardError


def picky(prompts, completions, **_):
    """Raises on any completion containing 'x' (so a batch holding one raises as a whole)."""
    if any("x" in c for c in completions):
        raise ValueError("cannot score x")
    return [float(len(c)) for c in completions]


def nan_on_b(prompts, completions, **_):
    return [math.nan if "b" in c else 1.0 for c in completions]


def test_skip_drops_only_the_failing_samples():
    comb = CombinedReward({"picky": picky}, {"picky": 1.0}, on_error="skip")
    res = comb(["p"] * 4, ["aa", "x", "bbb", "xy"])
    assert res.dropped.tolist() == [False, True, False, True]
    assert res.total.tolist() == [2.0, 0.0, 3.0, 0.0]  # dropped rows hold 0, the others their value
    comb = CombinedReward({"nan": nan_on_b, "picky": picky}, {"nan": 1.0, "picky": 0.5}, on_error="skip")
    res = comb(["p"] * 3, ["a", "b", "x"])
    assert res.dropped.tolist() == [False, True, True]
    assert res.total[0].item() == pytest.approx(1.0 + 0.5 * 1.0)  # 1·1 + 0.5·len("a")


def test_raise_shows_the_sample_and_the_way_out():
    comb = CombinedReward({"picky": picky}, {"picky": 1.0})
    with pytest.raises(RewardError, match=r"'picky' raised ValueError: cannot score x.*on_reward_error=skip"):
        comb(["p"], ["x"])
    with pytest.raises(RewardError, match=r"'nan' returned nan on .*completion='b'"):
        CombinedReward({"nan": nan_on_b}, {"nan": 1.0})(["p", "p"], ["a", "b"])


def test_skip_still_refuses_a_wrong_count():
    comb = CombinedReward({"short": lambda p, c, **_: [1.0]}, {"short": 1.0}, on_error="skip")
    with pytest.raises(RewardError, match="returned 1 values for 2 samples"):
        comb(["p", "p"], ["a", "b"])


def test_odd_values_are_checked_in_both_modes():
    """A generator is read once (skip mode read it twice: nothing left for the NaN check, and a crash); an int too
    large for a float is inf (dropped by skip, refused by raise; it raised OverflowError from inside the check); a
    tensor of several values is refused in both modes (it raised RuntimeError, or in skip mode crashed)."""
    gen = lambda p, c, **_: (float(len(x)) if x != "b" else math.nan for x in c)  # noqa: E731
    res = CombinedReward({"gen": gen}, {"gen": 1.0}, on_error="skip")(["p"] * 3, ["aa", "b", "ccc"])
    assert res.dropped.tolist() == [False, True, False] and res.total.tolist() == [2.0, 0.0, 3.0]
    huge = lambda p, c, **_: [10**400 if x == "b" else 1 for x in c]  # noqa: E731
    res = CombinedReward({"huge": huge}, {"huge": 1.0}, on_error="skip")(["p"] * 2, ["a", "b"])
    assert res.dropped.tolist() == [False, True]
    with pytest.raises(RewardError, match=r"'huge' returned inf on .*completion='b'"):
        CombinedReward({"huge": huge}, {"huge": 1.0})(["p"] * 2, ["a", "b"])
    pair = lambda p, c, **_: [torch.tensor([1.0, 2.0]) for _ in c]  # noqa: E731
    for mode in ("raise", "skip"):
        with pytest.raises(RewardError, match=r"'pair' returned tensor\(\[1\., 2\.\]\)"):
            CombinedReward({"pair": pair}, {"pair": 1.0}, on_error=mode)(["p"], ["a"])


def test_a_reward_breaking_the_checks_themselves_is_a_reward_error():
    """A generator that raises while it is read (inside check_rewards): a RewardError naming the cause, the one
    error type the trainers' rescue catches (under several processes every process must take the same way out);
    a huge negative int is -inf."""
    def breaks(p, c, **_):
        yield 1.0
        raise ValueError("lost the connection")
    for mode in ("raise", "skip"):
        with pytest.raises(RewardError, match=r"scoring raised ValueError: lost the connection \(batch of 2"):
            CombinedReward({"breaks": breaks}, {"breaks": 1.0}, on_error=mode)(["p"] * 2, ["a", "b"])
    with pytest.raises(RewardError, match=r"'low' returned -inf"):
        CombinedReward({"low": lambda p, c, **_: [-10**400]}, {"low": 1.0})(["p"], ["a"])


def test_generative_rl_skips_failed_samples_and_counts_them(tiny_causal_lm_dir, tmp_path):
    from rewardtune.train.gen_config import GenRLConfig
    from rewardtune.train.rl_generate import train_rl_generate

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"say {w}"}) + "\n" for w in "abcdefgh"))
    args = [f"model.name={tiny_causal_lm_dir}", "model.lora.r=4", f"data.path={prompts}", "rl.prompts_per_step=2",
            "rl.samples_per_prompt=4", "rl.steps=3", "eval.prompts=2", "eval.every=0",
            "reward.functions=[test_reward_errors:nan_on_b]", "gen.max_new_tokens=8", f"runs_dir={tmp_path}"]
    with pytest.raises(RewardError, match="'test_reward_errors:nan_on_b' returned nan"):
        train_rl_generate(load_config(GenRLConfig, None, args + ["name=strict"]), show_progress=False)
    # the tiny tokenizer spells completions from letters: 8 tokens × 8 samples almost surely hold a 'b'
    out = train_rl_generate(load_config(GenRLConfig, None, args + ["name=skip", "reward.on_error=skip"]),
                            show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert len(train) == 3 and all(math.isfinite(r["loss"]) for r in train)
    assert sum(r["reward_dropped"] for r in train) > 0 and not out.get("stopped")


def test_classifier_rl_skip_masks_the_dropped_examples():
    from rewardtune.algorithms import EMABaseline
    from rewardtune.train.rl_classifier import RLSettings, Step, sampled

    torch.manual_seed(0)
    logits = torch.randn(3, 2, requires_grad=True)
    rl = RLSettings(estimator="reinforce", baseline="mean", samples=4)  # the reward below skips (on_error="skip")
    by_text = {"ok": 1.0, "bad": math.nan, "meh": 0.0}  # the reward depends on the text only
    reward = CombinedReward({"r": lambda p, c, label, **_: [by_text[t] for t in p]}, {"r": 1.0}, on_error="skip")
    torch.manual_seed(1)
    loss, stats = sampled(Step(logits, ["ok", "bad", "meh"], ["a", "b", "a"], ["a", "b"], reward, rl, EMABaseline()))
    loss.backward()
    assert stats["reward_dropped"].item() == 1.0
    # The same samples by hand: the mean baseline over the kept rows is (1 + 0)/2 = 0.5, so the
    # advantages are +0.5 (row 0) and −0.5 (row 2); the dropped row 1 is out of the loss and the mean
    # (with its zeros in the mean the baseline would be 1/3). Loss = −Σ_kept A·log π / (2 rows · 4 samples).
    torch.manual_seed(1)
    ref = logits.detach().clone().requires_grad_(True)
    logp = torch.log_softmax(ref, -1)
    actions = torch.multinomial(logp.exp().detach(), 4, replacement=True)
    picked = logp.gather(-1, actions)  # (3, 4)
    (-(0.5 * picked[0].sum() - 0.5 * picked[2].sum()) / 8).backward()
    assert torch.all(logits.grad[1] == 0) and logits.grad[0].abs().sum() > 0
    assert torch.allclose(logits.grad, ref.grad, atol=1e-7)
