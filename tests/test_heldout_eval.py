"""Held-out evaluation of generative RL: greedy or sampled (fixed draws), and the best checkpoint by a chosen metric."""
from __future__ import annotations

import json
from unittest import mock

import pytest
import torch

from rewardtune.config import LoraSettings
from rewardtune.models import apply_lora, load_causal_lm
from rewardtune.policies.causal_lm import GenSettings
from rewardtune.rewards import build_rewards
from rewardtune.run import start_run
from rewardtune.train.lm_eval import evaluate_lm
from rewardtune.train.gen_config import GenRLConfig
from rewardtune.train.gen_setup import length_reward
from rewardtune.train.rl_generate import train_rl_generate
from test_causal_lm_policy import PROMPTS, run_cfg


def cfg(model_dir, prompts, tmp_path, name, *extra):
    """test_causal_lm_policy's tiny run, evaluated at every step, with hotter sampling and a faster learning rate."""
    return run_cfg(model_dir, prompts, tmp_path, name, "rl.samples_per_prompt=2", "eval.prompts=3",
                   "eval.every=1", "rl.lr=5e-2", "gen.temperature=1.5", *extra)


@pytest.fixture()
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS * 2))
    return path


def test_sampled_evaluation_uses_the_same_draws_and_leaves_training_randomness_alone(tiny_causal_lm_dir, tmp_path):
    model, tok = load_causal_lm(str(tiny_causal_lm_dir))
    model = apply_lora(model, LoraSettings(r=4, alpha=8))
    with torch.no_grad():  # a trained-looking adapter: the policy differs from the reference
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    run = start_run(GenRLConfig(), "eval", tmp_path, seed=3)
    reward = build_rewards(("length",), (), {"length": lambda: length_reward}, "none", "raise")
    gen = GenSettings(max_new_tokens=6, temperature=1.5)
    state = torch.get_rng_state()
    first = evaluate_lm(run, model, tok, reward, PROMPTS, gen, 0, samples=3)
    assert torch.equal(torch.get_rng_state(), state)  # training's random stream is untouched
    torch.rand(5)  # whatever training draws in between ...
    assert evaluate_lm(run, model, tok, reward, PROMPTS, gen, 1, samples=3) == first  # ... the same draws again
    greedy = evaluate_lm(run, model, tok, reward, PROMPTS, gen, 2)
    assert set(first) == {"reward", "length_words", "distinct_1", "distinct_2", "kl", "ref_perplexity"}
    assert "kl_greedy" in greedy and "kl" not in greedy and first["kl"] > 0  # k3: never negative
    rows = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["decoding"] for r in rows] == ["sampled x3", "sampled x3", "greedy"]
    samples = [json.loads(line) for line in (run.dir / "samples.jsonl").read_text().splitlines()]
    assert [s["prompt"] for s in samples[:3]] == [PROMPTS[0]] * 3  # 3 samples of the first prompt


def test_tempered_evaluation_takes_one_reference_pass(tiny_causal_lm_dir, tmp_path):
    """At τ ≠ 1 the KL needs log π_ref at τ and the perplexity at 1: both come from one reference pass."""
    from rewardtune.train import lm_eval

    model = apply_lora(load_causal_lm(str(tiny_causal_lm_dir))[0], LoraSettings(r=4, alpha=8))
    tok = load_causal_lm(str(tiny_causal_lm_dir))[1]
    run = start_run(GenRLConfig(), "eval", tmp_path, seed=3)
    reward = build_rewards(("length",), (), {"length": lambda: length_reward}, "none", "raise")
    seen = []
    real = lm_eval.reference_logprobs_at
    with mock.patch.object(lm_eval, "reference_logprobs_at", lambda *a: seen.append(a[3]) or real(*a)):
        evaluate_lm(run, model, tok, reward, PROMPTS, GenSettings(max_new_tokens=4, temperature=1.5), 0, samples=2)
        evaluate_lm(run, model, tok, reward, PROMPTS, GenSettings(max_new_tokens=4, temperature=1.5), 0)  # greedy
        evaluate_lm(run, model, tok, reward, PROMPTS, GenSettings(max_new_tokens=4), 0, samples=2)
    assert seen == [(1.5, 1.0), (1.0,), (1.0,)]


@pytest.mark.parametrize("metric,mode,extra", [("length_words", "min", "reward.weights=[-1.0]"),  # shorter pays
                                               ("kl_greedy", "max", "reward.weights=[1.0]")])
def test_the_best_checkpoint_follows_the_chosen_metric(tiny_causal_lm_dir, prompts, tmp_path, metric, mode, extra):
    out = train_rl_generate(cfg(tiny_causal_lm_dir, prompts, tmp_path, "run", f"eval.best_metric={metric}",
                                f"eval.best_mode={mode}", extra), show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["step"], r[metric]) for r in rows if r["split"] == "eval"]
    assert [s for s, _ in evals] == [0, 1, 2, 3]
    better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
    kept, best = [], evals[0][1]
    for step, value in evals[1:]:  # the rule, written out: a strict improvement on the best so far
        if better(value, best):
            kept.append(step)
            best = value
    assert kept and len(kept) < 3  # exercised: the metric improved at some evaluations and not at others
    assert [r["step"] for r in rows if r["split"] == "best"] == [0] + kept and out["best"] == {metric: best}
    assert (tmp_path / "run" / "checkpoints" / "best").is_dir()


