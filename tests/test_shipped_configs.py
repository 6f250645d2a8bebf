"""Each config in rewardtune/configs/ runs: the real file through the real command, with a tiny random model and a
couple of steps as the only overrides (and, for the pairwise reward model, pairs made by `rewardtune data pairs`).
A run must finish, write metrics, and write a config.yaml that says what --help-config says it would run."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from rewardtune.cli import main
from rewardtune.config import config_path, load_config, shipped_configs
from rewardtune.pairs import DEFAULT_OUT

from helpers import flat_config, needs_shared_data, parse_help_config

REPO = Path(__file__).resolve().parents[1]
# keys a generative run resolves before writing config.yaml ('auto' → the algorithm's choice)
RESOLVED = {"rl.aggregation", "rl.kl_mode", "rl.kl_estimator", "runtime.gradient_checkpointing"}


def _data_paths(name: str) -> list[str]:
    data = yaml.safe_load(config_path(name).read_text())["data"]
    return [data[k] for k in ("path", "val_path") if data.get(k)]


def _run(argv: list[str], run_dir: Path, capsys) -> list[dict]:
    """Run `argv`; check it finished, and that its config.yaml is what --help-config printed for the same argv."""
    assert main(argv) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*argv, "--help-config"])
    shown = parse_help_config(capsys.readouterr().out)
    written = flat_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert shown.keys() == written.keys()
    assert {k for k in shown if shown[k] != written[k]} <= {k for k in RESOLVED & shown.keys() if shown[k] == "auto"}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("split") == "train" for r in rows), rows
    return rows


def _in_repo(monkeypatch, name: str) -> None:
    """Shipped data paths are relative to the repository root (../shared/data beside it), as the files say."""
    monkeypatch.chdir(REPO)
    for path in _data_paths(name):
        if path.startswith("../shared/data/"):
            needs_shared_data(*path.split("/")[3:])


@pytest.mark.parametrize("name,command", [("sst2-sft", ["sft"]), ("sst2-rl-expected", ["rl"])])
def test_sst2_classifier_configs_run(name, command, tiny_encoder_dir, tmp_path, monkeypatch, capsys):
    _in_repo(monkeypatch, name)
    argv = [*command, "--config", name, f"model.name={tiny_encoder_dir}", "data.max_examples=64", "train.max_steps=2",
            "train.batch_size=8", "train.max_length=32", "train.log_every=1", f"runs_dir={tmp_path}"]
    rows = _run(argv, tmp_path / name, capsys)
    val = [r for r in rows if r.get("split") == "val"]
    assert val and 0.0 <= val[-1]["accuracy"] <= 1.0, rows  # validated on SST-2 dev after its one (short) epoch
    assert (tmp_path / name / "checkpoints" / "best").is_dir()


@pytest.mark.parametrize("name,command", [("wikiann-tagger-sft", ["sft"]), ("wikiann-tagger-rl", ["rl"])])
def test_wikiann_tagger_configs_run(name, command, tiny_encoder_dir, tmp_path, monkeypatch, capsys):
    _in_repo(monkeypatch, name)
    argv = [*command, "--config", name, f"model.name={tiny_encoder_dir}", "data.max_examples=16",
            "data.max_val_examples=8", "train.max_steps=2", "train.batch_size=8", "train.max_length=32",
            "train.log_every=1", f"runs_dir={tmp_path}"]
    rows = _run(argv, tmp_path / name, capsys)
    val = [r for r in rows if r.get("split") == "val"]
    assert val and 0.0 <= val[-1]["f1"] <= 1.0 and "f1/PER" in val[-1], rows  # entity F1 on 8 WikiANN dev sentences
    assert (tmp_path / name / "checkpoints" / "best").is_dir()


@pytest.mark.parametrize("name,command,metric", [
    ("semeval-re-sft", ["sft"], "semeval_macro_f1"), ("banking77-sft", ["sft"], "accuracy"),
    ("clinc150-sft", ["sft"], "in_scope_accuracy"), ("clinc150-rl-oos-cost", ["rl"], "oos_recall"),
    ("agnews-sft", ["sft"], "accuracy")])
def test_relation_intent_topic_configs_run(name, command, metric, tiny_encoder_dir, tmp_path, monkeypatch, capsys):
    _in_repo(monkeypatch, name)  # 400 examples: a seeded stratified sample keeps ≥ 1 of each of CLINC150's 151 labels
    argv = [*command, "--config", name, f"model.name={tiny_encoder_dir}", "data.max_examples=400", "train.max_steps=2",
            "train.batch_size=8", "train.max_length=32", "train.log_every=1", f"runs_dir={tmp_path}"]
    val = [r for r in _run(argv, tmp_path / name, capsys) if r.get("split") == "val"]
    assert val and 0.0 <= val[-1][metric] <= 1.0, val
    assert (tmp_path / name / "checkpoints" / "best").is_dir()


@pytest.mark.parametrize("name,command", [("squad-span-sft", ["sft"]), ("squad-span-rl", ["rl"])])
def test_squad_span_configs_run(name, command, tiny_encoder_dir, tmp_path, monkeypatch, capsys):
    _in_repo(monkeypatch, name)
    argv = [*command, "--config", name, f"model.name={tiny_encoder_dir}", "data.max_examples=16",
            "data.max_val_examples=8", "train.max_steps=2", "train.batch_size=4", "train.max_length=48",
            "span.stride=8", "train.log_every=1", f"runs_dir={tmp_path}"]
    val = [r for r in _run(argv, tmp_path / name, capsys) if r.get("split") == "val"]
    assert val and val[-1]["questions"] == 8 and 0.0 <= val[-1]["f1"] <= 1.0, val


def test_imdb_pairwise_reward_model_config_runs(tiny_encoder_dir, tmp_path, monkeypatch, capsys):
    _in_repo(monkeypatch, "imdb-rm-pairwise")
    imdb = needs_shared_data("imdb", "train.jsonl.gz")
    # the config reads the pairs where `rewardtune data pairs` writes them by default
    assert _data_paths("imdb-rm-pairwise") == [f"{DEFAULT_OUT}/train.jsonl", f"{DEFAULT_OUT}/val.jsonl"]
    pairs = tmp_path / "pairs"
    assert main(["data", "pairs", str(imdb), "--out", str(pairs), "--train-pairs", "16", "--val-pairs", "8"]) == 0
    rows = [json.loads(line) for line in (pairs / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all(r["chosen"] != r["rejected"] for r in rows)
    argv = ["rm", "train", "--config", "imdb-rm-pairwise", f"model.name={tiny_encoder_dir}", "train.max_steps=2",
            "train.batch_size=4", "train.max_length=32", "train.log_every=1", f"data.path={pairs / 'train.jsonl'}",
            f"data.val_path={pairs / 'val.jsonl'}", f"runs_dir={tmp_path}"]
    rows = _run(argv, tmp_path / "imdb-rm-pairwise", capsys)
    assert any("pairwise_accuracy" in r for r in rows if r.get("split") == "val")
    assert (tmp_path / "imdb-rm-pairwise" / "checkpoints" / "best").is_dir()


def test_grpo_sentiment_config_runs(tiny_causal_lm_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # its prompts ship with the package: it runs from anywhere
    argv = ["rl", "--config", "grpo-smollm2-sentiment", f"model.name={tiny_causal_lm_dir}", "rl.steps=2",
            "rl.prompts_per_step=2", "rl.samples_per_prompt=2", "eval.prompts=2", "eval.samples=2",
            "gen.max_new_tokens=4", f"runs_dir={tmp_path}"]
    rows = _run(argv, tmp_path / "grpo-smollm2-sentiment", capsys)
    train = [r for r in rows if r.get("split") == "train"]
    assert [r["step"] for r in train] == [1, 2] and all("reward/lexicon" in r for r in train)
    written = yaml.safe_load((tmp_path / "grpo-smollm2-sentiment" / "config.yaml").read_text())
    assert written["policy"] == "causal-lm" and written["model"]["lora"]["r"] == 16


def test_shipped_configs_load_and_name_their_command():
    """Each file loads into its command's config, and its first comment line says what it runs."""
    from rewardtune.train.gen_config import GenRLConfig
    from rewardtune.train.reward_model import RMConfig
    from rewardtune.train.rl_classifier import RLClassifierConfig
    from rewardtune.train.rl_tagger import TaggerRLConfig
    from rewardtune.train.sft import SFTConfig
    from rewardtune.train.sft_lm_config import SFTLMConfig
    from rewardtune.train.tagger import TaggerSFTConfig

    from rewardtune.train.span_config import SpanRLConfig, SpanSFTConfig

    classes = {"sft": SFTConfig, "rl": RLClassifierConfig, "rm train": RMConfig, "rl-causal-lm": GenRLConfig,
               "sft-causal-lm": SFTLMConfig, "sft-tagger": TaggerSFTConfig, "rl-tagger": TaggerRLConfig,
               "sft-span": SpanSFTConfig, "rl-span": SpanRLConfig}
    for name, path in shipped_configs().items():
        text = path.read_text()
        assert text.startswith("# ") and len(text.splitlines()[0]) > 20, name
        command = re.search(r"rewardtune (sft|rl|rm train) --config (\S+)", text)
        assert command and command.group(2) == name, name
        kind = command.group(1)
        policy = yaml.safe_load(text).get("policy", "classifier")
        if policy != "classifier":
            kind = f"{kind}-{policy}"
        cfg = load_config(classes[kind], path)
        assert cfg.name == name  # its run folder is runs/<config name>


