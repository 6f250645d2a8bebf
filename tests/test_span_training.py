"""`sft policy=span` and `rl policy=span` on a tiny random encoder: few-step runs, exact resumption, `rewardtune eval`
on a span checkpoint, and bad input refused before a run folder is made."""
from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from rewardtune.checkpoint import complete_checkpoints
from rewardtune.cli import main
from rewardtune.config import ConfigError, load_config
from rewardtune.train.span import train_span_rl, train_span_sft
from rewardtune.train.span_config import SpanRLConfig, SpanSFTConfig

from helpers import WORDS


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    """24 questions over 4 articles; each context is 20–30 tiny-vocabulary words, the answer 1–3 of them."""
    rng = random.Random(0)
    rows = []
    for i in range(24):
        words = [rng.choice(WORDS) for _ in range(rng.randint(20, 30))]
        s, n = rng.randrange(len(words) - 3), rng.randint(1, 3)
        context = " ".join(words)
        start = len(" ".join(words[:s])) + (1 if s else 0)
        rows.append({"id": f"q{i}", "title": f"article {i % 4}", "context": context, "question": "what was it",
                     "answers": {"text": [" ".join(words[s:s + n])], "answer_start": [start]}})
    path = tmp_path_factory.mktemp("qa") / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def args(model, data, root, name, *more):
    return [f"model.name={model}", f"data.path={data}", "data.val_fraction=0.25", "train.max_length=24",
            "span.stride=4", "span.max_answer_tokens=4", "train.batch_size=8", "train.lr=5e-3", "train.log_every=1",
            "train.epochs=1", f"runs_dir={root}", f"name={name}", *more]