def test_bad_evaluation_settings_fail_before_the_run_starts(tiny_causal_lm_dir, prompts, tmp_path):
    with pytest.raises(ValueError, match="eval.best_metric='accuracy'.*valid: reward, length_words, .*kl_greedy"):
        train_rl_generate(cfg(tiny_causal_lm_dir, prompts, tmp_path, "a", "eval.best_metric=accuracy"))
    with pytest.raises(ValueError, match=r"eval.best_metric='kl'.*eval.samples=0.*kl_greedy"):
        train_rl_generate(cfg(tiny_causal_lm_dir, prompts, tmp_path, "b", "eval.best_metric=kl"))
    with pytest.raises(ValueError, match=r"reference policy, which exists with LoRA .* or with rl.kl_coef > 0"):
        train_rl_generate(cfg(tiny_causal_lm_dir, prompts, tmp_path, "c", "eval.best_metric=ref_perplexity",
                              "model.lora.r=0", "rl.kl_coef=0"))
    assert not any((tmp_path / n).exists() for n in "abc")  # nothing was started
    out = train_rl_generate(cfg(tiny_causal_lm_dir, prompts, tmp_path, "d", "eval.best_metric=kl", "eval.samples=2",
                                "rl.steps=1"), show_progress=False)
    assert set(out["best"]) == {"kl"} and "kl" in out["eval"]
    with pytest.raises(ValueError, match=r"eval.samples=-1 must be ≥ 0"):
        train_rl_generate(cfg(tiny_causal_lm_dir, prompts, tmp_path, "e", "eval.samples=-1"))


def test_checkpoints_best_exists_when_nothing_beats_the_start(tiny_causal_lm_dir, prompts, tmp_path):
    out = train_rl_generate(cfg(tiny_causal_lm_dir, prompts, tmp_path, "run", "eval.best_metric=kl_greedy",
                                "eval.best_mode=min", "rl.steps=2"), show_progress=False)  # ≈ 0 at the start
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "best"] == [0]
    assert (tmp_path / "run" / "checkpoints" / "best" / "adapter_model.safetensors").exists()
    start = next(r for r in rows if r["split"] == "eval" and r["step"] == 0)
    assert out["best"] == {"kl_greedy": start["kl_greedy"]}


