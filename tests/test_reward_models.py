"""Reward models: pairwise (Bradley–Terry) and pointwise training on tiny models, use as reward functions."""
from __future__ import annotations

import json
import logging
import random
import shutil

import pytest
import torch

from rewardtune.cli import main
from rewardtune.config import load_config
from rewardtune.data import DataError
from rewardtune.rewards import RewardModelError, reward_model
from rewardtune.train.reward_model import RMConfig, train_reward_model

POS = "good great fun loved brilliant best funny".split()
NEG = "bad awful boring hated dull worst slow".split()
FILLER = "the film movie plot acting was very really so".split()


def sentence(rng, words):
    out = rng.sample(FILLER, 3) + [rng.choice(words)]
    rng.shuffle(out)
    return " ".join(out)


@pytest.fixture(scope="module")
def pair_file(tmp_path_factory):
    """Separable preferences: the chosen completion holds a positive word, the rejected a negative one."""
    rng = random.Random(1)
    rows = [{"prompt": "", "chosen": sentence(rng, POS), "rejected": sentence(rng, NEG)} for _ in range(96)]
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def label_file(tmp_path_factory):
    rng = random.Random(2)
    rows = [{"text": sentence(rng, POS if i % 2 else NEG), "label": "positive" if i % 2 else "negative"}
            for i in range(96)]
    path = tmp_path_factory.mktemp("labels") / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cfg(model_dir, data, tmp_path, name, *extra):
    return load_config(RMConfig, None, [
        f"model.name={model_dir}", f"data.path={data}", "data.val_fraction=0.25", "train.epochs=6",
        "train.batch_size=8", "train.lr=5e-3", "train.max_length=16", "train.log_every=1",
        f"runs_dir={tmp_path}", f"name={name}", *extra])