def train_rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sft_span_trains_evaluates_and_saves(tiny_encoder_dir, qa_file, tmp_path, capsys):
    cfg = load_config(SpanSFTConfig, None, args(tiny_encoder_dir, qa_file, tmp_path, "sft", "train.max_steps=3"))
    out = train_span_sft(cfg, show_progress=False)
    run = tmp_path / "sft"
    rows = train_rows(run)
    train = [r for r in rows if r["split"] == "train"]
    assert len(train) == 3 and all(0 < r["loss"] < 50 for r in train)
    val = [r for r in rows if r["split"] == "val"]
    assert val and 0 <= val[-1]["f1"] <= 1 and val[-1]["questions"] == 6  # one of four articles: 6 questions
    best = run / "checkpoints" / "best"
    meta = json.loads((best / "rewardtune.json").read_text())
    assert meta["policy"] == "span" and meta["stride"] == 4 and out["best"] == val[-1]["f1"]
    preds = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 6 and {"id", "prediction", "answers", "exact_match", "f1"} <= preds[0].keys()
    start = load_file(str(tiny_encoder_dir / "model.safetensors"))
    trained = load_file(str(best / "model.safetensors"))
    assert any(not torch.equal(start[k], trained[f"bert.{k}"]) for k in start if f"bert.{k}" in trained)
    capsys.readouterr()
    assert main(["eval", str(best), "--data", str(qa_file), "--out", str(tmp_path / "p.jsonl")]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["questions"] == 24 and 0 <= metrics["f1"] <= 1
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 24


@pytest.mark.parametrize("more", [
    ["rl.baseline=rloo", "rl.kl_coef=0.1", "rl.entropy_coef=0.01", "rl.ce_coef=0.5"],
    ["rl.baseline=greedy", "reward.functions=[exact_match]", "model.lora.r=4", "rl.kl_coef=0.1"],
])
def test_rl_span_runs_with_each_baseline(tiny_encoder_dir, qa_file, tmp_path, more):
    cfg = load_config(SpanRLConfig, None, args(tiny_encoder_dir, qa_file, tmp_path, "rl", "train.max_steps=2", *more))
    train_span_rl(cfg, show_progress=False)
    train = [r for r in train_rows(tmp_path / "rl") if r["split"] == "train"]
    assert len(train) == 2 and all(0 <= r["reward"] <= 1 and r["kl"] >= -1e-6 for r in train)
    name = "exact_match" if "reward.functions=[exact_match]" in more else "token_f1"
    assert all(f"reward/{name}" in r for r in train)
    assert (tmp_path / "rl" / "checkpoints" / "best" / "rewardtune.json").exists()


def test_rl_span_resumes_exactly(tiny_encoder_dir, qa_file, tmp_path):
    more = ["rl.kl_coef=0.1", "rl.baseline=greedy"]
    straight = train_span_rl(load_config(SpanRLConfig, None, args(tiny_encoder_dir, qa_file, tmp_path, "a", *more)),
                             show_progress=False)
    total = straight["steps"]
    half = total // 2 + 1
    b = args(tiny_encoder_dir, qa_file, tmp_path, "b", *more)
    first = train_span_rl(load_config(SpanRLConfig, None, b + [f"ckpt.stop_after={half}"]), show_progress=False)
    assert first["stopped"] and first["steps"] == half
    train_span_rl(load_config(SpanRLConfig, None, b + ["ckpt.resume=auto"]), show_progress=False)
    fa, fb = [complete_checkpoints(tmp_path / n / "checkpoints")[-1] / "model.safetensors" for n in "ab"]
    wa, wb = load_file(str(fa)), load_file(str(fb))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    drop = {"train_s", "train_examples_per_s"}
    rows = [[{k: v for k, v in r.items() if k not in drop} for r in train_rows(tmp_path / n)] for n in "ab"]
    assert rows[0] == rows[1]


def test_bad_span_input_fails_before_a_run_folder(tiny_encoder_dir, qa_file, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    row = json.loads(qa_file.read_text().splitlines()[0])
    row["answers"]["answer_start"] = [len(row["context"]) + 5]
    bad.write_text(qa_file.read_text() + json.dumps(row) + "\n")
    code = main(["sft", "policy=span", *args(tiny_encoder_dir, bad, tmp_path, "bad")])
    assert code == 2 and "line 25: field 'answers.answer_start'[0]" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError, match="best_metric='accuracy'"):
        train_span_sft(load_config(SpanSFTConfig, None, args(tiny_encoder_dir, qa_file, tmp_path, "c",
                                                             "train.best_metric=accuracy")))
    with pytest.raises(ConfigError, match="span.stride=20"):
        train_span_sft(load_config(SpanSFTConfig, None, args(tiny_encoder_dir, qa_file, tmp_path, "c", "span.stride=20")))
    assert not (tmp_path / "c").exists()


def test_help_config_of_span_commands_lists_their_keys(capsys):
    with pytest.raises(SystemExit):
        main(["rl", "policy=span", "--help-config"])
    out = capsys.readouterr().out
    assert "rl.baseline = 'rloo'" in out and "span.stride = 128" in out and "train.max_length = 384" in out
    assert "token_f1, exact_match" in out


def test_rl_from_a_lora_span_checkpoint_starts_from_its_policy(tiny_encoder_dir, qa_file, tmp_path):
    from rewardtune.eval_span import load_span_model
    from rewardtune.train.span import setup_span_model

    train_span_sft(load_config(SpanSFTConfig, None, args(tiny_encoder_dir, qa_file, tmp_path, "lora", "model.lora.r=4",
                                                         "train.max_steps=2")), show_progress=False)
    best = tmp_path / "lora" / "checkpoints" / "best"
    saved, tok = load_span_model(str(best))
    cfg = load_config(SpanRLConfig, None, args(best, qa_file, tmp_path, "rl", "model.lora.r=4", "train.max_steps=1"))
    start, _ = setup_span_model(cfg)  # the adapter merged, a fresh one on top (zero at first: the same policy)
    x = tok("what was it", "the film was good", return_tensors="pt")
    a, b = saved.eval()(**x), start.eval()(**x)
    assert torch.allclose(a.start_logits, b.start_logits, atol=1e-5) and torch.allclose(a.end_logits, b.end_logits,
                                                                                        atol=1e-5)
    assert train_span_rl(cfg, show_progress=False)["steps"] == 1
