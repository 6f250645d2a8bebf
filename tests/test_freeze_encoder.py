"""`train.freeze_encoder`: the classifier trainers (`sft`, `bandit train`) train the head alone, on a tiny encoder."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file

from rewardtune.config import ConfigError, load_config
from rewardtune.train.bandit import BanditConfig, train_bandit
from rewardtune.train.common import freeze_encoder
from rewardtune.train.sft import SFTConfig, train_sft

WORDS = {"pos": "good great fun loved".split(), "neg": "bad awful dull hated".split()}
FILLER = "the film movie plot was very".split()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A labelled toy set and a uniform logger's feedback on the same texts (p = 0.5, reward 1 if right)."""
    rng, labelled, log = random.Random(0), [], []
    for i in range(32):
        y, a = ("pos", "neg")[i % 2], rng.choice(("pos", "neg"))
        text = " ".join(rng.sample(FILLER, 3) + [rng.choice(WORDS[y])])
        labelled.append({"text": text, "label": y})
        log.append({"text": text, "action": a, "reward": float(a == y), "propensity": 0.5})
    root = tmp_path_factory.mktemp("freeze")
    for name, rows in (("labelled", labelled), ("log", log)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def common(tmp_path, name):
    return ["train.batch_size=8", "train.lr=5e-2", "train.max_length=16", "train.log_every=1", f"runs_dir={tmp_path}",
            f"name={name}"]


@pytest.fixture(scope="module")
def start(tiny_encoder_dir, files, tmp_path_factory):
    """A fully fine-tuned classifier (one epoch) to go on from, as a logging policy would be."""
    root = tmp_path_factory.mktemp("start")
    train_sft(load_config(SFTConfig, None, [f"model.name={tiny_encoder_dir}", f"data.path={files / 'labelled.jsonl'}",
                                            "train.epochs=1"] + common(root, "start")), show_progress=False)
    return root / "start" / "checkpoints" / "best"


def assert_head_only_trained(start, run):
    before = load_file(str(start / "model.safetensors"))
    after = load_file(str(run / "checkpoints" / "best" / "model.safetensors"))
    assert before.keys() == after.keys()
    encoder = [k for k in before if not k.startswith("classifier.")]
    assert len(encoder) > 20 and all(torch.equal(before[k], after[k]) for k in encoder)  # pooler included
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])  # the head moved
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in rows if r["split"] == "train")


def test_sft_trains_the_head_alone(start, files, tmp_path):
    train_sft(load_config(SFTConfig, None, [f"model.name={start}", f"data.path={files / 'labelled.jsonl'}",
                                            "train.epochs=2", "train.freeze_encoder=true"] + common(tmp_path, "sft")),
              show_progress=False)
    assert_head_only_trained(start, tmp_path / "sft")


def test_bandit_train_from_a_checkpoint_trains_the_head_alone(start, files, tmp_path):
    out = train_bandit(load_config(BanditConfig, None, [
        f"model.name={start}", f"data.path={files / 'log.jsonl'}", "data.val_fraction=0.25", "train.epochs=2",
        "train.freeze_encoder=true", "bandit.estimator=ips"] + common(tmp_path, "bandit")), show_progress=False)
    assert out["steps"] == 6  # 24 training rows / 8, twice
    assert_head_only_trained(start, tmp_path / "bandit")


def test_the_frozen_encoder_stays_in_eval_mode(start):
    from rewardtune.models import load_classifier

    from rewardtune.dropout import use_fast_dropout

    net, _ = load_classifier(str(start), 2)
    freeze_encoder(net)
    use_fast_dropout(net)  # new dropout modules, in training mode, after the freeze
    net.train()  # what the training loop does every epoch
    assert net.training and net.classifier.training and not net.base_model.training
    assert not any(m.training for m in net.base_model.modules())  # no dropout: the same features every epoch
    assert [n for n, p in net.named_parameters() if p.requires_grad] == ["classifier.weight", "classifier.bias"]


def test_freeze_encoder_with_lora_is_a_clear_error(start):
    from rewardtune.models import load_classifier

    with pytest.raises(ConfigError, match="model.lora.r=0 or train.freeze_encoder=false"):
        freeze_encoder(load_classifier(str(start), 2)[0], lora_r=8)


def test_cached_encoder_gives_the_same_logits_and_computes_each_text_once(start):
    from rewardtune.models import load_classifier

    plain, tok = load_classifier(str(start), 2)
    cached = load_classifier(str(start), 2)[0]
    rows = []  # the encoder's own forward, counted: the cache calls it once per new text
    inner = cached.base_model.forward
    cached.base_model.forward = lambda *a, **k: rows.append(k["input_ids"].shape) or inner(*a, **k)
    freeze_encoder(plain)
    freeze_encoder(cached, cache=True)
    texts = ["good film", "the movie was very dull and slow", "good film"]  # padded; the first text twice
    plain.eval(), cached.eval()
    with torch.no_grad():
        want = plain(**tok(texts, padding=True, return_tensors="pt")).logits  # (3, 2)
        got = cached(**tok(texts, padding=True, return_tensors="pt")).logits
        again = cached(**tok(texts[1:], padding=True, return_tensors="pt")).logits  # other padding, from the cache
    assert torch.allclose(got, want, atol=1e-5) and torch.allclose(again, want[1:], atol=1e-5)
    assert len(rows) == 2 and all(shape[0] == 1 for shape in rows)  # two distinct texts, each alone, once


def test_bandit_train_with_a_cached_encoder(start, files, tmp_path):
    args = lambda name: [f"model.name={start}", f"data.path={files / 'log.jsonl'}", "data.val_fraction=0.25",  # noqa: E731
                         "train.epochs=2", "train.freeze_encoder=true", "train.cache_encoder=true",
                         "bandit.estimator=banditnet"] + common(tmp_path, name)
    train_bandit(load_config(BanditConfig, None, args("straight")), show_progress=False)
    assert_head_only_trained(start, tmp_path / "straight")
    first = train_bandit(load_config(BanditConfig, None, args("resumed") + ["ckpt.stop_after=4"]), show_progress=False)
    assert first["stopped"]  # mid-epoch 2: the resumed run builds its cache again, from other batches
    train_bandit(load_config(BanditConfig, None, args("resumed") + ["ckpt.resume=auto"]), show_progress=False)
    a, b = (load_file(str(tmp_path / n / "checkpoints" / "step-00000006" / "model.safetensors"))
            for n in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # each row computed alone: bit-identical


def test_cache_encoder_needs_freeze_encoder(tiny_encoder_dir, files, tmp_path):
    with pytest.raises(ConfigError, match="needs train.freeze_encoder=true"):
        train_sft(load_config(SFTConfig, None, [f"model.name={tiny_encoder_dir}", f"data.path={files / 'labelled.jsonl'}",
                                                "train.cache_encoder=true"] + common(tmp_path, "x")), show_progress=False)
