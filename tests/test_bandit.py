"""Learning from logged bandit feedback: the log's checks, DR's reward model, conversion, `bandit train` (smoke run,
exact resumption) and the `ope` / `bandit convert` commands, on a tiny random encoder."""
from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from rewardtune.bandit.convert import epsilon_greedy_exploration, sample_log, softmax_exploration
from rewardtune.bandit.direct import cross_fit, fit_reward_table
from rewardtune.bandit.log import LogColumns, load_log
from rewardtune.cli import main
from rewardtune.config import load_config
from rewardtune.data import DataError
from rewardtune.train.bandit import BanditConfig, train_bandit

WORDS = {"pos": "good great fun loved".split(), "neg": "bad awful dull hated".split()}
FILLER = "the film movie plot was very".split()


def toy_rows(n: int, seed: int) -> list[dict]:
    """Labelled toy texts and a uniform logging policy's feedback on them (p = 0.5, reward 1 for the right label)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        y = ("pos", "neg")[i % 2]
        a = rng.choice(("pos", "neg"))
        out.append({"text": " ".join(rng.sample(FILLER, 3) + [rng.choice(WORDS[y])]), "label": y, "action": a,
                    "reward": float(a == y), "propensity": 0.5})
    return out


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def log_file(tmp_path_factory):
    return write(tmp_path_factory.mktemp("log") / "log.jsonl", toy_rows(40, 0))


@pytest.fixture(scope="module")
def test_file(tmp_path_factory):
    return write(tmp_path_factory.mktemp("test") / "test.jsonl", toy_rows(16, 1))


@pytest.mark.parametrize("field,value,expected", [
    ("propensity", 0, "propensity 0.0 is not in (0, 1]"),
    ("propensity", 1.5, "propensity 1.5 is not in (0, 1]"),
    ("propensity", "x", "propensity 'x' is not a number"),
    ("action", "maybe", "action 'maybe' is not in the action set"),
    ("reward", None, "missing reward"),
])
def test_a_bad_row_is_named_with_its_line_field_and_fix(tmp_path, field, value, expected):
    rows = toy_rows(5, 0)
    rows[3][field] = value
    with pytest.raises(DataError) as e:
        load_log(write(tmp_path / "log.jsonl", rows), actions=("neg", "pos"))
    msg = str(e.value)
    assert "log.jsonl, line 4" in msg and f"field {field!r}" in msg and expected in msg


def test_a_missing_column_names_the_row_and_the_setting(tmp_path):
    rows = toy_rows(5, 0)
    del rows[2]["propensity"]
    with pytest.raises(DataError, match=r"line 3: no field 'propensity' \(the propensity\).*propensity_column=FIELD"):
        load_log(write(tmp_path / "log.jsonl", rows))


def test_candidate_sets_are_read_and_checked(tmp_path):
    rows = [dict(r, cands=["pos", "neg"]) for r in toy_rows(4, 0)]
    log = load_log(write(tmp_path / "log.jsonl", rows), LogColumns(candidates="cands"))
    assert log.candidates is not None and log.candidates.all() and log.action_names == ["neg", "pos"]
    rows[1]["cands"] = ["pos" if rows[1]["action"] == "neg" else "neg"]
    with pytest.raises(DataError, match="line 2: field 'cands': the logged action is not among"):
        load_log(write(tmp_path / "log.jsonl", rows), LogColumns(candidates="cands"))


def test_reward_table_fits_per_action_rewards():
    # two actions: action 0's reward is the first feature, action 1's is constant 1; tiny ridge penalty
    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 3, generator=g, dtype=torch.float64)
    a = torch.arange(200) % 2
    r = torch.where(a == 0, x[:, 0], torch.ones(200, dtype=torch.float64))
    q = fit_reward_table(x, a, r, 3, l2=1e-6).predict(x)  # (200, 3); action 2 was never logged
    assert torch.allclose(q[:, 0], x[:, 0], atol=1e-3) and torch.allclose(q[:, 1], torch.ones(200, dtype=torch.float64), atol=1e-3)
    assert torch.allclose(q[:, 2], torch.full((200,), r.mean().item(), dtype=torch.float64))  # the mean reward
    assert cross_fit(x, a, r, 3, l2=1e-6).shape == (200, 3)


def test_exploration_and_sampling():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    eps = epsilon_greedy_exploration(probs, epsilon=0.3)  # (1 − 0.3)·greedy + 0.1
    assert eps.flatten().tolist() == pytest.approx([0.8, 0.1, 0.1, 0.1, 0.1, 0.8])
    assert torch.allclose(softmax_exploration(probs, 1.0), probs.double())
    assert torch.allclose(softmax_exploration(probs, 1e6), torch.full((2, 3), 1 / 3, dtype=torch.float64), atol=1e-5)
    actions, prop, reward = sample_log(eps, [0, 2], seed=0)
    assert prop.tolist() == eps[torch.arange(2), actions].tolist()
    assert reward.tolist() == [float(actions[0] == 0), float(actions[1] == 2)]
    assert torch.equal(sample_log(eps, [0, 2], seed=0)[0], actions)  # seeded


def bandit_args(model, log, test, root, name, estimator="banditnet"):
    # 40 rows, val 0.25 → 30 train rows / batch 8 → 4 steps per epoch; 3 epochs = 12 steps
    return [f"model.name={model}", f"data.path={log}", f"data.test_path={test}", "data.val_fraction=0.25",
            "train.epochs=3", "train.batch_size=8", "train.lr=5e-3", "train.max_length=16", "train.log_every=1",
            f"bandit.estimator={estimator}", f"runs_dir={root}", f"name={name}"]


def test_snips_as_the_training_objective_warns(tiny_encoder_dir, log_file, test_file, tmp_path, capsys):
    for estimator in ("snips", "banditnet"):
        args = bandit_args(tiny_encoder_dir, log_file, test_file, tmp_path, estimator, estimator) + ["train.epochs=1"]
        train_bandit(load_config(BanditConfig, None, args), show_progress=False)
        warned = "bandit.estimator=snips as a training objective can collapse" in capsys.readouterr().out
        assert warned == (estimator == "snips")


@pytest.mark.parametrize("estimator", ["ips", "snips", "banditnet"])  # dr: the resumption test below
def test_smoke_run_trains_logs_and_saves_the_best(tiny_encoder_dir, log_file, test_file, tmp_path, estimator):
    args = bandit_args(tiny_encoder_dir, log_file, test_file, tmp_path, "run", estimator) + ["train.epochs=2"]
    out = train_bandit(load_config(BanditConfig, None, args), show_progress=False)
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert len(train_rows) == 8 and all(torch.isfinite(torch.tensor(r["loss"])) for r in train_rows)
    val = [r for r in rows if r["split"] == "val"]
    assert len(val) == 2 and all(r["snips_low"] <= r["snips"] <= r["snips_high"] for r in val) and "dr" not in val[0]
    assert (run / "config.yaml").exists() and (run / "checkpoints" / "best" / "rewardtune.json").exists()
    assert out["test"] is not None and 0.0 <= out["test"]["accuracy"] <= 1.0
    first = load_file(str(run / "checkpoints" / "step-00000008" / "model.safetensors"))
    from rewardtune.models import load_classifier
    start = load_classifier(str(tiny_encoder_dir), 2)[0].state_dict()
    assert any(not torch.equal(first[k], start[k]) for k in first if k in start)  # the weights moved


def test_test_each_epoch_logs_the_truth_beside_the_estimates_and_thin_validation_warns(
        tiny_encoder_dir, log_file, test_file, tmp_path, capsys):
    args = bandit_args(tiny_encoder_dir, log_file, test_file, tmp_path, "diag", "ips") + [
        "train.epochs=2", "data.test_each_epoch=true", "bandit.select=snips"]
    out = train_bandit(load_config(BanditConfig, None, args), show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "diag" / "metrics.jsonl").read_text().splitlines()]
    per_epoch = [r for r in rows if r["split"] == "test_epoch"]
    assert [r["epoch"] for r in per_epoch] == [0, 1] and all(0.0 <= r["accuracy"] <= 1.0 for r in per_epoch)
    # the final test row is the best checkpoint's: its accuracy is one of the epochs' (picked by SNIPS, not by it)
    assert out["test"]["accuracy"] in [r["accuracy"] for r in per_epoch] and out["select"] == "snips"
    # 10 validation rows for 2 actions = 5 per action < 10
    assert "10 rows for 2 actions (5.0 per action" in capsys.readouterr().out


def test_stop_and_resume_is_bit_identical(tiny_encoder_dir, log_file, test_file, tmp_path):
    args = lambda name: bandit_args(tiny_encoder_dir, log_file, test_file, tmp_path, name, "dr")  # noqa: E731
    train_bandit(load_config(BanditConfig, None, args("straight")), show_progress=False)
    first = train_bandit(load_config(BanditConfig, None, args("resumed") + ["ckpt.stop_after=7"]), show_progress=False)
    assert first["stopped"] and first["steps"] == 7  # mid-epoch 2: the data position matters
    train_bandit(load_config(BanditConfig, None, args("resumed") + ["ckpt.resume=auto"]), show_progress=False)
    a, b = (load_file(str(tmp_path / n / "checkpoints" / "step-00000012" / "model.safetensors"))
            for n in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda n: [{k: v for k, v in json.loads(line).items() if not k.startswith("train_")}  # noqa: E731
                       for line in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
    assert strip("straight") == strip("resumed")
    assert "dr" in [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
                    if '"val"' in line][0]  # DR's reward model also values the validation log


def test_a_bad_log_fails_before_the_run_folder_is_made(tiny_encoder_dir, tmp_path):
    rows = toy_rows(8, 0)
    rows[5]["propensity"] = 0.0
    bad = write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match="bad.jsonl, line 6"):
        train_bandit(load_config(BanditConfig, None, [f"model.name={tiny_encoder_dir}", f"data.path={bad}",
                                                      f"runs_dir={tmp_path}", "name=run"]), show_progress=False)
    assert not (tmp_path / "run").exists()


def test_convert_then_ope_commands(tiny_encoder_dir, log_file, test_file, tmp_path, capsys):
    train_bandit(load_config(BanditConfig, None, bandit_args(tiny_encoder_dir, log_file, test_file, tmp_path, "pol")
                             + ["train.epochs=1"]), show_progress=False)
    best = tmp_path / "pol" / "checkpoints" / "best"
    out = tmp_path / "converted.jsonl"
    assert main(["bandit", "convert", str(best), "--data", str(test_file), "--out", str(out),
                 "--exploration", "epsilon", "--epsilon", "0.5", "--seed", "1"]) == 0
    log = load_log(out)
    assert len(log) == 16 and bool((log.propensities >= 0.25).all())  # ε/A = 0.25 is the least propensity
    capsys.readouterr()
    assert main(["ope", str(best), "--log", str(out), "--bootstrap", "50"]) == 0
    printed = capsys.readouterr().out
    assert all(f"\n{name} " in printed for name in ("ips", "snips", "dr")) and "bootstrap [" in printed
    from rewardtune.config import ConfigError
    from rewardtune.train.bandit import start_actions
    warm = load_config(BanditConfig, None, [f"model.name={best}", f"data.path={out}"])
    assert start_actions(warm) == ("neg", "pos")  # a warm start keeps the checkpoint's head order
    with pytest.raises(ConfigError, match="differ from the labels of the checkpoint"):
        train_bandit(load_config(BanditConfig, None, [f"model.name={best}", f"data.path={out}", "data.actions=pos,neg",
                                                      f"runs_dir={tmp_path}", "name=warm"]), show_progress=False)
    labelled = write(tmp_path / "labelled.jsonl", [{"text": r["text"], "label": r["label"]} for r in toy_rows(4, 2)])
    assert main(["ope", str(best), "--log", str(labelled)]) == 2  # a labelled file is not a log: a clear error
    assert "no field 'action'" in capsys.readouterr().err