def test_full_fine_tuning_measures_against_its_frozen_copy(tiny_causal_lm_dir, prompts, tmp_path):
    """Without LoRA the reference is a frozen copy (β > 0): training logs its KL, evaluation its KL and perplexity,
    the policy's weights move and the copy's do not."""
    from safetensors.torch import load_file

    out = train_rl_generate(cfg(tiny_causal_lm_dir, prompts, tmp_path, "full", "model.lora.r=0", "rl.kl_coef=0.1",
                                "rl.lr=1e-3", "eval.best_metric=kl_greedy", "eval.best_mode=min"), show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert all("kl" in r for r in rows if r["split"] == "train")
    evals = [r for r in rows if r["split"] == "eval"]
    assert all("kl_greedy" in r and r["ref_perplexity"] > 1 for r in evals)
    assert evals[0]["kl_greedy"] == pytest.approx(0.0, abs=1e-6)  # the policy is its reference at the start
    assert any(abs(r["kl_greedy"]) > 1e-6 for r in evals[1:])  # and moves away from it
    start, _ = load_causal_lm(str(tiny_causal_lm_dir))
    final = load_file(str(tmp_path / "full" / "checkpoints" / "final" / "model.safetensors"))
    moved = [n for n, p in start.named_parameters() if n in final and not torch.equal(final[n], p)]
    assert moved and set(out["best"]) == {"kl_greedy"}


def test_the_frozen_reference_is_placed_on_the_accelerator_s_device(tiny_causal_lm_dir):
    """The copy is made before `prepare` moves the policy; it must follow to the policy's device (a GPU in a real
    run; here the meta device stands in for one)."""
    from rewardtune.train.common import setup_reference
    from rewardtune.train.gen_config import GenRLSettings

    model, _ = load_causal_lm(str(tiny_causal_lm_dir))
    with setup_reference(model, GenRLSettings(kl_coef=0.1), torch.device("meta"))() as ref:
        assert {p.device.type for p in ref.parameters()} == {"meta"}
        assert not any(p.requires_grad for p in ref.parameters())
    assert {p.device.type for p in model.parameters()} == {"cpu"}  # the policy is left where it was


def test_distinct_n_by_hand():
    from rewardtune.train.lm_eval import distinct_n

    words = [["a", "b", "a"], ["a", "b"], []]
    # unigrams: a b a a b → {a, b}: 2 / 5; bigrams: (a b) (b a) (a b) → 2 distinct / 3
    assert distinct_n(words, 1) == pytest.approx(2 / 5) and distinct_n(words, 2) == pytest.approx(2 / 3)
    assert distinct_n([[]], 2) == 0.0  # no n-grams at all: 0, not a division by zero


def moved_policy(model_dir, tmp_path):
    """The tiny base model, its tokenizer, a LoRA policy on a copy with a random non-zero adapter (so it differs from
    the reference), a run and the length reward."""
    base, tok = load_causal_lm(str(model_dir))
    model = apply_lora(load_causal_lm(str(model_dir))[0], LoraSettings(r=4, alpha=8))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    run = start_run(GenRLConfig(), "eval", tmp_path, seed=3)
    return base, tok, model, run, build_rewards(("length",), (), {"length": lambda: length_reward}, "none", "raise")


def test_greedy_kl_and_perplexity_are_the_reference_model_s_own(tiny_causal_lm_dir, tmp_path):
    """The evaluation's numbers recomputed another way: the base model without peft scores the greedy completions."""
    from rewardtune.policies.causal_lm import sample, token_logprobs

    base, tok, model, run, reward = moved_policy(tiny_causal_lm_dir, tmp_path)
    gen = GenSettings(max_new_tokens=6, temperature=1.5)  # greedy evaluation: perplexity and KL at temperature 1
    got = evaluate_lm(run, model, tok, reward, PROMPTS, gen, 0)
    ro = sample(model, tok, PROMPTS, 1, gen, 100, greedy=True)
    mask = ro.completion_mask.bool()
    with torch.no_grad():
        ref, _ = token_logprobs(base, ro.input_ids, ro.attention_mask, mask.shape[1], 1.0, entropy=False)
        pol, _ = token_logprobs(model, ro.input_ids, ro.attention_mask, mask.shape[1], 1.0, entropy=False)
    assert got["ref_perplexity"] == pytest.approx(float(torch.exp(-ref[mask].mean())), rel=1e-4)
    assert got["kl_greedy"] == pytest.approx(float((pol - ref)[mask].mean()), rel=1e-4, abs=1e-6)
    assert abs(got["kl_greedy"]) > 1e-3  # the adapter moved the policy: the check is not 0 == 0
    assert got["length_words"] == pytest.approx(sum(len(c.split()) for c in ro.completions) / len(PROMPTS))


def test_sampled_kl_and_perplexity_at_a_temperature_are_the_reference_model_s_own(tiny_causal_lm_dir, tmp_path):
    """Sampled at τ = 1.5: the KL is k3 against the base model at τ (as π was sampled), the perplexity the base
    model's own at 1; recomputed from the same draws with the base model without peft."""
    from rewardtune.algorithms import kl_k3
    from rewardtune.policies.causal_lm import sample, token_logprobs
    from rewardtune.train.lm_eval import EVAL_SEED_OFFSET

    base, tok, model, run, reward = moved_policy(tiny_causal_lm_dir, tmp_path)
    gen = GenSettings(max_new_tokens=6, temperature=1.5)
    got = evaluate_lm(run, model, tok, reward, PROMPTS, gen, 0, samples=2)
    torch.manual_seed(run.seed + EVAL_SEED_OFFSET)  # the evaluation's draws
    ro = sample(model, tok, PROMPTS, 2, gen, 10**9)
    mask = ro.completion_mask.bool()
    with torch.no_grad():
        ref_t, _ = token_logprobs(base, ro.input_ids, ro.attention_mask, mask.shape[1], 1.5, entropy=False)
        ref_1, _ = token_logprobs(base, ro.input_ids, ro.attention_mask, mask.shape[1], 1.0, entropy=False)
    assert got["ref_perplexity"] == pytest.approx(float(torch.exp(-ref_1[mask].mean())), rel=1e-4)
    assert got["kl"] == pytest.approx(float(kl_k3(ro.logprobs, ref_t)[mask].mean()), rel=1e-4, abs=1e-6)
    assert got["kl"] > 1e-3 and float((ref_t - ref_1)[mask].abs().max()) > 1e-2  # τ matters here


def test_held_out_rewards_are_raw_and_do_not_feed_training_s_normalisation(tiny_causal_lm_dir, tmp_path):
    from rewardtune.policies.causal_lm import sample

    model, tok = load_causal_lm(str(tiny_causal_lm_dir))
    run = start_run(GenRLConfig(), "eval", tmp_path, seed=3)
    reward = build_rewards(("length",), (), {"length": lambda: length_reward}, "running", "raise")
    got = evaluate_lm(run, model, tok, reward, PROMPTS, GenSettings(max_new_tokens=6), 0)
    assert reward.stats == {}  # nothing seen: the running statistics are training's alone
    ro = sample(model, tok, PROMPTS, 1, GenSettings(max_new_tokens=6), 100, greedy=True)
    assert got["reward"] == pytest.approx(sum(length_reward([], ro.completions)) / len(PROMPTS))  # raw, not z-scored
