"""Smoke and behaviour tests of `sft`, `rl` (classifier) and `eval` on a tiny random BERT."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file

from rewardtune.cli import main
from rewardtune.config import ConfigError, load_config
from rewardtune.rewards import RewardError
from rewardtune.train.rl_classifier import RLClassifierConfig, RLSettings, penalties, train_rl_classifier
from rewardtune.train.sft import SFTConfig, train_sft

POS = "good great fun loved brilliant best funny".split()
NEG = "bad awful boring hated dull worst slow".split()
FILLER = "the film movie plot acting was very really so".split()


def reward_per_sample_pos_only(prompts, completions, label, **_):
    """A user reward: +1 for a right 'pos', 0 otherwise (used via module:function)."""
    return [1.0 if (c == g == "pos") else 0.0 for c, g in zip(completions, label)]


def wrong_count(prompts, completions, **_):
    return [1.0]


def returns_nan(prompts, completions, **_):
    return [math.nan] * len(prompts)


def raises(prompts, completions, **_):
    raise ZeroDivisionError("boom")


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    """A separable toy set: the sentiment word decides the label."""
    rng = random.Random(0)
    rows = []
    for i in range(96):
        label = "pos" if i % 2 else "neg"
        words = rng.sample(FILLER, 3) + [rng.choice(POS if label == "pos" else NEG)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    path = tmp_path_factory.mktemp("toy") / "toy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def overrides(model_dir, data, tmp_path, name, *extra):
    return [f"model.name={model_dir}", f"data.path={data}", "data.val_fraction=0.25", "train.epochs=6",
            "train.batch_size=8", "train.lr=5e-3", "train.max_length=16", "train.log_every=5",
            f"runs_dir={tmp_path}", f"name={name}", *extra]


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sft_learns_toy_task_writes_metrics_and_best_checkpoint(tiny_encoder_dir, toy_data, tmp_path):
    cfg = load_config(SFTConfig, None, overrides(tiny_encoder_dir, toy_data, tmp_path, "sft"))
    out = train_sft(cfg, show_progress=False)
    run = tmp_path / "sft"
    rows = read_metrics(run)
    train_rows = [r for r in rows if r["split"] == "train"]
    assert all(math.isfinite(r["loss"]) for r in train_rows)
    assert {r["epoch"] for r in rows if r["split"] == "val"} == set(range(6))
    assert "macro_f1" in rows[-2] and "pos_recall" in rows[-2]
    assert out["best"] >= 0.8, out  # separable by one word: a working trainer gets there in 54 steps
    best = run / "checkpoints" / "best"
    meta = json.loads((best / "rewardtune.json").read_text())
    assert meta["label_names"] == ["neg", "pos"] and meta["trainer"] == "sft"
    start = load_file(str(next(tiny_encoder_dir.glob("*.safetensors"))))
    trained = weights(best)
    changed = [k for k in start if f"bert.{k}" in trained and not torch.equal(start[k], trained[f"bert.{k}"])]
    assert changed, "no encoder weight changed"


@pytest.mark.parametrize("estimator,extra", [
    ("expected", []),
    ("reinforce", ["rl.baseline=rloo", "rl.samples=4"]),
    ("reinforce", ["rl.baseline=ema"]),
    ("value", ["rl.exploration=softmax", "train.epochs=12"]),
    ("value", ["rl.exploration=epsilon", "rl.epsilon=0.5", "train.epochs=1"]),
])
def test_rl_estimators_improve_reward(tiny_encoder_dir, toy_data, tmp_path, estimator, extra):
    cfg = load_config(RLClassifierConfig, None,
                      overrides(tiny_encoder_dir, toy_data, tmp_path, "rl", f"rl.estimator={estimator}", *extra))
    out = train_rl_classifier(cfg, show_progress=False)
    rows = read_metrics(tmp_path / "rl")
    train_rows = [r for r in rows if r["split"] == "train"]
    assert all(math.isfinite(r["loss"]) and "reward/indicator" in r for r in train_rows)
    if "train.epochs=1" not in extra:  # the one-epoch run only checks that ε-greedy runs
        assert out["best"] >= 0.7, (estimator, out)


def test_rl_with_kl_and_entropy_full_and_lora(tiny_encoder_dir, toy_data, tmp_path):
    for name, lora in (("full", []), ("lora", ["model.lora.r=4", "model.lora.alpha=8"])):
        cfg = load_config(RLClassifierConfig, None, overrides(
            tiny_encoder_dir, toy_data, tmp_path, name, "rl.kl_coef=0.1", "rl.entropy_coef=0.01",
            "train.epochs=1", "train.log_every=1", *lora))
        train_rl_classifier(cfg, show_progress=False)
        rows = [r for r in read_metrics(tmp_path / name) if r["split"] == "train"]
        assert rows and all(r["kl"] >= -1e-6 and math.isfinite(r["kl"]) and r["entropy"] > 0 for r in rows)
        # step 1 is before any update: only dropout (train mode) separates policy and reference
        assert rows[0]["kl"] < 1e-3
    assert (tmp_path / "lora" / "checkpoints" / "best" / "adapter_model.safetensors").exists()


def test_kl_penalty_keeps_the_policy_closer_to_its_start(tiny_encoder_dir, toy_data, tmp_path):
    final_kl = {}
    for beta in (1e-9, 5.0):  # ~no penalty vs a strong one; same seed, data and steps
        name = f"beta{beta}"
        train_rl_classifier(load_config(RLClassifierConfig, None, overrides(
            tiny_encoder_dir, toy_data, tmp_path, name, f"rl.kl_coef={beta}", "train.log_every=1")), show_progress=False)
        rows = [r for r in read_metrics(tmp_path / name) if r["split"] == "train"]
        final_kl[beta] = sum(r["kl"] for r in rows[-9:]) / 9  # the last epoch
    assert final_kl[5.0] < 0.5 * final_kl[1e-9], final_kl


def test_cost_matrix_and_user_function_rewards_are_logged_separately(tiny_encoder_dir, toy_data, tmp_path):
    cfg = load_config(RLClassifierConfig, None, overrides(
        tiny_encoder_dir, toy_data, tmp_path, "mix", "train.epochs=1",
        "reward.functions=[cost_matrix, test_classifier_training:reward_per_sample_pos_only]",
        "reward.weights=[1.0, 0.5]", "reward.cost_matrix=pos/neg=-2,neg/pos=-1"))
    train_rl_classifier(cfg, show_progress=False)
    row = [r for r in read_metrics(tmp_path / "mix") if r["split"] == "train"][0]
    assert "reward/cost_matrix" in row and "reward/test_classifier_training:reward_per_sample_pos_only" in row
    assert row["reward/cost_matrix"] < 1.0  # the -2/-1 costs show up in the mean


@pytest.mark.parametrize("fn,match", [
    ("wrong_count", r"returned 1 values for \d+ samples"),
    ("returns_nan", r"returned nan on example 0: prompt="),
    ("raises", r"raised ZeroDivisionError: boom"),
])
def test_bad_reward_function_stops_with_a_clear_error_and_leaves_no_half_started_folder(
        tiny_encoder_dir, toy_data, tmp_path, fn, match):
    cfg = load_config(RLClassifierConfig, None, overrides(
        tiny_encoder_dir, toy_data, tmp_path, "bad", f"reward.functions=[test_classifier_training:{fn}]"))
    with pytest.raises(RewardError, match=match) as e:
        train_rl_classifier(cfg, show_progress=False)
    assert f"test_classifier_training:{fn}" in str(e.value)
    # it failed in the first step: the folder held only the config.yaml its start wrote, so it is removed and the
    # corrected command can reuse the name (run.discard_failed_start; a folder with metrics or checkpoints is kept)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("train", [train_sft, train_rl_classifier])
def test_a_best_metric_the_report_lacks_fails_before_training(tiny_encoder_dir, toy_data, tmp_path, train):
    config = SFTConfig if train is train_sft else RLClassifierConfig
    with pytest.raises(ConfigError, match=r"train.best_metric='acc' .* choose one of: accuracy, macro_precision, .*"
                                          r"pos_f1, auc"):
        train(load_config(config, None, overrides(tiny_encoder_dir, toy_data, tmp_path, "bad", "train.best_metric=acc")))
    assert not (tmp_path / "bad").exists()  # before the run folder: the corrected command may reuse the name
    out = train(load_config(config, None, overrides(tiny_encoder_dir, toy_data, tmp_path, "f1", "train.best_metric=pos_f1",
                                                    "train.epochs=1")), show_progress=False)
    assert 0 <= out["best"] <= 1


def test_label_outside_label_set_is_named(tiny_encoder_dir, toy_data, tmp_path):
    cfg = load_config(SFTConfig, None, overrides(tiny_encoder_dir, toy_data, tmp_path, "x", "data.labels=[neg, neutral]"))
    with pytest.raises(Exception, match=r"toy.jsonl, line 2: field 'label': label 'pos' is not in the label set"):
        train_sft(cfg, show_progress=False)


def anti_indicator(prompts, completions, label, **_):
    """1 for a wrong label: rl with it can only make the classifier worse."""
    return [float(c != y) for c, y in zip(completions, label)]


def test_rl_evaluates_its_start_and_keeps_it_when_nothing_beats_it(tiny_encoder_dir, toy_data, tmp_path):
    train_sft(load_config(SFTConfig, None, overrides(tiny_encoder_dir, toy_data, tmp_path, "sft")), show_progress=False)
    sft_val = [r for r in read_metrics(tmp_path / "sft") if r["split"] == "val"][-1]
    best = tmp_path / "sft" / "checkpoints" / "best"
    out = train_rl_classifier(load_config(RLClassifierConfig, None, overrides(
        best, toy_data, tmp_path, "rl", "train.epochs=2", "reward.functions=[test_classifier_training:anti_indicator]")),
        show_progress=False)
    val = [r for r in read_metrics(tmp_path / "rl") if r["split"] == "val"]
    assert [r["step"] for r in val][0] == 0 and len(val) == 3  # the start, then each epoch's end
    assert val[0]["accuracy"] == sft_val["accuracy"]  # the same model on the same seeded split
    assert all(r["accuracy"] < val[0]["accuracy"] for r in val[1:])  # the anti-reward made it worse...
    assert out["best"] == val[0]["accuracy"]  # ...so the start is the best kept, unchanged
    assert json.loads((tmp_path / "rl" / "checkpoints" / "best" / "rewardtune.json").read_text())["step"] == 0
    kept = weights(tmp_path / "rl" / "checkpoints" / "best")
    assert all(torch.equal(v, weights(best)[k]) for k, v in kept.items())


def zero_reward(prompts, completions, **_):
    """A reward that says nothing: its expected gradient is exactly 0."""
    return [0.0] * len(completions)


def test_mixed_objective_adds_the_gold_labels_cross_entropy_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]], requires_grad=True)  # π = (1/4, 3/4) and (1/2, 1/2)
    gold = torch.tensor([0, 1])
    out, stats = penalties(logits, None, RLSettings(ce_coef=0.5), gold)
    # CE = (−log 1/4 − log 1/2) / 2 = (2 ln 2 + ln 2) / 2 = 1.5 ln 2; the term is 0.5 × that = 0.75 ln 2
    assert stats["ce"].item() == pytest.approx(1.5 * math.log(2))
    assert out.item() == pytest.approx(0.75 * math.log(2))
    out.backward()
    # ∂/∂z of 0.5 × mean CE = 0.5 × (π − onehot(gold)) / 2: row 0 (1/4 − 1, 3/4) / 4, row 1 (1/2, 1/2 − 1) / 4
    assert torch.allclose(logits.grad, torch.tensor([[-0.1875, 0.1875], [0.125, -0.125]]))
    plain, plain_stats = penalties(logits.detach(), None, RLSettings(), gold)  # ce_coef 0: nothing added or logged
    assert plain.item() == 0 and "ce" not in plain_stats


def test_mixed_objective_teaches_the_labels_where_the_reward_says_nothing(tiny_encoder_dir, toy_data, tmp_path):
    out = train_rl_classifier(load_config(RLClassifierConfig, None, overrides(
        tiny_encoder_dir, toy_data, tmp_path, "ce", "reward.functions=[test_classifier_training:zero_reward]",
        "rl.ce_coef=1.0", "train.log_every=1")), show_progress=False)
    rows = [r for r in read_metrics(tmp_path / "ce") if r["split"] == "train"]
    assert all("ce" in r for r in rows)
    assert sum(r["ce"] for r in rows[-9:]) < sum(r["ce"] for r in rows[:9])  # the last epoch's CE below the first's
    assert out["best"] >= 0.8, out  # the labels alone teach it, as sft does (the reward's gradient is 0)


def test_sft_then_rl_from_checkpoint_then_eval_cli(tiny_encoder_dir, toy_data, tmp_path, capsys):
    train_sft(load_config(SFTConfig, None, overrides(tiny_encoder_dir, toy_data, tmp_path, "sft")), show_progress=False)
    best = tmp_path / "sft" / "checkpoints" / "best"
    out = train_rl_classifier(load_config(RLClassifierConfig, None, overrides(
        best, toy_data, tmp_path, "rl", "train.epochs=1", "train.lr=1e-3")), show_progress=False)
    assert out["best"] >= 0.7  # starts from the trained classifier, not from scratch
    preds = tmp_path / "preds.jsonl"
    assert main(["eval", str(tmp_path / "rl" / "checkpoints" / "best"), "--data", str(toy_data), "--out", str(preds)]) == 0
    printed = capsys.readouterr().out
    assert "macro avg" in printed and "confusion (rows = gold, columns = predicted)" in printed
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 96 and set(rows[0]) == {"text", "label", "prediction", "probabilities"}
    assert abs(sum(rows[0]["probabilities"].values()) - 1) < 1e-5


def test_bf16_autocast_and_frozen_embeddings(tiny_encoder_dir, toy_data, tmp_path):
    train_sft(load_config(SFTConfig, None, overrides(tiny_encoder_dir, toy_data, tmp_path, "fp32", "train.epochs=1")),
              show_progress=False)  # a plain run first: the accelerate state must not leak into the next
    cfg = load_config(SFTConfig, None, overrides(
        tiny_encoder_dir, toy_data, tmp_path, "bf16", "train.mixed_precision=bf16", "train.freeze_embeddings=true"))
    train_sft(cfg, show_progress=False)  # no accuracy bar: the tiny model's random word embeddings stay frozen
    rows = [r for r in read_metrics(tmp_path / "bf16") if r["split"] == "train"]
    assert all(math.isfinite(r["loss"]) for r in rows)
    start = load_file(str(next(tiny_encoder_dir.glob("*.safetensors"))))
    trained = weights(tmp_path / "bf16" / "checkpoints" / "best")
    emb = "embeddings.word_embeddings.weight"
    assert torch.equal(start[emb], trained[f"bert.{emb}"])  # frozen
    assert not torch.equal(start["embeddings.position_embeddings.weight"],
                           trained["bert.embeddings.position_embeddings.weight"])  # the rest trains


@pytest.mark.parametrize("baseline", ["mean", "ema", "rloo"])
def test_reinforce_label_baselines_over_processes_are_the_global_batch_s(baseline):
    """Two processes simulated, holding 3 and 2 rows of a 5-row batch (a last batch that splits unevenly),
    rank 0's second row dropped by a failed reward: each process's advantages are its rows of the one-process
    advantages, and both keep one process's EMA."""
    from rewardtune.algorithms import EMABaseline
    from rewardtune.train.rl_classifier import RLSettings, label_advantages

    rl = RLSettings(estimator="reinforce", baseline=baseline, samples=2)
    steps = [torch.tensor([[1.0, 0.0], [5.0, 5.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]),  # kept mean 0.625
             torch.tensor([[0.0, 1.0], [5.0, 5.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])]  # kept mean 0.375
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0])
    one, two = EMABaseline(), [EMABaseline(), EMABaseline()]
    for full in steps:
        whole = label_advantages(full, keep, rl, one)  # (5, 2)
        parts = [(full[:3], keep[:3]), (full[3:], keep[3:])]
        mine = [torch.cat([r, k[:, None]], -1) for r, k in parts]  # what each process hands the gather
        gather = lambda t: mine  # noqa: E731
        shards = [label_advantages(*parts[r], rl, two[r], gather=gather, rank=r) for r in (0, 1)]
        assert torch.equal(torch.cat(shards), whole)
        assert torch.equal(whole[1], torch.zeros(2))  # the dropped row has no advantage
        alone = label_advantages(*parts[1], rl, EMABaseline())  # without the gather: rank 1's own mean (1, then 0)
        assert baseline != "mean" or not torch.equal(alone, whole[3:])
    if baseline == "mean":
        assert whole[0].tolist() == [0.0 - 0.375, 1.0 - 0.375]  # second step: kept mean (1 + 2 + 0 + 0) / 8
    if baseline == "ema":
        assert one.value == two[0].value == two[1].value == pytest.approx(0.9 * 0.625 + 0.1 * 0.375)


