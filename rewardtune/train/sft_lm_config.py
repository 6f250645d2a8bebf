"""The settings of supervised fine-tuning of a causal LM (`rewardtune sft policy=causal-lm`), in sections by concern:
the data's columns and split (`data`), the optimiser and batching (`train`), the validation and the best checkpoint
(`eval`), and what scores generated completions (`reward`, the same settings as generative RL's)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..checkpoint import CheckpointSettings
from ..config import REPORT_TO_DOC, ModelSettings, doc, nested
from .gen_config import RewardSettings


@dataclass(frozen=True)
class SFTLMData:
    """Rows of prompt + completion, or of chat `messages`; the validation rows."""

    path: str = doc("", "training file (jsonl, csv, tsv, parquet) or hub dataset name")
    prompt_column: str = doc("prompt", "column of the prompt text (the context, not trained on)")
    completion_column: str = doc("completion", "column of the target completion (trained on)")
    messages_column: str = doc("messages", "column of chat turns [{role, content}, ...] used when a row has no "
                                           "prompt/completion; every assistant turn is a target")
    val_path: str = doc("", "validation file; empty = carve val_fraction from `path`")
    val_fraction: float = doc(0.1, "fraction of `path` held out (seeded) when val_path is empty")
    seed: int = doc(0, "seed of the train/validation split")
    split: str = doc("train", "split for hub datasets")
    config: str = doc("", "hub dataset config name; empty = the dataset's default")


@dataclass(frozen=True)
class SFTLMTrain:
    """Optimiser, schedule, batching and sequence length."""

    epochs: int = doc(3, "passes over the training data")
    batch_size: int = doc(8, "rows per optimiser step, summed over all processes")
    lr: float = doc(1e-4, "peak learning rate (AdamW)")
    weight_decay: float = doc(0.0, "AdamW weight decay (not applied to biases and norms)")
    warmup_ratio: float = doc(0.0, "fraction of steps with linear warm-up, then linear decay to 0")
    max_grad_norm: float = doc(1.0, "gradient clipping norm (0 = off)")
    max_length: int = doc(512, "tokens per row, prompt + completion")
    truncate: bool = doc(False, "cut a too-long row to max_length (the prompt's first tokens, then the completion's "
                                "last); false: such a row is an error before training")
    group_by_length: bool = doc(True, "batch similar lengths together (less padding)")
    eval_batch_size: int = doc(16, "rows per validation-loss batch")
    log_every: int = doc(10, "optimiser steps between metrics.jsonl rows")
    max_steps: int = doc(0, "stop after this many optimiser steps (0 = run all epochs)")
    mixed_precision: Literal["no", "bf16"] = doc("no", "bf16 autocast (CPUs with AVX512-BF16/AMX, GPUs)")


@dataclass(frozen=True)
class SFTLMEval:
    """Validation (loss, perplexity, metrics of generated completions) and the best checkpoint it picks."""

    every: int = doc(0, "optimiser steps between validations (0 = after each epoch); the last step always is one")
    prompts: int = doc(16, "validation prompts completed greedily and scored by reward.functions (0 = none)")
    max_new_tokens: int = doc(64, "completion length budget of those greedy completions")
    best_metric: str = doc("loss", "validation metric that picks checkpoints/best: loss, perplexity, or one of the "
                                   "generated-output metrics (reward, length_words, distinct_1, distinct_2)")
    best_mode: Literal["min", "max"] = doc("min", "whether a smaller or a larger best_metric is better")


@dataclass(frozen=True)
class SFTLMConfig:
    """`rewardtune sft` with `policy: causal-lm` or `seq2seq`: supervised fine-tuning of an LM on completions."""

    model: ModelSettings = nested(lambda: ModelSettings(name="smollm2-135m-instruct"), "causal LM to fine-tune")
    data: SFTLMData = nested(SFTLMData, "prompt/completion or chat rows, validation split")
    train: SFTLMTrain = nested(SFTLMTrain, "optimiser, schedule, batching, length")
    reward: RewardSettings = nested(lambda: RewardSettings(functions=("token_f1",), reference_column="completion"),
                                    "task metrics of generated validation completions (the rewards of generative RL)")
    eval: SFTLMEval = nested(SFTLMEval, "validation schedule, generated-output metrics, best checkpoint")
    ckpt: CheckpointSettings = nested(CheckpointSettings, "resumable checkpoints, resumption, stop/NaN handling")
    policy: Literal["causal-lm", "seq2seq"] = doc("causal-lm", "what is trained on completions: a causal LM, or an "
                                                                "encoder-decoder (T5, BART, Marian; prompt → encoder)")
    runs_dir: str = doc("runs", "folder holding run folders")
    name: str = doc("sft-lm", "run folder name")
    report_to: tuple = doc((), REPORT_TO_DOC)
    seed: int = doc(0, "global seed (initialisation, batch order, dropout)")
