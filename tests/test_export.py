"""`rewardtune export`: the exported folder loads with plain transformers (merged, full) or peft (adapter) and gives
the logits of the run's own checkpoint; the base model is named by its hub id; the card says what ran; a push
offline fails at once in one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rewardtune.cli import main
from rewardtune.config import load_config
from rewardtune.export import ExportError, base_model, export_run, read_trained
from rewardtune.models import load_trained_causal_lm, load_trained_classifier

TEXTS = ["the film was great fun", "boring plot and bad acting", "i loved the music"]


def _prompts(tmp: Path) -> Path:
    path = tmp / "prompts.jsonl"
    words = ["the film was", "i loved the", "this movie is", "the plot was", "a great story", "the acting was"]
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in words))
    return path


@pytest.fixture(scope="module")
def lm_run(tiny_causal_lm_dir, tmp_path_factory) -> Path:
    """Two GRPO steps with LoRA at a large learning rate (so that the adapter moves the logits)."""
    from rewardtune.train.gen_config import GenRLConfig
    from rewardtune.train.rl_generate import train_rl_generate

    tmp = tmp_path_factory.mktemp("lm")
    cfg = load_config(GenRLConfig, None, [f"model.name={tiny_causal_lm_dir}", "model.lora.r=4", "rl.steps=2",
                                          "rl.lr=0.05", "rl.prompts_per_step=2", "rl.samples_per_prompt=2",
                                          "gen.max_new_tokens=4", "eval.prompts=2", f"data.path={_prompts(tmp)}",
                                          "reward.functions=[length]", f"runs_dir={tmp}", "name=lm"])
    return Path(train_rl_generate(cfg, show_progress=False)["run_dir"])


def _classifier_run(encoder: Path, tmp: Path, r: int) -> Path:
    from rewardtune.train.sft import SFTConfig, train_sft

    cfg = load_config(SFTConfig, None, [f"model.name={encoder}", f"model.lora.r={r}", "train.epochs=1",
                                        "train.max_steps=3", "train.lr=0.01", "train.batch_size=8",
                                        f"runs_dir={tmp}", f"name=cls{r}"])
    return Path(train_sft(cfg, show_progress=False)["run_dir"])


@pytest.fixture(scope="module")
def cls_runs(tiny_encoder_dir, tmp_path_factory) -> dict[int, Path]:
    tmp = tmp_path_factory.mktemp("cls")
    return {r: _classifier_run(tiny_encoder_dir, tmp, r) for r in (0, 4)}


def _lm_logits(model, tok) -> torch.Tensor:
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model.eval()(**batch).logits  # (B, T, V)


def _cls_logits(model, tok) -> torch.Tensor:
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model.eval()(**batch).logits  # (B, A)


def test_causal_lm_adapter_and_merged_give_the_checkpoint_s_logits(lm_run, tiny_causal_lm_dir, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref_model, ref_tok = load_trained_causal_lm(lm_run / "checkpoints" / "final")
    ref = _lm_logits(ref_model, ref_tok)
    base = _lm_logits(AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir), ref_tok)
    assert (ref - base).abs().max() > 1e-3, "the adapter must change the logits, or this test could not fail"

    adapter = export_run(lm_run, tmp_path / "adapter", which="final")
    assert (adapter / "adapter_model.safetensors").exists() and not (adapter / "model.safetensors").exists()
    tok = AutoTokenizer.from_pretrained(adapter)
    torch.testing.assert_close(_lm_logits(AutoPeftModelForCausalLM.from_pretrained(adapter), tok), ref)

    merged = export_run(lm_run, tmp_path / "merged", merge=True, which="final")
    assert not (merged / "adapter_config.json").exists() and (merged / "model.safetensors").exists()
    plain = AutoModelForCausalLM.from_pretrained(merged)  # plain transformers: no peft involved
    torch.testing.assert_close(_lm_logits(plain, AutoTokenizer.from_pretrained(merged)), ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("merge", [False, True])
def test_classifier_exports_give_the_checkpoint_s_logits(cls_runs, tmp_path, merge):
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    for r, run in cls_runs.items():
        ref = _cls_logits(*load_trained_classifier(run / "checkpoints" / "best"))
        out = export_run(run, tmp_path / f"cls{r}-{merge}", merge=merge)
        tok = AutoTokenizer.from_pretrained(out)
        if r and not merge:  # an adapter, with the trained head among its saved modules
            model = AutoPeftModelForSequenceClassification.from_pretrained(out, num_labels=2)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(out)
            assert model.config.id2label == {0: "negative", 1: "positive"}
        torch.testing.assert_close(_cls_logits(model, tok), ref, atol=1e-5, rtol=1e-4)


def test_card_names_base_algorithm_rewards_data_config_and_metrics(lm_run, cls_runs, tmp_path):
    card = (export_run(lm_run, tmp_path / "lm") / "README.md").read_text()
    assert card.startswith("---\nbase_model: ")
    for field in ("**Base model**", "**Algorithm**: grpo", "**Rewards**: `length` × 1.0", "prompts.jsonl",
                  "## Held-out metrics", "eval at step 0 (start)", "eval at step 2", "| reward |",
                  "## Resolved config", "algorithm: grpo", "library_name: peft", "pipeline_tag: text-generation"):
        assert field in card, field
    card = (export_run(cls_runs[0], tmp_path / "cls") / "README.md").read_text()
    for field in ("**Algorithm**: supervised fine-tuning", "**Rewards**: none", "train: `demo`", "val at step 3",
                  "| accuracy |", "library_name: transformers", "pipeline_tag: text-classification"):
        assert field in card, field


def test_an_alias_base_is_named_by_its_hub_id(lm_run, tiny_causal_lm_dir, monkeypatch, tmp_path):
    import rewardtune.export as E

    alias = E.ALIASES["smollm2-135m-instruct"]
    monkeypatch.setattr(E, "prepared_dir", lambda a: Path(tiny_causal_lm_dir) if a is alias else tmp_path / "none")
    monkeypatch.setattr(E, "alias_source", lambda a: tmp_path / "none")
    assert base_model(read_trained(lm_run)) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    out = export_run(lm_run, tmp_path / "out")
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == alias.hub_id
    card = (out / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "differ slightly" in card
    assert E.base_alias("minilm-l6").hub_id == "sentence-transformers/all-MiniLM-L6-v2"


def test_push_offline_fails_at_once_in_one_line(lm_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["export", str(lm_run), "--out", str(tmp_path / "x"), "--push-to-hub", "me/model"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot push to the hub (me/model): HF_HUB_OFFLINE=1" in err and "Fix:" in err
    assert not (tmp_path / "x").exists()  # refused before any work


def test_cli_export_and_refusals(lm_run, tmp_path, capsys):
    assert main(["export", str(lm_run), "--out", str(tmp_path / "a")]) == 0
    assert "model card" in capsys.readouterr().out
    assert main(["export", str(lm_run), "--out", str(tmp_path / "a")]) == 2  # not empty: nothing overwritten
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(ExportError, match="neither a run folder"):
        export_run(tmp_path, tmp_path / "b")


def test_a_pairwise_reward_model_exports_as_a_one_output_classifier(tiny_encoder_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rewardtune.train.reward_model import RMConfig, train_reward_model

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": "", "chosen": f"great fun film {'very ' * (i % 3)}",
                                         "rejected": f"boring bad plot {'so ' * (i % 3)}"}) + "\n" for i in range(12)))
    cfg = load_config(RMConfig, None, [f"model.name={tiny_encoder_dir}", "rm.mode=pairwise", f"data.path={pairs}",
                                       "data.val_fraction=0.25", "train.epochs=1", "train.batch_size=4",
                                       f"runs_dir={tmp_path}", "name=rm"])
    run = Path(train_reward_model(cfg, show_progress=False)["run_dir"])
    ref = _cls_logits(*load_trained_classifier(run / "checkpoints" / "best"))
    out = export_run(run, tmp_path / "rm-out")
    model = AutoModelForSequenceClassification.from_pretrained(out)
    torch.testing.assert_close(_cls_logits(model, AutoTokenizer.from_pretrained(out)), ref)
    assert ref.shape[-1] == 1 and "reward model (pairwise)" in (out / "README.md").read_text()


def test_a_bare_checkpoint_exports_with_what_is_known(cls_runs, tmp_path):
    import shutil

    bare = tmp_path / "ckpt"
    shutil.copytree(cls_runs[0] / "checkpoints" / "best", bare)  # no run folder around it
    card = (export_run(bare, tmp_path / "out") / "README.md").read_text()
    assert "**Algorithm**: unknown" in card and "**Data**: unknown" in card and "(none logged)" in card


def test_push_calls_the_hub_client_and_reports_its_failure_in_one_line(lm_run, tmp_path, monkeypatch, capsys):
    """Online pushing with huggingface_hub's HfApi replaced by a recorder (no network here): the repo is created,
    the exported folder uploaded; an error from the client becomes one line with the fix."""
    import huggingface_hub

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(("create", repo_id, private, exist_ok))

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls.append(("upload", sorted(p.name for p in Path(folder_path).iterdir()), repo_id))
            if repo_id == "me/denied":
                raise PermissionError("403 Forbidden: you cannot write to me/denied\n(long details)")
            return type("Info", (), {"commit_url": f"https://hub.example/{repo_id}/commit/1"})()
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr("rewardtune.hub.unreachable", lambda: "")
    assert main(["export", str(lm_run), "--out", str(tmp_path / "a"), "--push-to-hub", "me/model", "--private"]) == 0
    assert "pushed to https://hub.example/me/model/commit/1" in capsys.readouterr().out
    assert calls[0] == ("create", "me/model", True, True)
    assert calls[1][0] == "upload" and "README.md" in calls[1][1] and "adapter_model.safetensors" in calls[1][1]
    assert main(["export", str(lm_run), "--out", str(tmp_path / "b"), "--push-to-hub", "me/denied"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "403 Forbidden" in err and "hf auth login" in err
    assert (tmp_path / "b" / "README.md").exists()  # the export itself is kept: push again later