@pytest.fixture(scope="module")
def pairwise_rm(tiny_encoder_dir, pair_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("rm-runs")
    out = train_reward_model(cfg(tiny_encoder_dir, pair_file, root, "pw", "rm.mode=pairwise", "rm.center_coef=0.01"),
                             show_progress=False)
    return out, root / "pw"


def test_pairwise_loss_falls_and_accuracy_beats_chance(pairwise_rm):
    out, run = pairwise_rm
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    first, last = sum(r["loss"] for r in train[:9]) / 9, sum(r["loss"] for r in train[-9:]) / 9
    assert last < first * 0.7, (first, last)  # log 2 ≈ 0.69 at the start
    assert out["best"] >= 0.8  # held-out pairs; chance is 0.5


def test_pairwise_rm_scores_as_a_reward_function_deterministically(pairwise_rm, tiny_causal_lm_dir):
    from transformers import AutoTokenizer

    best = pairwise_rm[1] / "checkpoints" / "best"
    rm = reward_model(best)
    texts = ["the film was great", "the film was awful", "loved it really", "hated it really"]
    s1 = rm([""] * 4, texts)
    assert s1[0] > s1[1] and s1[2] > s1[3]
    assert reward_model(best)([""] * 4, texts) == s1  # save → load → identical scores
    # A policy with another tokenizer: its completions reach the reward model as text only.
    policy_tok = AutoTokenizer.from_pretrained(tiny_causal_lm_dir)
    decoded = [policy_tok.decode(policy_tok(t)["input_ids"]) for t in texts]
    assert rm([""] * 4, decoded) == s1


def test_pointwise_rm_probability_of_positive(tiny_encoder_dir, label_file, tmp_path):
    out = train_reward_model(cfg(tiny_encoder_dir, label_file, tmp_path, "pt"), show_progress=False)
    assert out["best"] >= 0.8
    best = tmp_path / "pt" / "checkpoints" / "best"
    meta = json.loads((best / "rewardtune.json").read_text())
    assert meta["kind"] == "reward_model" and meta["head"] == "classifier"
    val_row = [json.loads(line) for line in (tmp_path / "pt" / "metrics.jsonl").read_text().splitlines()
               if '"split": "val"' in line][-1]
    assert 0.5 < val_row["auc"] <= 1.0
    scores = reward_model(best)(["", ""], ["really loved the plot", "really hated the plot"])
    assert all(0 <= s <= 1 for s in scores) and scores[0] > scores[1]  # P("positive")


def test_rm_score_cli_writes_scores_and_warns_once_on_truncation(pairwise_rm, tmp_path, capsys, caplog):
    best = pairwise_rm[1] / "checkpoints" / "best"
    data = tmp_path / "c.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["great film " * 20, "awful film " * 20, "fun"]))
    out = tmp_path / "scores.jsonl"
    with caplog.at_level(logging.WARNING, logger="rewardtune.rewards"):
        assert main(["rm", "score", str(best), "--data", str(data), "--max-length", "8", "--out", str(out)]) == 0
    assert caplog.text.count("truncated on the right") == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and rows[0]["score"] > rows[1]["score"]
    assert "scored 3 rows" in capsys.readouterr().out


def test_bad_pairs_are_named(tiny_encoder_dir, tmp_path):
    cases = {
        "missing": ({"prompt": "", "chosen": "good"}, r"no column 'rejected'; the columns are: prompt, chosen"),
        "same": ({"chosen": "good film", "rejected": "good film "}, r"line 1: chosen and rejected are identical"),
        "empty": ({"chosen": "good film", "rejected": "  "}, r"line 1: field 'rejected': expected non-empty text"),
    }
    for name, (row, match) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text(json.dumps(row) + "\n")
        with pytest.raises(DataError, match=match):
            train_reward_model(cfg(tiny_encoder_dir, path, tmp_path, name, "rm.mode=pairwise"), show_progress=False)


def test_broken_reward_model_folders(pairwise_rm, tmp_path):
    best = pairwise_rm[1] / "checkpoints" / "best"
    missing = tmp_path / "missing"
    shutil.copytree(best, missing)
    (missing / "model.safetensors").unlink()
    with pytest.raises(RewardModelError, match=r"missing model.safetensors"):
        reward_model(missing)
    mismatch = tmp_path / "mismatch"
    shutil.copytree(best, mismatch)
    meta = json.loads((mismatch / "rewardtune.json").read_text())
    (mismatch / "rewardtune.json").write_text(json.dumps({**meta, "head": "classifier", "label_names": ["a", "b"]}))
    with pytest.raises(RewardModelError, match=r"2 label names but the head has 1 outputs"):
        reward_model(mismatch)
    with pytest.raises(RewardModelError, match="is not a folder"):
        reward_model(tmp_path / "nope")


@pytest.fixture(scope="module")
def score_file(tmp_path_factory):
    """Scores in [0, 3]: the number of positive words in the sentence (0–3), so a text's words set its score."""
    rng = random.Random(3)
    rows = []
    for _ in range(120):
        k = rng.randrange(4)
        words = rng.sample(POS, k) + rng.sample(NEG, 3 - k) + rng.sample(FILLER, 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "score": k})
    path = tmp_path_factory.mktemp("scores") / "scores.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_regression_rm_learns_scores_and_is_a_scalar_reward(tiny_encoder_dir, score_file, tmp_path):
    out = train_reward_model(cfg(tiny_encoder_dir, score_file, tmp_path, "reg", "rm.mode=regression", "train.epochs=15"),
                             show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "reg" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["split"] == "val"]
    assert val[-1]["mse"] < val[0]["mse"] and out["best"] >= 0.7, val  # held-out Pearson; 0 for a constant guess
    best = tmp_path / "reg" / "checkpoints" / "best"
    assert json.loads((best / "rewardtune.json").read_text())["head"] == "scalar"
    s = reward_model(best)(["", ""], ["great best loved the film", "awful worst boring the film"])
    assert s[0] > s[1]