@pytest.mark.parametrize("baseline", ["rloo", "none", "mean"])
def test_reinforce_on_a_later_process_gets_an_advantage_for_each_of_its_rows(baseline):
    """Process 1 of 2 (simulated gather): RLOO and no baseline need no gather, and must not take process 1's rows
    out of its own rows alone (they did: an empty advantage, and the run crashed under torchrun)."""
    from rewardtune.algorithms import EMABaseline
    from rewardtune.rewards import build_rewards
    from rewardtune.rewards.rules import indicator
    from rewardtune.train.rl_classifier import RLSettings, Step, sampled

    torch.manual_seed(0)
    logits = torch.randn(3, 2, requires_grad=True)  # (b, A)
    reward = build_rewards(["indicator"], registry={"indicator": lambda: indicator})
    other = torch.zeros(4, 9)  # process 0's 4 rows: K = 8 rewards and the kept flag

    def gather(t: torch.Tensor) -> list[torch.Tensor]:
        return [other, t]
    s = Step(logits, ["a", "b", "c"], ["pos", "neg", "pos"], ["neg", "pos"], reward,
             RLSettings(estimator="reinforce", baseline=baseline, samples=8), EMABaseline(), gather=gather, rank=1)
    loss, stats = sampled(s)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None and float(stats["adv_abs"]) > 0


