"""The notebook API (`from rewardtune import train_rl, ...`): rewards as Python functions, rows in memory or a
`datasets.Dataset`, keyword overrides; it returns the trained model, its tokenizer and the summary; a rerun gets a
new run folder, an explicit name is refused unless overwrite=True."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

ROWS = [{"text": t, "label": lab} for t, lab in [("great fun film", "positive"), ("bad boring plot", "negative"),
                                                 ("i loved the music", "positive"), ("awful acting", "negative")] * 5]
FAST = {"train": {"max_steps": 2, "epochs": 1, "batch_size": 8}}
DATA = {"path": ROWS, "val_fraction": 0.2}  # the data section as a dict: rows as its path


def matches_label(prompts, completions, label, **_):  # the classifier's action is a label name
    return [float(c == g) for c, g in zip(completions, label)]


def test_import_is_light_and_names_the_api():
    code = "import sys, rewardtune; print('torch' in sys.modules, callable(rewardtune.train_rl))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]


def test_classifier_rl_with_a_python_reward_on_rows(tiny_encoder_dir, tmp_path):
    from rewardtune import TrainResult, train_rl
    from rewardtune.models import load_trained_classifier

    res = train_rl(str(tiny_encoder_dir), DATA, rewards=matches_label, runs_dir=str(tmp_path), show_progress=False,
                   rl={"estimator": "reinforce"}, **FAST)
    assert isinstance(res, TrainResult) and res.run_dir.parent == tmp_path and res.run_dir.name.startswith("rl-")
    assert res.summary["steps"] == 2 and res.summary["run_dir"] == str(res.run_dir)
    rows = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("reward/matches_label" in r for r in rows)  # the function scored the sampled labels
    batch = res.tokenizer(["great fun film"], return_tensors="pt")
    again, _ = load_trained_classifier(res.run_dir / "checkpoints" / "best")
    with torch.no_grad():
        torch.testing.assert_close(res.model.eval()(**batch).logits, again.eval()(**batch).logits)
    config = (res.run_dir / "config.yaml").read_text()
    assert "estimator: reinforce" in config and "max_steps: 2" in config and "/.data/" in config

    second = train_rl(str(tiny_encoder_dir), DATA, rewards=[matches_label], runs_dir=str(tmp_path),
                      show_progress=False, **FAST)
    assert second.run_dir != res.run_dir and second.run_dir.exists()  # a rerun never collides


def test_explicit_name_is_refused_unless_overwrite(tiny_encoder_dir, tmp_path):
    from datasets import Dataset

    from rewardtune import train_sft

    first = train_sft(str(tiny_encoder_dir), DATA, name="mine", runs_dir=str(tmp_path), show_progress=False, **FAST)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        train_sft(str(tiny_encoder_dir), DATA, name="mine", runs_dir=str(tmp_path), show_progress=False, **FAST)
    (first.run_dir / "marker").write_text("old")
    again = train_sft(str(tiny_encoder_dir), {**DATA, "path": Dataset.from_list(ROWS)}, name="mine", overwrite=True,
                      runs_dir=str(tmp_path), show_progress=False, **FAST)
    assert again.run_dir == first.run_dir and not (again.run_dir / "marker").exists()
    assert len(list((tmp_path / ".data").iterdir())) == 1  # the Dataset and the same rows: one file


def test_causal_lm_sft_on_rows_and_keyword_errors(tiny_causal_lm_dir, tmp_path):
    from rewardtune import train_sft
    from rewardtune.config import ConfigError

    rows = [{"prompt": f"the film {i}", "completion": "was great fun"} for i in range(10)]
    res = train_sft(str(tiny_causal_lm_dir), rows, runs_dir=str(tmp_path), show_progress=False,
                    train={"max_steps": 2, "epochs": 1, "batch_size": 4}, eval={"prompts": 0})
    assert res.run_dir.name.startswith("sft-lm-") and type(res.model).__name__.endswith("ForCausalLM")
    assert res.summary["steps"] == 2
    with pytest.raises(ConfigError, match="unknown key.*'stepz'.*valid keys"):
        train_sft(str(tiny_causal_lm_dir), rows, runs_dir=str(tmp_path), train={"stepz": 1})
    with pytest.raises(ConfigError, match="list of dicts"):
        train_sft(str(tiny_causal_lm_dir), [1, 2], runs_dir=str(tmp_path))
