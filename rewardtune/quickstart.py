"""`rewardtune quickstart`: the main job on embedded defaults (bundled models + demo data) in one run folder:
a supervised classifier, RL on it with the exact expected-reward gradient, then GRPO on a causal LM rewarded by
that classifier; it ends with the runs' HTML report (`report.html`). Its own module, beside the command line, so cli.py stays a thin layer of commands.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .config import DataSettings, doc, load_config, nested


@dataclass(frozen=True)
class QuickstartConfig:
    """The main job on embedded defaults: bundled models + demo data."""

    data: DataSettings = nested(lambda: DataSettings(val_fraction=0.25), "labelled demo reviews (classifier stages)")
    prompts: str = doc("demo-prompts", "prompt file for the generation stage")
    classifier: str = doc("minilm-l6", "encoder for the classifier and reward model")
    policy: str = doc("smollm2-135m-instruct", "causal LM for generation")
    max_new_tokens: int = doc(24, "tokens generated per completion")
    epochs: int = doc(4, "epochs of each classifier stage")
    lr: float = doc(1e-4, "learning rate of each classifier stage")
    gen_steps: int = doc(8, "steps of the generative RL stage (0 = skip it)")
    gen_lr: float = doc(1e-3, "learning rate of the generative RL stage (LoRA)")
    gen_eval_prompts: int = doc(16, "held-out prompts of the generative RL stage")
    gen_eval_samples: int = doc(4, "completions sampled per held-out prompt, same draws before and after (0 = one greedy)")
    runs_dir: str = doc("runs", "where run folders are created")
    name: str = doc("", "run name; empty = quickstart-<timestamp>")
    seed: int = doc(0, "global seed")


def run_quickstart(cfg: QuickstartConfig) -> None:
    """Run the three stages; each prints what it did and where its run folder is."""
    import torch

    from . import data as D
    from . import models as M
    from .run import start_run

    cfg = replace(cfg, name=cfg.name or time.strftime("quickstart-%Y%m%d-%H%M%S"))  # resolved name in config.yaml
    run = start_run(cfg, cfg.name, cfg.runs_dir, cfg.seed)
    run.print(f"[1/6] run folder {run.dir} (config.yaml written)")
    for name in (cfg.classifier, cfg.policy):
        t = time.time()
        path = M.prepare(name) if name in M.ALIASES else M.resolve(name)
        run.print(f"[2/6] model {name}: ready at {path} ({time.time() - t:.1f} s)")
    ex = D.load_examples(cfg.data.path, cfg.data.text_column, cfg.data.label_column, cfg.data.labels)
    train, val = D.split(ex, cfg.data.val_fraction, cfg.data.seed, cfg.data.stratify)
    prompts = D.load_examples(cfg.prompts, text_column="prompt", label_column=None)
    counts = {n: ex.labels.count(i) for i, n in enumerate(ex.label_names)}
    run.print(f"[3/6] data {ex.source}: {len(ex)} examples {counts}, split {len(train)} train / {len(val)} val; "
              f"{len(prompts)} prompts")
    run.log(0, examples=len(ex), train=len(train), val=len(val), prompts=len(prompts))

    lm, ltok = M.load_causal_lm(cfg.policy)
    batch = ltok(prompts.texts[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = lm.generate(**batch, max_new_tokens=cfg.max_new_tokens, do_sample=False)
    for prompt, ids in zip(prompts.texts[:2], out[:, batch["input_ids"].shape[1]:]):
        run.print(f"      {cfg.policy} greedy: {prompt!r} -> {ltok.decode(ids, skip_special_tokens=True)!r}")
    del lm
    _quickstart_classifiers(cfg, run)
    from .report import write_report

    run.print(f"\nreport of the runs (plots, held-out metrics, samples; opens offline): {write_report([run.dir])}")


def _quickstart_classifiers(cfg: QuickstartConfig, run: Any) -> None:
    """Stage 2: supervised baseline, then RL with the exact expected-reward gradient, on the demo reviews."""
    from .train.rl_classifier import RLClassifierConfig, train_rl_classifier
    from .train.sft import SFTConfig, train_sft

    common = [f"model.name={cfg.classifier}", f"data.path={cfg.data.path}", f"data.val_fraction={cfg.data.val_fraction}",
              f"data.seed={cfg.data.seed}", f"train.epochs={cfg.epochs}", f"train.lr={cfg.lr}", "train.batch_size=16",
              "train.max_length=64", f"runs_dir={run.dir}", f"seed={cfg.seed}"]
    run.print(f"\n[4/6] supervised baseline (sft) on {cfg.classifier}")
    sft = train_sft(load_config(SFTConfig, None, common + ["name=sft"]))
    run.print(f"\n[5/6] reward-driven fine-tuning (rl, estimator=expected, reward=indicator) on {cfg.classifier}")
    rl = train_rl_classifier(load_config(RLClassifierConfig, None, common + ["name=rl", "rl.estimator=expected"]))
    run.log(1, sft_best_accuracy=sft["best"], rl_best_accuracy=rl["best"])
    run.print(f"\nvalidation accuracy: sft {sft['best']:.3f}, rl-expected {rl['best']:.3f} "
              f"(runs in {run.dir}/sft and {run.dir}/rl)")
    _quickstart_generation(cfg, run, Path(sft["run_dir"]) / "checkpoints" / "best")


def _quickstart_generation(cfg: QuickstartConfig, run: Any, reward_model_dir: Any) -> None:
    """Stage 3: GRPO on the causal LM (LoRA) with the SFT classifier's P(positive) as the reward."""
    from .train.gen_config import GenRLConfig
    from .train.rl_generate import train_rl_generate

    if cfg.gen_steps <= 0:
        return
    run.print(f"\n[6/6] generative RL (grpo, LoRA r=16) on {cfg.policy}: reward = P(positive) under the sft "
              f"classifier ({reward_model_dir}), {cfg.gen_steps} steps of 4 prompts x 4 samples")
    out = train_rl_generate(load_config(GenRLConfig, None, [
        f"model.name={cfg.policy}", "model.lora.r=16", "model.lora.alpha=32", f"data.path={cfg.prompts}",
        f"reward.functions=[rm:{reward_model_dir}]", f"rl.steps={cfg.gen_steps}", "eval.every=0",
        f"eval.prompts={cfg.gen_eval_prompts}", f"eval.samples={cfg.gen_eval_samples}", f"rl.lr={cfg.gen_lr}",
        f"gen.max_new_tokens={cfg.max_new_tokens}", f"runs_dir={run.dir}", "name=rl-lm", f"seed={cfg.seed}"]))
    run.log(2, gen_reward_start=out["eval_start"]["reward"], gen_reward_end=out["eval"]["reward"])
    # Sampled with the same draws before and after, a held-out set of 16 x 4 completions moves with the policy,
    # not with which prompts or tokens happened to be drawn (one greedy completion of 8 prompts did not).
    how = (f"{cfg.gen_eval_samples} sampled" if cfg.gen_eval_samples else "greedy") + \
        f" x {out['held_out_prompts']} prompts"  # a prompts file may hold fewer than gen_eval_prompts
    run.print(f"held-out reward ({how}): {out['eval_start']['reward']:.3f} before -> "
              f"{out['eval']['reward']:.3f} after; samples in {out['run_dir']}/samples.jsonl")