def test_regression_rm_names_the_row_with_a_bad_score(tiny_encoder_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "score": 1.5}\n{"text": "odd", "score": "high"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl.*line 2.*'score'.*finite number.*'high'"):
        train_reward_model(cfg(tiny_encoder_dir, bad, tmp_path, "bad", "rm.mode=regression"), show_progress=False)
    bad.write_text('{"text": "fine", "rating": 1}\n')
    with pytest.raises(DataError, match="no column 'score'.*text, rating"):
        train_reward_model(cfg(tiny_encoder_dir, bad, tmp_path, "bad2", "rm.mode=regression"), show_progress=False)


def test_pairwise_rm_on_a_causal_lm_backbone(tiny_causal_lm_dir, pair_file, tmp_path):
    """A causal LM gets a last-token score head (LlamaForSequenceClassification); LoRA trains it."""
    out = train_reward_model(cfg(tiny_causal_lm_dir, pair_file, tmp_path, "lm", "rm.mode=pairwise",
                                 "model.lora.r=8", "train.epochs=8"), show_progress=False)
    assert out["best"] >= 0.75, out
    best = tmp_path / "lm" / "checkpoints" / "best"
    rm = reward_model(best)
    texts = ["the film was great", "the film was awful"]
    assert rm(["", ""], texts) == reward_model(best)(["", ""], texts)  # reload → identical scores


def test_each_process_takes_its_share_of_every_global_batch():
    from rewardtune.train.common import shares

    order = [[0, 1, 2, 3, 4], [5]]
    # rank 0 of 2: rows 0, 2, 4 of the first batch, weight 2 · 3 / 5 = 1.2; all of the second, weight 2 · 1 / 1
    assert list(shares(order, 0, 2)) == [([0, 1, 2, 3, 4], [0, 2, 4], 1.2), ([5], [5], 2.0)]
    # rank 1: rows 1, 3 (weight 2 · 2 / 5 = 0.8); nothing of the one-row batch: its row with weight 0
    assert list(shares(order, 1, 2)) == [([0, 1, 2, 3, 4], [1, 3], 0.8), ([5], [5], 0.0)]
    assert list(shares(order, 0, 1)) == [(b, b, 1.0) for b in order]


def test_the_centring_mean_counts_every_process_but_a_filler_share():
    """`_batch_mean` on two simulated processes: one with rows [1, 2], one holding a weight-0 filler row [5]
    (its share of a one-row batch was empty). Each one's all-reduce adds what the other hands in."""
    import torch

    from rewardtune.train.reward_model import _batch_mean

    class Peer:  # an all-reduce (sum) whose other process contributed `other`
        def __init__(self, other):
            self.other = other

        def reduce(self, t, op):
            assert op == "sum"
            return t + self.other

    real, filler = torch.tensor([1.0, 2.0]), torch.tensor([5.0])
    # what each hands in: (sum, count) of its rows, or (0, 0) for the filler
    assert float(_batch_mean(Peer(torch.tensor([0.0, 0.0])), real, counts=True)) == 1.5  # (1 + 2) / 2
    assert float(_batch_mean(Peer(torch.tensor([3.0, 2.0])), filler, counts=False)) == 1.5  # not (1 + 2 + 5) / 3


def test_generative_rl_with_a_reward_model_and_a_second_reward_logs_each(pairwise_rm, tiny_causal_lm_dir, tmp_path):
    """A causal-LM policy scored by the tiny BERT reward model (its own tokenizer) plus the length reward: the total
    is their weighted sum, each component is logged (mean and std), and samples.jsonl carries every component."""
    from rewardtune.train.gen_config import GenRLConfig
    from rewardtune.train.rl_generate import train_rl_generate

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["the film was", "i really", "the plot", "a"]))
    rm = f"rm:{pairwise_rm[1] / 'checkpoints' / 'best'}"
    train_rl_generate(load_config(GenRLConfig, None, [
        f"model.name={tiny_causal_lm_dir}", "model.lora.r=4", f"data.path={prompts}", "rl.prompts_per_step=2",
        "rl.samples_per_prompt=3", "rl.steps=2", "eval.prompts=2", "eval.every=0", "eval.sample_every=1",
        f"reward.functions=[{rm}, length]", "reward.weights=[2.0, 0.5]", "gen.max_new_tokens=5", f"runs_dir={tmp_path}",
        "name=two"]), show_progress=False)
    train = [r for r in map(json.loads, (tmp_path / "two" / "metrics.jsonl").read_text().splitlines())
             if r["split"] == "train"]
    assert len(train) == 2
    for r in train:
        assert {f"reward/{rm}", "reward/length", f"reward_std/{rm}", "reward_std/length"} <= r.keys()
        assert r["reward"] == pytest.approx(2.0 * r[f"reward/{rm}"] + 0.5 * r["reward/length"], rel=1e-5)
        assert r[f"reward_std/{rm}"] > 0  # the reward model told the six completions apart
    samples = [json.loads(line) for line in (tmp_path / "two" / "samples.jsonl").read_text().splitlines()]
    train_samples = [s for s in samples if "rewards" in s]
    assert [s["step"] for s in train_samples] == [1, 1, 1, 2, 2, 2]  # the first prompt's K = 3 completions per step
    for s in train_samples:
        assert s["reward"] == pytest.approx(2.0 * s["rewards"][rm] + 0.5 * s["rewards"]["length"], rel=1e-5)


def test_reward_models_run_on_the_device_they_are_given(pairwise_rm):
    from rewardtune.rewards import build_rewards

    best = pairwise_rm[1] / "checkpoints" / "best"
    on_meta = build_rewards((f"rm:{best}",), device=torch.device("meta")).fns[f"rm:{best}"]
    assert {p.device.type for p in on_meta.model.parameters()} == {"meta"}  # a GPU's stand-in
    on_cpu = build_rewards((f"rm:{best}",)).fns[f"rm:{best}"]
    assert {p.device.type for p in on_cpu.model.parameters()} == {"cpu"}
