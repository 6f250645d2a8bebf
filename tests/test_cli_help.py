"""`--help-config` tells the truth: for every command (and every shipped config), what it prints, read back, is the
config that command hands its trainer, key for key; choice fields list their values; `reward.functions` lists the names
the trainer itself accepts. The trainers are replaced by a function that keeps the config, so nothing trains."""
from __future__ import annotations

import dataclasses
import importlib
import re
import typing

import pytest

from rewardtune.cli import main
from rewardtune.cli_config import REWARDS_KEY, builtin_rewards
from rewardtune.config import shipped_configs, to_dict
from rewardtune.quickstart import QuickstartConfig
from rewardtune.rewards import RewardError
from rewardtune.train.gen_config import GenRLConfig
from rewardtune.train.reward_model import RMConfig
from rewardtune.train.rl_classifier import RLClassifierConfig
from rewardtune.train.rl_tagger import TaggerRLConfig
from rewardtune.train.sft import SFTConfig
from rewardtune.train.tagger import TaggerSFTConfig
from rewardtune.train.sft_lm_config import SFTLMConfig
from rewardtune.train.span_config import SpanRLConfig, SpanSFTConfig

from helpers import flat_config, parse_help_config

# argv → the config class it must run with, and the function it hands that config to (module, name)
COMMANDS = {
    ("quickstart",): (QuickstartConfig, "rewardtune.quickstart", "run_quickstart"),
    ("sft",): (SFTConfig, "rewardtune.train.sft", "train_sft"),
    ("sft", "policy=classifier"): (SFTConfig, "rewardtune.train.sft", "train_sft"),
    ("sft", "policy=causal-lm"): (SFTLMConfig, "rewardtune.train.sft_lm", "train_sft_lm"),
    ("rl",): (RLClassifierConfig, "rewardtune.train.rl_classifier", "train_rl_classifier"),
    ("rl", "policy=classifier"): (RLClassifierConfig, "rewardtune.train.rl_classifier", "train_rl_classifier"),
    ("rl", "policy=causal-lm"): (GenRLConfig, "rewardtune.train.rl_generate", "train_rl_generate"),
    ("sft", "policy=tagger"): (TaggerSFTConfig, "rewardtune.train.tagger", "train_sft_tagger"),
    ("rl", "policy=tagger"): (TaggerRLConfig, "rewardtune.train.rl_tagger", "train_rl_tagger"),
    ("rm", "train"): (RMConfig, "rewardtune.train.reward_model", "train_reward_model"),
    ("sft", "policy=span"): (SpanSFTConfig, "rewardtune.train.span", "train_span_sft"),
    ("rl", "policy=span"): (SpanRLConfig, "rewardtune.train.span", "train_span_rl"),
}
# each shipped config and the command that runs it
SHIPPED = {
    "sst2-sft": (SFTConfig, "rewardtune.train.sft", "train_sft", ("sft",)),
    "sst2-rl-expected": (RLClassifierConfig, "rewardtune.train.rl_classifier", "train_rl_classifier", ("rl",)),
    "imdb-rm-pairwise": (RMConfig, "rewardtune.train.reward_model", "train_reward_model", ("rm", "train")),
    "grpo-smollm2-sentiment": (GenRLConfig, "rewardtune.train.rl_generate", "train_rl_generate", ("rl",)),
    "wikiann-tagger-sft": (TaggerSFTConfig, "rewardtune.train.tagger", "train_sft_tagger", ("sft",)),
    "wikiann-tagger-rl": (TaggerRLConfig, "rewardtune.train.rl_tagger", "train_rl_tagger", ("rl",)),
    **{f"recipe-{r}-sft": (SFTLMConfig, "rewardtune.train.sft_lm", "train_sft_lm", ("sft",))
       for r in ("mt", "dialogue", "qa", "intent")},
    **{f"recipe-{r}-rl": (GenRLConfig, "rewardtune.train.rl_generate", "train_rl_generate", ("rl",))
       for r in ("mt", "dialogue", "qa", "intent")},
    **{name: (SFTConfig, "rewardtune.train.sft", "train_sft", ("sft",))
       for name in ("semeval-re-sft", "banking77-sft", "clinc150-sft", "agnews-sft")},
    "clinc150-rl-oos-cost": (RLClassifierConfig, "rewardtune.train.rl_classifier", "train_rl_classifier", ("rl",)),
    "squad-span-sft": (SpanSFTConfig, "rewardtune.train.span", "train_span_sft", ("sft",)),
    "squad-span-rl": (SpanRLConfig, "rewardtune.train.span", "train_span_rl", ("rl",)),
}


