"""The settings of generative RL (`rewardtune rl policy=causal-lm`), in sections by concern: the algorithm (`rl`,
`ppo`), what scores a completion (`reward`), sampling (`gen`), held-out evaluation and logging (`eval`), and how the
work is laid out on the machine (`runtime`).

`auto` settings are resolved once, when a run starts (`GenRLSettings.resolved`), from each algorithm's row of
`algorithms.objectives.OBJECTIVES`; everything below the loop receives plain values.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

from ..algorithms.objectives import OBJECTIVES
from ..checkpoint import CheckpointSettings
from ..config import REPORT_TO_DOC, DataSettings, ModelSettings, doc, nested
from ..policies.causal_lm import GenSettings


@dataclass(frozen=True)
class PPOSettings:
    """PPO-only settings (used when rl.algorithm=ppo)."""

    epochs: int = doc(2, "passes over each rollout")
    minibatches: int = doc(2, "minibatches per pass")
    clip_eps: float = doc(0.2, "policy ratio clip ε (the lower one, 1 - ε)")
    clip_eps_high: float = doc(0.0, "upper ratio clip 1 + ε_high, DAPO's clip-higher (0 = clip_eps: symmetric)")
    dual_clip: float = doc(0.0, "dual clip c > 1: the loss of a negative advantage is capped at -c·A (0 = off)")
    value_clip: float = doc(0.2, "value clip (0 = none)")
    vf_coef: float = doc(0.1, "weight of the value loss")
    gamma: float = doc(1.0, "discount over tokens")
    lam: float = doc(0.95, "GAE λ")
    whiten_advantages: bool = doc(True, "normalise token advantages over the batch")


@dataclass(frozen=True)
class GenRLSettings:
    """The algorithm, its batch and its KL to the reference policy."""

    algorithm: Literal["reinforce", "rloo", "grpo", "dr_grpo", "ppo"] = doc("grpo", "estimator (ppo: value head + GAE)")
    prompts_per_step: int = doc(4, "P: prompts per step")
    samples_per_prompt: int = doc(4, "K: completions per prompt (B = P·K per step)")
    steps: int = doc(20, "optimiser steps")
    lr: float = doc(1e-4, "AdamW learning rate (constant)")
    max_grad_norm: float = doc(1.0, "gradient clipping (0 = off)")
    aggregation: Literal["auto", "token_mean", "seq_mean_token_mean", "seq_mean_token_sum"] = doc(
        "auto", "how token losses become one number (auto: seq_mean_token_sum for dr_grpo, token_mean for ppo, "
                "else seq_mean_token_mean; ppo always takes token means)")
    baseline: Literal["none", "mean", "ema"] = doc("mean", "reinforce: baseline")
    kl_coef: float = doc(0.04, "β of the KL to the reference policy (0 = no reference)")
    kl_estimator: Literal["auto", "k1", "k2", "k3"] = doc("auto", "per-token KL estimator (auto: k1 for ppo, else k3)")
    kl_mode: Literal["auto", "loss", "reward"] = doc(
        "auto", "KL as a loss term or a penalty in the reward (auto: reward for ppo, else loss)")
    kl_target: float = doc(0.0, "adaptive β (Ziegler et al. 2019): the per-token KL to hold; 0 = fixed β")
    kl_horizon: int = doc(10000, "adaptive β: samples over which β may change by ±20%")

    def resolved(self) -> GenRLSettings:
        """These settings with `auto` made the algorithm's own choice (`algorithms.objectives.OBJECTIVES`). A run
        resolves them once, before its config.yaml is written, so the file says what ran."""
        if "auto" not in (self.aggregation, self.kl_mode, self.kl_estimator):
            return self
        own = OBJECTIVES[self.algorithm]
        pick = lambda asked, default: default if asked == "auto" else asked  # noqa: E731
        return replace(self, aggregation=pick(self.aggregation, own.aggregation),
                       kl_mode=pick(self.kl_mode, own.kl_mode), kl_estimator=pick(self.kl_estimator, own.kl_estimator))


@dataclass(frozen=True)
class RewardSettings:
    """What scores a completion: reward functions, their weights and normalisation, and what a failure does."""

    functions: tuple = doc(("length",), "reward functions: built-ins, rm:FOLDER (a reward model), module:function, "
                                        "or Python callables (API)")
    weights: tuple = doc((), "one weight per reward function (default 1 each)")
    normalize: Literal["none", "running", "rank"] = doc("none", "per-reward normalisation before weighting")
    on_error: Literal["raise", "skip"] = doc(
        "raise", "a reward that raises or gives NaN: stop showing the sample, or drop that sample (counted)")
    regex: str = doc("", "pattern for the `regex` reward (1 if the completion matches)")
    target_length: int = doc(20, "target words for the `length_penalty` reward")
    reference_column: str = doc("reference", "data column of the reference text, or list of texts, per row for "
                                             "exact_match, token_f1, bleu, chrf, rouge and length_ratio")
    rouge_type: Literal["rouge1", "rouge2", "rougeL"] = doc("rougeL", "which ROUGE F-measure the `rouge` reward gives")
    gold_column: str = doc("label", "data column of the gold label (or list of accepted labels) for `label_match`")
    labels: tuple = doc((), "allowed label names `label_match` looks for in a completion (earliest whole word, any "
                            "case); empty: the completion's first word is its label")


@dataclass(frozen=True)
class EvalSettings:
    """Held-out evaluation, the best policy it picks, and how often rows are logged."""

    every: int = doc(10, "steps between held-out evaluations (0 = only at the end)")
    prompts: int = doc(16, "held-out prompts evaluated")
    samples: int = doc(0, "held-out completions per prompt: 0 = one greedy; K = K sampled at gen.temperature "
                          "(the same draws at every evaluation)")
    best_metric: str = doc("reward", "held-out metric that picks checkpoints/best: reward, kl (sampled) or kl_greedy, "
                                     "ref_perplexity, distinct_1, distinct_2, length_words")
    best_mode: Literal["max", "min"] = doc("max", "whether a larger or a smaller best_metric is better")
    sample_every: int = doc(5, "steps between samples.jsonl rows")
    log_every: int = doc(1, "steps between metrics.jsonl rows")


@dataclass(frozen=True)
class RuntimeSettings:
    """How the work is laid out on the machine: memory and precision, never what is computed."""

    micro_batch_size: int = doc(0, "rows per forward/backward (0 = B; PPO: its minibatch); never changes the update")
    inference_batch_size: int = doc(0, "rows per pass without gradient: sampling, reference and PPO value passes, "
                                       "held-out evaluation (0 = all at once; whole prompt groups); memory only")
    mixed_precision: Literal["no", "bf16"] = doc("no", "bf16 autocast for sampling and updates (CPUs with AVX512-BF16/AMX, GPUs)")
    gradient_checkpointing: bool | Literal["auto"] = doc(
        "auto", "keep only each layer's input for the backward pass and recompute the rest (less memory, one more "
                "forward's compute); auto: on for a CUDA GPU, where activations are most of the peak (as TRL's "
                "default), off on a CPU, where the extra forward costs more than the memory")

    def resolved(self, cuda: bool) -> RuntimeSettings:
        """These settings with `auto` made a choice for the device (`cuda`: the run trains on a CUDA GPU)."""
        if self.gradient_checkpointing != "auto":
            return self
        return replace(self, gradient_checkpointing=cuda)


# Keys of the one `rl` section that configs written before the split used: read as their new keys (config.yaml of
# older runs, --resume, old command lines), with a warning.
RENAMED = {
    **{f"rl.{old}": f"reward.{new}" for old, new in (("rewards", "functions"), ("reward_weights", "weights"),
                                                      ("reward_normalize", "normalize"), ("on_reward_error", "on_error"),
                                                      ("regex", "regex"), ("target_length", "target_length"))},
    **{f"rl.{old}": f"eval.{new}" for old, new in (("eval_every", "every"), ("eval_prompts", "prompts"),
                                                    ("eval_samples", "samples"), ("best_metric", "best_metric"),
                                                    ("best_mode", "best_mode"), ("sample_every", "sample_every"),
                                                    ("log_every", "log_every"))},
    **{f"rl.{k}": f"runtime.{k}" for k in ("micro_batch_size", "inference_batch_size", "mixed_precision",
                                            "gradient_checkpointing")},
}


@dataclass(frozen=True)
class GenRLConfig:
    """`rewardtune rl` with `policy: causal-lm` or `policy: seq2seq`."""

    model: ModelSettings = nested(lambda: ModelSettings(name="smollm2-135m-instruct"), "causal LM to fine-tune")
    data: DataSettings = nested(lambda: DataSettings(path="demo-prompts", label_column=""), "prompts")
    gen: GenSettings = nested(GenSettings, "sampling")
    rl: GenRLSettings = nested(GenRLSettings, "algorithm, batch, KL")
    reward: RewardSettings = nested(RewardSettings, "reward functions, weights, normalisation, failures")
    ppo: PPOSettings = nested(PPOSettings, "PPO epochs, minibatches, clipping, GAE (rl.algorithm=ppo)")
    eval: EvalSettings = nested(EvalSettings, "held-out evaluation, best policy, logging")
    runtime: RuntimeSettings = nested(RuntimeSettings, "micro-batches, inference batches, precision, checkpointing")
    ckpt: CheckpointSettings = nested(CheckpointSettings, "resumable checkpoints, resumption, stop/NaN handling")
    policy: Literal["causal-lm", "seq2seq"] = doc("causal-lm", "what the action is: a completion of a causal LM, or "
                                                                "an encoder-decoder's output (T5, BART, Marian)")
    runs_dir: str = doc("runs", "folder holding run folders")
    name: str = doc("rl-lm", "run folder name")
    report_to: tuple = doc((), REPORT_TO_DOC)
    seed: int = doc(0, "global seed")

    RENAMED: ClassVar[dict[str, str]] = RENAMED  # old dotted keys → new (config.load_config reads them)
