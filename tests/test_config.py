"""Config loading: YAML + dotted overrides, type checks, unknown keys, round trip."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from rewardtune.config import (ConfigError, LoraSettings, ModelSettings, describe, dump_config, load_config, nested)


from helpers import Cfg  # the small config that test_fuzz_inputs.py loads too


def test_defaults_without_file():
    cfg = load_config(Cfg)
    assert cfg.train.lr == 1e-5 and cfg.model.lora == LoraSettings() and cfg.name == "run"


def test_yaml_then_overrides_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.001\n  epochs: 3\nmodel:\n  lora:\n    r: 8\n")
    cfg = load_config(Cfg, f, ["train.epochs=5", "model.lora.alpha=32", "train.lr=3e-5", "name=x"])
    assert cfg.train.epochs == 5          # override beats the file
    assert cfg.train.lr == 3e-5           # '3e-5' is a string to YAML 1.1; we parse it as a float
    assert cfg.model.lora.r == 8 and cfg.model.lora.alpha == 32.0
    assert isinstance(cfg.model.lora.alpha, float)  # int → float for float fields
    assert cfg.name == "x"


def test_unknown_key_in_file_lists_valid_keys(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, f)
    msg = str(e.value)
    assert str(f) in msg and "train" in msg and "'learning_rate'" in msg
    assert "valid keys are: lr, epochs, algo" in msg


def test_unknown_key_in_override_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'lora_r'.*valid keys are: name, lora"):
        load_config(Cfg, None, ["model.lora_r=4"])


def test_wrong_type_and_literal_errors():
    with pytest.raises(ConfigError, match=r"train.epochs: expected int, got 'three'"):
        load_config(Cfg, None, ["train.epochs=three"])
    with pytest.raises(ConfigError, match=r"train.algo: 'ppo' is not one of 'reinforce', 'rloo'"):
        load_config(Cfg, None, ["train.algo=ppo"])
    with pytest.raises(ConfigError, match="expected int, got True"):
        load_config(Cfg, None, ["train.epochs=true"])  # bool is not an int here
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(Cfg, None, ["train.epochs"])


def test_tuple_fields_accept_lists_and_commas():
    assert load_config(Cfg, None, ["data.labels=[neg, pos]"]).data.labels == ("neg", "pos")
    assert load_config(Cfg, None, ["data.labels=neg,pos"]).data.labels == ("neg", "pos")


def test_invalid_yaml_names_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  lr: 0.1\n  epochs: [1,\n")
    with pytest.raises(ConfigError, match=r"bad.yaml, line \d+: invalid YAML"):
        load_config(Cfg, f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Cfg, tmp_path / "missing.yaml")
    g = tmp_path / "list.yaml"
    g.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(Cfg, g)


def test_dump_then_load_round_trips(tmp_path):
    cfg = load_config(Cfg, None, ["data.labels=[a, b]", "model.lora.r=4", "train.lr=0.5"])
    f = tmp_path / "resolved.yaml"
    f.write_text(dump_config(cfg))
    assert load_config(Cfg, f) == cfg


def test_describe_has_a_doc_for_every_field():
    lines = describe(Cfg)
    assert "train.lr = 1e-05  # learning rate" in lines
    assert "model.lora.r = 0  # adapter rank; 0 disables LoRA (full fine-tuning)" in lines
    assert all(line.split("# ", 1)[1].strip() for line in lines)


@dataclass(frozen=True)
class WithSectionDefault:
    model: ModelSettings = nested(lambda: ModelSettings(name="smollm2-135m-instruct"), "a section with its own default")


def test_partial_section_override_keeps_the_section_default(tmp_path):
    cfg = load_config(WithSectionDefault, None, ["model.lora.r=16"])
    assert cfg.model.name == "smollm2-135m-instruct" and cfg.model.lora.r == 16
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  lora:\n    alpha: 4\n")
    assert load_config(WithSectionDefault, f).model.name == "smollm2-135m-instruct"


def test_yaml_no_for_a_string_choice_is_the_word_no():
    from rewardtune.train.sft import SFTConfig

    # YAML 1.1 parses a bare `no` as False; mixed_precision's choices are the strings 'no' and 'bf16'
    assert load_config(SFTConfig, None, ["train.mixed_precision=no"]).train.mixed_precision == "no"


@pytest.mark.parametrize("typed,name", [("no", "no"), ("off", "off"), ("007", "007"), ("1e3", "1e3"), ("null", "null"),
                                        ("'no'", "no"), ("true", "true")])
def test_a_string_field_on_the_command_line_takes_the_text_as_typed(typed, name):
    # YAML would make these False, 7, 1000.0, None and True; a run name means the text
    assert load_config(Cfg, None, [f"name={typed}"]).name == name


def test_command_line_values_of_other_types_still_parse_as_yaml():
    cfg = load_config(Cfg, None, ["train.lr=3e-5", "model.lora={alpha: 4}", "model.lora.r=8"])
    assert cfg.train.lr == 3e-5 and cfg.model.lora.r == 8 and cfg.model.lora.alpha == 4.0
    with pytest.raises(ConfigError, match="train.lr: expected float"):
        load_config(Cfg, None, ["train.lr=no"])


def test_config_path_takes_a_file_then_a_shipped_name(tmp_path, monkeypatch):
    from rewardtune.config import config_path, shipped_configs

    monkeypatch.chdir(tmp_path)
    shipped = shipped_configs()
    assert "sst2-sft" in shipped
    assert config_path("sst2-sft") == config_path("sst2-sft.yaml") == shipped["sst2-sft"]
    (tmp_path / "sst2-sft").mkdir()  # a run folder of that name (runs_dir=.) does not hide the shipped file
    assert config_path("sst2-sft") == shipped["sst2-sft"]
    (tmp_path / "sst2-sft.yaml").write_text("name: mine\n")  # a file of that name does
    assert config_path("sst2-sft.yaml") == tmp_path.joinpath("sst2-sft.yaml").relative_to(tmp_path)
    with pytest.raises(ConfigError, match="no shipped config is called 'nope'.*sst2-sft"):
        config_path("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        config_path("some/dir/sst2-sft")  # a path into a folder is never a shipped name


# ---------------------------------------------------------------- keys renamed when generative RL's `rl` section split


def test_keys_of_the_one_rl_section_load_as_their_new_keys_with_a_warning(caplog):
    from rewardtune.train.gen_config import GenRLConfig

    with caplog.at_level("WARNING", logger="rewardtune.config"):
        cfg = load_config(GenRLConfig, None, ["rl.eval_every=3", "rl.rewards=[lexicon]", "rl.micro_batch_size=2",
                                              "rl.on_reward_error=skip", "rl.steps=7"])
    assert (cfg.eval.every, cfg.reward.functions, cfg.runtime.micro_batch_size) == (3, ("lexicon",), 2)
    assert cfg.reward.on_error == "skip" and cfg.rl.steps == 7  # rl.steps stayed where it was
    assert "rl.eval_every is now called eval.every" in caplog.text


def test_an_old_config_file_loads_as_the_new_layout(tmp_path):
    from rewardtune.train.gen_config import GenRLConfig

    old = tmp_path / "config.yaml"  # as a run written before the split has it
    old.write_text("rl:\n  algorithm: rloo\n  rewards: [length]\n  eval_samples: 2\n  best_metric: kl\n"
                   "  gradient_checkpointing: true\n", encoding="utf-8")
    cfg = load_config(GenRLConfig, old)
    assert cfg.rl.algorithm == "rloo" and cfg.eval.samples == 2 and cfg.eval.best_metric == "kl"
    assert cfg.runtime.gradient_checkpointing is True and cfg.reward.functions == ("length",)


def test_an_old_key_and_its_new_name_together_are_an_error():
    from rewardtune.train.gen_config import GenRLConfig

    with pytest.raises(ConfigError, match="rl.eval_every and eval.every are the same setting"):
        load_config(GenRLConfig, None, ["eval.every=2", "rl.eval_every=3"])


def test_a_run_written_before_the_split_resumes(tmp_path):
    """`--resume` compares the run's config.yaml with the config it goes on with: old keys are read as the new."""
    import yaml

    from rewardtune.config import to_dict
    from rewardtune.run import _check_resume
    from rewardtune.train.gen_config import RENAMED, GenRLConfig

    cfg = load_config(GenRLConfig, None, ["eval.every=0", "reward.functions=[lexicon]"])
    saved = to_dict(cfg)
    for old, new in RENAMED.items():  # write it back in the old layout
        (osec, okey), (nsec, nkey) = old.split("."), new.split(".")
        saved[osec][okey] = saved[nsec].pop(nkey)
    for section in ("eval", "runtime"):
        assert not saved.pop(section)
    saved.pop("reward")  # what is left there was added later (the metric rewards' settings): absent in such a run
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved), encoding="utf-8")
    assert _check_resume(tmp_path, cfg) is None  # accepted (no checkpoint yet), nothing recorded as changed
    assert not (tmp_path / "config_changes.jsonl").exists()
    with pytest.raises(ConfigError, match=r"reward.functions: \['lexicon'\] -> \['length'\]"):  # a real change
        _check_resume(tmp_path, load_config(GenRLConfig, None, ["eval.every=0", "reward.functions=[length]"]))


def test_the_classifier_rewards_moved_to_their_own_section_and_the_old_keys_still_load():
    from rewardtune.train.rl_classifier import RLClassifierConfig

    cfg = load_config(RLClassifierConfig, None, ["rl.rewards=[cost_matrix]", "rl.cost_matrix=pos/neg=-2",
                                                 "rl.on_reward_error=skip", "rl.estimator=reinforce"])
    assert cfg.reward.functions == ("cost_matrix",) and cfg.reward.cost_matrix == "pos/neg=-2"
    assert cfg.reward.on_error == "skip" and cfg.rl.estimator == "reinforce"
