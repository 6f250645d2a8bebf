"""`runtime.gradient_checkpointing: auto`: on for a CUDA GPU (activations are most of the peak there, and TRL checkpoints
by default), off on a CPU; an explicit value is kept; a run's config.yaml says what ran."""
from __future__ import annotations

import yaml

from rewardtune.config import load_config
from rewardtune.train.gen_config import GenRLConfig, RuntimeSettings
from rewardtune.train.rl_generate import GenRLRun
from test_causal_lm_policy import prompts_file, run_cfg  # noqa: F401  (fixture)


def test_auto_is_on_for_cuda_only_and_explicit_values_stay():
    auto = RuntimeSettings()
    assert auto.gradient_checkpointing == "auto"
    assert auto.resolved(cuda=True).gradient_checkpointing is True
    assert auto.resolved(cuda=False).gradient_checkpointing is False
    for flag in (True, False):
        assert RuntimeSettings(gradient_checkpointing=flag).resolved(cuda=not flag).gradient_checkpointing is flag
    cfg = load_config(GenRLConfig, None, ["runtime.gradient_checkpointing=true"])
    assert cfg.runtime.gradient_checkpointing is True


def test_a_cpu_run_resolves_auto_to_off_in_its_config(tiny_causal_lm_dir, prompts_file, tmp_path):  # noqa: F811
    run = GenRLRun.setup(run_cfg(tiny_causal_lm_dir, prompts_file, tmp_path, "auto"))
    assert run.cfg.runtime.gradient_checkpointing is False
    saved = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())
    assert saved["runtime"]["gradient_checkpointing"] is False
    inner = run.run.accelerator.unwrap_model(run.model)
    assert not getattr(inner, "is_activation_checkpointing", getattr(inner, "is_gradient_checkpointing", False))
