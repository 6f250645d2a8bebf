"""`sft policy=tagger` and `rl policy=tagger` on a tiny random encoder: few-step smoke runs, exact resumption,
`rewardtune eval` on a tagger checkpoint, and bad input refused before a run folder exists."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file

from rewardtune.cli import main
from rewardtune.config import ConfigError, load_config
from rewardtune.data import DataError
from rewardtune.rewards import RewardError
from rewardtune.train.rl_tagger import TaggerRLConfig, TaggerRLSettings, penalties, train_rl_tagger
from rewardtune.train.tagger import TaggerSFTConfig, train_sft_tagger

from helpers import WORDS

TAGS = "[O,B-LOC,I-LOC,B-PER,I-PER]"


def _row(rng: random.Random) -> dict:
    """Words at random; 'actor'/'director' open a PER that a following 'i' continues; 'scene' is a LOC."""
    words, tags = [rng.choice(WORDS) for _ in range(rng.randint(1, 8))], []
    for w in words:
        cont = tags and tags[-1] in ("B-PER", "I-PER") and w == "i"
        tags.append("B-PER" if w in ("actor", "director") else "I-PER" if cont else "B-LOC" if w == "scene" else "O")
    return {"tokens": words, "tags": tags}


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    rng, folder = random.Random(0), tmp_path_factory.mktemp("tagged")
    for name, n in (("train", 30), ("dev", 10)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(_row(rng)) + "\n" for _ in range(n)))
    return folder


def _args(model, data, root, name, *extra):
    # 30 sentences / batch 8 → 4 steps per epoch (the last one short)
    return [f"model.name={model}", f"data.path={data / 'train.jsonl'}", f"data.val_path={data / 'dev.jsonl'}",
            f"data.labels={TAGS}", "train.batch_size=8", "train.lr=5e-3", "train.max_length=16", "train.log_every=1",
            f"runs_dir={root}", f"name={name}", *extra]


def _rows(run_dir, split):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("split") == split]


def _changed(model_dir, run_dir, checkpoint="best") -> bool:
    """Whether a checkpoint's encoder weights differ from the starting encoder's."""
    start = load_file(str(model_dir / "model.safetensors"))
    best = load_file(str(run_dir / "checkpoints" / checkpoint / "model.safetensors"))
    key = next(k for k in start if "attention.self.query.weight" in k)
    return not torch.equal(start[key], next(v for k, v in best.items() if k.endswith(key.split("bert.")[-1])))


def test_sft_smoke_run(tiny_encoder_dir, tagged, tmp_path):
    out = train_sft_tagger(load_config(TaggerSFTConfig, None, _args(tiny_encoder_dir, tagged, tmp_path, "sft")),
                           show_progress=False)  # one epoch: 4 steps
    train, val = _rows(tmp_path / "sft", "train"), _rows(tmp_path / "sft", "val")
    assert train and all(torch.isfinite(torch.tensor(r["loss"])) for r in train)
    assert val and {"f1", "macro_f1", "token_accuracy", "f1/PER"} <= val[-1].keys() and out["best"] == val[-1]["f1"]
    assert _changed(tiny_encoder_dir, tmp_path / "sft")
    meta = json.loads((tmp_path / "sft" / "checkpoints" / "best" / "rewardtune.json").read_text())
    assert meta["policy"] == "tagger" and meta["tag_names"] == TAGS[1:-1].split(",")


def test_mixed_objective_adds_sfts_loss_over_real_words_by_hand():
    logits = torch.tensor([[[0.0, math.log(3.0)], [5.0, 0.0]]], requires_grad=True)  # (1, 2 words, 2 tags)
    gold, mask = torch.tensor([[0, 1]]), torch.tensor([[True, False]])  # the second word is padding
    out, stats = penalties(logits, mask, None, TaggerRLSettings(ce_coef=0.5), gold)
    # the one real word: π = (1/4, 3/4), gold 0 → CE = −log 1/4 = ln 4; × 0.5 = ln 2; the padded word counts nothing
    assert stats["ce"].item() == pytest.approx(math.log(4)) and out.item() == pytest.approx(math.log(2))
    out.backward()
    # ∂/∂z = 0.5 × (π − onehot): word 0 (−3/8, 3/8); word 1 none
    assert torch.allclose(logits.grad, torch.tensor([[[-0.375, 0.375], [0.0, 0.0]]]))


@pytest.mark.parametrize("extra", [
    ["rl.estimator=reinforce", "rl.baseline=rloo"],
    ["rl.estimator=reinforce", "rl.baseline=greedy", "constrained=false", "rl.entropy_coef=0.01",
     "reward.functions=[span_f1,token_accuracy]"],
    ["rl.estimator=expected", "rl.kl_coef=0.1", "model.lora.r=4"],
    ["rl.estimator=reinforce", "rl.ce_coef=0.5"],
])
def test_rl_smoke_runs(tiny_encoder_dir, tagged, tmp_path, extra):
    cfg = load_config(TaggerRLConfig, None, _args(tiny_encoder_dir, tagged, tmp_path, "rl", "train.max_steps=3", *extra))
    out = train_rl_tagger(cfg, show_progress=False)
    train = _rows(tmp_path / "rl", "train")
    assert [r["step"] for r in train] == [1, 2, 3] and out["steps"] == 3
    assert all(0.0 <= r["reward"] <= 1.0 and torch.isfinite(torch.tensor(r["loss"])) for r in train)
    assert ("kl" in train[0]) == (cfg.rl.kl_coef > 0) and "entropy" in train[0]
    assert ("ce" in train[0]) == (cfg.rl.ce_coef > 0)
    if cfg.rl.estimator == "reinforce":
        assert "reward/span_f1" in train[0] and "samples_agree" in train[0]
    if cfg.model.lora.r:
        assert (tmp_path / "rl" / "checkpoints" / "best" / "adapter_model.safetensors").exists()
    else:
        # the last step's weights: `best` may be the start (rl evaluates it), kept when no epoch beats it
        assert _changed(tiny_encoder_dir, tmp_path / "rl", "step-00000003")


@pytest.mark.parametrize("trainer", ["sft", "rl"])
def test_stop_and_resume_is_bit_identical(tiny_encoder_dir, tagged, tmp_path, trainer):
    cls, train = {"sft": (TaggerSFTConfig, train_sft_tagger), "rl": (TaggerRLConfig, train_rl_tagger)}[trainer]
    extra = ["train.epochs=2", "data.max_examples=20"] + (["rl.baseline=greedy", "rl.kl_coef=0.05"] if trainer == "rl" else [])
    train(load_config(cls, None, _args(tiny_encoder_dir, tagged, tmp_path, "straight", *extra)), show_progress=False)
    first = train(load_config(cls, None, _args(tiny_encoder_dir, tagged, tmp_path, "resumed", *extra,
                                               "ckpt.stop_after=3")), show_progress=False)
    assert first["stopped"] and first["steps"] == 3  # 3 steps per epoch (20 / 8): a step into the second epoch
    train(load_config(cls, None, _args(tiny_encoder_dir, tagged, tmp_path, "resumed", *extra, "ckpt.resume=auto")),
          show_progress=False)
    a, b = (load_file(str(tmp_path / n / "checkpoints" / "step-00000006" / "model.safetensors"))
            for n in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("train_")} for r in rows]  # noqa: E731
    assert strip(_rows(tmp_path / "straight", "train")) == strip(_rows(tmp_path / "resumed", "train"))


def test_cli_sft_then_rl_then_eval(tiny_encoder_dir, tagged, tmp_path, capsys):
    """LoRA sft, then rl continuing the same adapter (it must train), then `rewardtune eval` of the result."""
    lora = ["train.max_steps=2", "model.lora.r=4"]
    assert main(["sft", "policy=tagger", *_args(tiny_encoder_dir, tagged, tmp_path, "s", *lora)]) == 0
    best = tmp_path / "s" / "checkpoints" / "best"
    assert main(["rl", "policy=tagger", *_args(best, tagged, tmp_path, "r", *lora)]) == 0
    a, b = (load_file(str(tmp_path / n / "checkpoints" / "best" / "adapter_model.safetensors")) for n in "sr")
    assert a.keys() == b.keys()  # rl saved the same adapter; its best may be the start: compare its last step's
    last = load_file(str(tmp_path / "r" / "checkpoints" / "step-00000002" / "model.safetensors"))
    last = {k.replace(".default", ""): v for k, v in last.items() if "lora_" in k}
    assert last.keys() == {k for k in a if "lora_" in k} and any(not torch.equal(a[k], last[k]) for k in last)
    assert _rows(tmp_path / "r", "val")[0]["step"] == 0  # the start was evaluated
    capsys.readouterr()
    out = tmp_path / "pred.jsonl"
    assert main(["eval", str(tmp_path / "r" / "checkpoints" / "best"), "--data", str(tagged / "dev.jsonl"),
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "micro avg" in text and "macro avg" in text and "PER" in text
    preds = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(preds) == 10 and all(len(p["prediction"]) == len(p["tokens"]) == len(p["tags"]) for p in preds)


def test_bad_input_fails_before_a_run_folder(tiny_encoder_dir, tagged, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl, line 1: field 'tags': 1 tags for 2 tokens"):
        train_sft_tagger(load_config(TaggerSFTConfig, None, _args(tiny_encoder_dir, tagged, tmp_path, "x",
                                                                  f"data.path={bad}")))
    with pytest.raises(ConfigError, match="best_metric='accuracy'.*choose one of: precision"):
        train_sft_tagger(load_config(TaggerSFTConfig, None, _args(tiny_encoder_dir, tagged, tmp_path, "x",
                                                                  "train.best_metric=accuracy")))
    with pytest.raises(RewardError, match="needs a column 'spans'"):
        train_rl_tagger(load_config(TaggerRLConfig, None, _args(tiny_encoder_dir, tagged, tmp_path, "x",
                                                                "reward.functions=[test_tagger_training:_needs_spans]")))
    assert not (tmp_path / "x").exists()
    assert main(["sft", "policy=tagger", f"model.name={tiny_encoder_dir}", f"runs_dir={tmp_path}", "name=y"]) == 2
    assert "data.path is empty" in capsys.readouterr().err and not (tmp_path / "y").exists()


def _needs_spans(prompts, completions, spans):
    return [0.0] * len(completions)