def test_reinforce_logs_the_advantage_size_and_how_often_samples_agree():
    """Its loss is ≈0 by construction, so the log must show what moves: all K samples of a near-certain
    policy agree (RLOO then gives them zero advantage); a uniform policy's samples disagree."""
    from rewardtune.algorithms import EMABaseline
    from rewardtune.rewards.base import CombinedReward
    from rewardtune.rewards.rules import indicator
    from rewardtune.train.rl_classifier import RLSettings, Step, sampled

    rl = RLSettings(estimator="reinforce", baseline="rloo", samples=8)
    reward = CombinedReward({"indicator": indicator}, {"indicator": 1.0})
    torch.manual_seed(0)
    for logits, agree in ((torch.tensor([[30.0, 0.0], [0.0, 30.0]]), 1.0), (torch.zeros(2, 2), 0.0)):
        step = Step(logits.requires_grad_(), ["a", "b"], ["pos", "pos"], ["pos", "neg"], reward, rl, EMABaseline())
        loss, stats = sampled(step)
        assert float(stats["samples_agree"]) == agree  # 8 draws at p = 1/2 all alike: 2 · 2⁻⁷, not with seed 0
        if agree:
            assert float(stats["adv_abs"]) == 0.0 and float(loss) == 0.0  # row 1 always right, row 2 always wrong
        else:
            # RLOO over 8 samples of which k are right: |adv| is 1 − (k−1)/7 for those, k/7 for the others, so the
            # row's mean |adv| is 2k(8−k)/56 ≥ 14/56 = 0.25 whenever 0 < k < 8
            assert float(stats["adv_abs"]) >= 0.25