def _run_and_help(monkeypatch, capsys, argv: list[str], module: str, name: str) -> tuple[object, dict]:
    """The config `argv` hands its trainer, and its `--help-config` read back."""
    seen = []
    monkeypatch.setattr(importlib.import_module(module), name, lambda cfg, *a, **k: seen.append(cfg) or {})
    assert main(argv) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help-config"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert len(seen) == 1, "the command ran its trainer once, and --help-config did not run it"
    return seen[0], {"text": out, "values": parse_help_config(out)}


@pytest.mark.parametrize("argv", list(COMMANDS), ids=" ".join)
def test_help_config_prints_the_config_the_command_runs_with(argv, monkeypatch, capsys):
    cls, module, name = COMMANDS[argv]
    cfg, shown = _run_and_help(monkeypatch, capsys, list(argv), module, name)
    assert type(cfg) is cls
    assert cfg == cls()  # no file, no override (policy= only picks the class): the defaults
    assert shown["values"] == flat_config(to_dict(cfg))
    assert f"({cls.__name__})" in shown["text"].splitlines()[0]
    _check_choices(cls, shown["text"])


def test_help_config_of_the_generative_rl_is_its_own_not_the_classifiers(monkeypatch, capsys):
    """The bug this guards: `rl policy=causal-lm --help-config` printed the classifier's model.name."""
    _, shown = _run_and_help(monkeypatch, capsys, ["rl", "policy=causal-lm"], "rewardtune.train.rl_generate",
                             "train_rl_generate")
    assert shown["values"]["model.name"] == "smollm2-135m-instruct"
    assert shown["values"]["data.path"] == "demo-prompts" and shown["values"]["reward.functions"] == ("length",)
    assert "rl.estimator" not in shown["values"] and shown["values"]["rl.algorithm"] == "grpo"


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_help_config_with_a_shipped_config_prints_its_values(name, monkeypatch, capsys):
    cls, module, fn, command = SHIPPED[name]
    cfg, shown = _run_and_help(monkeypatch, capsys, [*command, "--config", name, "name=x"], module, fn)
    assert type(cfg) is cls and cfg != cls() and cfg.name == "x"
    assert shown["values"] == flat_config(to_dict(cfg))
    assert f"--config {shipped_configs()[name]}" in shown["text"].splitlines()[0]


def test_every_shipped_config_is_covered_here():
    assert set(SHIPPED) == set(shipped_configs())


@pytest.mark.parametrize("kind", ["classifier", "causal-lm", "tagger", "span"])
def test_help_lists_the_reward_names_the_trainer_accepts(kind, monkeypatch, capsys):
    if kind == "tagger":
        from rewardtune.train.rl_tagger import TaggerRewardSettings, setup_tagger_reward as setup_reward

        settings = TaggerRewardSettings(functions=("no-such-reward",))
        module, fn = "rewardtune.train.rl_tagger", "train_rl_tagger"
    elif kind == "classifier":
        from rewardtune.train.rl_classifier import ClassifierRewardSettings, setup_reward

        settings = ClassifierRewardSettings(functions=("no-such-reward",))
        module, fn = "rewardtune.train.rl_classifier", "train_rl_classifier"
    elif kind == "span":
        from rewardtune.train.span import setup_span_reward as setup_reward
        from rewardtune.train.span_config import SpanRewardSettings

        settings = SpanRewardSettings(functions=("no-such-reward",))
        module, fn = "rewardtune.train.span", "train_span_rl"
    else:
        from rewardtune.train.gen_config import RewardSettings
        from rewardtune.train.gen_setup import setup_reward

        settings = RewardSettings(functions=("no-such-reward",))
        module, fn = "rewardtune.train.rl_generate", "train_rl_generate"
    with pytest.raises(RewardError) as e:
        setup_reward(settings)
    accepted = re.search(r"built-ins: (.*?);", str(e.value)).group(1).split(", ")
    assert list(builtin_rewards(kind)) == accepted
    _, shown = _run_and_help(monkeypatch, capsys, ["rl", f"policy={kind}"], module, fn)
    line = next(l for l in shown["text"].splitlines() if l.startswith(f"{REWARDS_KEY[kind]} = "))
    assert f"[built-ins: {', '.join(accepted)}; or rm:FOLDER" in line and "module:function]" in line


def _check_choices(cls: type, text: str, prefix: str = "") -> None:
    """Every Literal field's line lists exactly its allowed values."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            _check_choices(tp, text, f"{prefix}{f.name}.")
        elif typing.get_origin(tp) is typing.Literal:
            line = next(l for l in text.splitlines() if l.startswith(f"{prefix}{f.name} = "))
            assert line.endswith(f"[one of: {', '.join(map(repr, typing.get_args(tp)))}]"), line