RECIPE_SOURCES = {"mt": ("mt", "multi30k-en-de", "dev.jsonl.gz"), "dialogue": ("dialogue", "dailydialog", "dev.jsonl.gz"),
                  "qa": ("qa", "squad-v1.1", "train.jsonl.gz"), "intent": ("intent", "banking77", "train.jsonl.gz")}


@pytest.mark.parametrize("recipe", ["mt", "dialogue", "qa", "intent"])
def test_recipe_configs_run_sft_then_rl(recipe, tiny_causal_lm_dir, tmp_path, monkeypatch, capsys):
    """`data recipe` writes the rows the pair of configs reads; sft runs, and rl starts from sft's best checkpoint."""
    _in_repo(monkeypatch, f"recipe-{recipe}-sft")
    needs_shared_data(*RECIPE_SOURCES[recipe])  # what `data recipe` reads (the configs read what it writes)
    rows = tmp_path / "rows"
    assert main(["data", "recipe", recipe, "--out", str(rows), "--train-rows", "16", "--val-rows", "4"]) == 0
    assert _data_paths(f"recipe-{recipe}-sft") == _data_paths(f"recipe-{recipe}-rl") == [
        f"runs/data/recipe-{recipe}/train.jsonl", f"runs/data/recipe-{recipe}/val.jsonl"]  # the command's default out
    for split in ("train", "val"):  # the tiny model's context is 128 tokens: SQuAD's contexts are cut to fit it
        lines = [json.loads(line) for line in (rows / f"{split}.jsonl").read_text().splitlines()]
        (rows / f"{split}.jsonl").write_text("".join(json.dumps({**r, "prompt": r["prompt"][-200:]}) + "\n"
                                                     for r in lines))
    data = [f"data.path={rows / 'train.jsonl'}", f"data.val_path={rows / 'val.jsonl'}", f"runs_dir={tmp_path}"]
    sft = ["sft", "--config", f"recipe-{recipe}-sft", f"model.name={tiny_causal_lm_dir}", "train.max_steps=2",
           "train.batch_size=4", "train.max_length=64", "eval.prompts=2", "eval.max_new_tokens=4", "eval.every=0", *data]
    _run(sft, tmp_path / f"recipe-{recipe}-sft", capsys)
    best = tmp_path / f"recipe-{recipe}-sft" / "checkpoints" / "best"
    rl = ["rl", "--config", f"recipe-{recipe}-rl", f"model.name={best}", "rl.steps=2", "rl.prompts_per_step=2",
          "rl.samples_per_prompt=2", "eval.prompts=2", "gen.max_new_tokens=4",
          "gen.stop_strings=[]", *data]  # the tiny test tokenizer cannot place stop strings (SmolLM2 can)
    train = [r for r in _run(rl, tmp_path / f"recipe-{recipe}-rl", capsys) if r.get("split") == "train"]
    reward = yaml.safe_load(config_path(f"recipe-{recipe}-rl").read_text())["reward"]["functions"]
    assert [r["step"] for r in train] == [1, 2] and all(f"reward/{f}" in r for f in reward for r in train)


def test_make_pairs_keeps_the_rating_gap_and_fails_clearly():
    from rewardtune.data import DataError
    from rewardtune.pairs import make_pairs

    texts, ratings = ["a", "b", "c", "d"], [1, 2, 9, 10]
    pairs = make_pairs(texts, ratings, 4, seed=0)
    score = dict(zip(texts, ratings))
    assert len(pairs) == 4 and all(score[p["chosen"]] - score[p["rejected"]] >= 4 for p in pairs)
    assert len({frozenset((p["chosen"], p["rejected"])) for p in pairs}) == 4  # no pair drawn twice
    with pytest.raises(DataError, match="found only 4 of 5 pairs"):  # only 4 pairs are 4 stars apart
        make_pairs(texts, ratings, 5, seed=0)
    with pytest.raises(DataError, match="no two ratings differ by 4"):
        make_pairs(texts, [5, 5, 6, 7], 1, seed=0)