@pytest.mark.parametrize("n", [5, 1])
def test_validation_over_processes_predicts_a_share_each_and_reports_on_all(tiny_encoder_dir, n):
    """Two simulated processes: each predicts a contiguous share (2 and 3 of 5 examples) and the main process
    reports on both, as one process does on all; with fewer examples than processes the main one does all."""
    from types import SimpleNamespace
    from unittest import mock

    from rewardtune.data import Examples
    from rewardtune.eval import evaluate_classifier
    from rewardtune.models import load_classifier
    from rewardtune.train import common

    torch.manual_seed(0)
    model, tok = load_classifier(str(tiny_encoder_dir), 2, {0: "neg", 1: "pos"})
    ex = Examples(["good fun", "the plot was dull", "bad", "loved it, best film", "so slow"][:n], [1, 0, 0, 1, 0][:n],
                  ["neg", "pos"])
    opt = common.OptimSettings(max_length=16, eval_batch_size=2)
    one = evaluate_classifier(model, tok, ex.texts, ex.labels, ex.label_names, 16, batch_size=2)

    def process(rank, others):
        """`evaluate` on process `rank` of 2; the fake gather gives `others` with this process's share at `rank`."""
        acc = SimpleNamespace(num_processes=2, process_index=rank, device="cpu", unwrap_model=lambda m: m)
        run = SimpleNamespace(accelerator=acc, is_main=rank == 0)
        seen, mine, real = [], [], common.predict

        def gather(objs):
            mine.append(objs[0])
            return [objs[0] if r == rank else o for r, o in enumerate(others)]
        with mock.patch.object(common, "predict", lambda m, t, texts, *a: seen.append(list(texts)) or real(m, t, texts, *a)), \
                mock.patch("accelerate.utils.gather_object", gather):
            return common.classification_report(run, model, tok, ex, ex.label_names, opt), seen, mine

    rep1, seen1, share1 = process(1, [torch.empty(0, 2), None])  # first: its share is what process 0's gather gets
    rep0, seen0, _ = process(0, [None, *share1])
    assert rep1 is None  # only the main process reports
    if n == 5:
        assert seen0 == [ex.texts[:2]] and seen1 == [ex.texts[2:]]
    else:  # one example: process 1 predicts nothing and gathers nothing; process 0 predicts it
        assert seen0 == [ex.texts] and seen1 == [] and share1 == []
    assert rep0.metrics == one.metrics and rep0.predictions == one.predictions
    assert torch.allclose(torch.tensor(rep0.probabilities), torch.tensor(one.probabilities), atol=1e-6)


@pytest.mark.parametrize("world,n", [(1, 5), (2, 5), (3, 5), (3, 2)])
def test_over_shares_gives_the_main_process_every_row_once_in_order(world, n):
    """Simulated processes (rank by rank; the fake gather hands back what each computed): with n ≥ world each
    computes a contiguous share (3 of 5: rows 0, 1-2, 3-4); with fewer rows the main process computes them all."""
    from types import SimpleNamespace
    from unittest import mock

    from rewardtune.collectives import over_shares

    calls, shares = {r: [] for r in range(world)}, {}

    def gather(rank, mine):  # this process's share is kept; every share known so far comes back, in rank order
        shares[rank] = mine
        return [shares.get(r, torch.empty(0)) for r in range(world)]

    def on(rank):
        run = SimpleNamespace(accelerator=SimpleNamespace(num_processes=world, process_index=rank), is_main=rank == 0)
        with mock.patch("accelerate.utils.gather_object", lambda objs: gather(rank, objs[0])):
            return over_shares(run, n, lambda rows: calls[rank].append(rows) or torch.arange(n)[rows].float())

    others = [on(r) for r in range(1, world)]  # every other process first: its share, then None
    main = on(0)  # the main process last: its gather sees every share
    assert all(o is None for o in others) and torch.equal(main, torch.arange(n).float())
    if n >= world:
        assert [calls[r] for r in range(world)] == [[slice(r * n // world, (r + 1) * n // world)] for r in range(world)]
    else:
        assert calls[0] == [slice(0, n)] and not any(calls[r] for r in range(1, world)) and not shares


def test_over_shares_raises_on_every_process_when_one_fails():
    """Process 1's share raises: it re-raises its own error after the gather, and process 0 (which got a share
    back from itself and an error text from process 1) raises too, naming process 1; neither waits forever."""
    from types import SimpleNamespace
    from unittest import mock

    from rewardtune.collectives import over_shares

    def values(rank):
        def f(rows):
            if rank == 1:
                raise MemoryError("share too large")
            return torch.zeros(rows.stop - rows.start)
        return f

    def on(rank, gathered):
        run = SimpleNamespace(accelerator=SimpleNamespace(num_processes=2, process_index=rank), is_main=rank == 0)
        with mock.patch("accelerate.utils.gather_object", lambda objs: [objs[0] if r == rank else g
                                                                         for r, g in enumerate(gathered)]):
            return over_shares(run, 4, values(rank))

    with pytest.raises(MemoryError, match="share too large"):
        on(1, [torch.zeros(2), None])
    with pytest.raises(RuntimeError, match="process 1 failed while computing its share: MemoryError: share too large"):
        on(0, [None, "MemoryError: share too large"])


def test_rl_goes_on_from_a_lora_sft_checkpoint(tiny_encoder_dir, toy_data, tmp_path):
    """A LoRA sft checkpoint is a starting point for rl: loaded for training it is the sft model (same logits, its
    adapter merged), and rl changes it. (It used to fail: the adapter folder has no config.json.)"""
    from rewardtune.models import load_classifier, load_trained_classifier

    train_sft(load_config(SFTConfig, None, overrides(tiny_encoder_dir, toy_data, tmp_path, "sft", "train.epochs=1",
                                                      "model.lora.r=4", "model.lora.alpha=8")))
    best = tmp_path / "sft" / "checkpoints" / "best"
    sft_model, tok = load_trained_classifier(best)
    start, _ = load_classifier(str(best), 2)
    assert all(p.requires_grad for p in start.parameters())  # a full model to train on, not a frozen adapter
    batch = tok(["good film", "the plot was bad"], padding=True, return_tensors="pt")
    with torch.no_grad():
        want = sft_model.eval()(**batch).logits
        assert torch.allclose(start.eval()(**batch).logits, want, atol=1e-5)
    train_rl_classifier(load_config(RLClassifierConfig, None, overrides(
        tiny_encoder_dir, toy_data, tmp_path, "rl", "train.epochs=1", f"model.name={best}")))
    # rl's last step (its best may be the start, which rl evaluates too) holds a changed full model
    last = sorted((tmp_path / "rl" / "checkpoints").glob("step-*"))[-1]
    start.load_state_dict(load_file(str(last / "model.safetensors")))
    with torch.no_grad():
        assert not torch.allclose(start.eval()(**batch).logits, want, atol=1e-4)
