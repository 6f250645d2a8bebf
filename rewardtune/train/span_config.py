"""Settings of `rewardtune sft policy=span` and `rewardtune rl policy=span` (extractive QA, train/span.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..checkpoint import CheckpointSettings
from ..config import REPORT_TO_DOC, ConfigError, ModelSettings, doc, nested
from .common import OptimSettings

SPAN_METRICS = ("f1", "exact_match")
SPAN_REWARDS = ("token_f1", "exact_match")  # the built-ins; also rm:FOLDER and module:function


@dataclass(frozen=True)
class SpanDataSettings:
    """SQuAD-layout questions (`id`, `title`, `context`, `question`, `answers.text`, `answers.answer_start`)."""

    path: str = doc("", "training file (jsonl[.gz], csv, parquet) in the SQuAD layout")
    val_path: str = doc("", "validation file; empty = hold out val_fraction of the articles (titles) of `path`")
    val_fraction: float = doc(0.1, "fraction of articles held out when val_path is empty")
    seed: int = doc(0, "seed of the article split and of the max_examples subsets")
    max_examples: int = doc(0, "train on at most this many questions, a seeded sample (0 = all)")
    max_val_examples: int = doc(0, "validate on at most this many questions, a seeded sample (0 = all)")


@dataclass(frozen=True)
class SpanSettings:
    """How contexts become windows and which spans are actions."""

    stride: int = doc(128, "tokens shared by consecutive windows of a long context")
    max_answer_tokens: int = doc(30, "longest span, in tokens (L: an end lies in [start, start + L))")


@dataclass(frozen=True)
class SpanRLSettings:
    """K sampled spans per window, their baseline, and what keeps the policy near its start."""

    samples: int = doc(4, "spans sampled per window")
    baseline: Literal["rloo", "greedy", "none"] = doc(
        "rloo", "rloo: the other samples' mean; greedy: the reward of the most probable span (self-critical)")
    kl_coef: float = doc(0.0, "β of the exact KL(π || π_initial) over all spans")
    entropy_coef: float = doc(0.0, "weight of the entropy bonus (exact, over all spans)")
    ce_coef: float = doc(0.0, "weight of the gold span's cross-entropy added to the RL loss (a mixed objective, "
                              "as in Xiong et al. 2018); 0 = rewards only")


@dataclass(frozen=True)
class SpanRewardSettings:
    """What scores a sampled span's text against the question's gold answers (the `answers` column)."""

    functions: tuple = doc(("token_f1",), "reward functions: token_f1, exact_match (SQuAD-normalised, best gold "
                                          "answer), rm:FOLDER, module:function, or Python callables (API)")
    weights: tuple = doc((), "one weight per reward function (default 1 each)")
    on_error: Literal["raise", "skip"] = doc("raise", "a reward that raises or gives NaN: stop, or drop the window")


def span_optim(**changes: object) -> object:
    """OptimSettings with span defaults (windows of 384 tokens, best checkpoint by F1); `truncation` is unused."""
    defaults = dict(epochs=2, batch_size=16, lr=5e-5, max_length=384, eval_batch_size=64, best_metric="f1")
    return field(default_factory=lambda: OptimSettings(**{**defaults, **changes}),  # type: ignore[arg-type]
                 metadata={"doc": "optimiser, schedule, batching (max_length: window tokens; best_metric: f1 or "
                                  "exact_match)"})


@dataclass(frozen=True)
class SpanSFTConfig:
    """`rewardtune sft policy=span`: start/end cross-entropy on the gold spans."""

    model: ModelSettings = nested(ModelSettings, "encoder or span checkpoint to start from")
    data: SpanDataSettings = nested(SpanDataSettings, "training / validation questions")
    train: OptimSettings = span_optim()
    span: SpanSettings = nested(SpanSettings, "windows and spans")
    ckpt: CheckpointSettings = nested(CheckpointSettings, "resumable checkpoints, resumption, stop/NaN handling")
    policy: Literal["span"] = doc("span", "what is trained (span: start/end over a context)")
    runs_dir: str = doc("runs", "folder holding run folders")
    name: str = doc("sft-span", "run folder name")
    report_to: tuple = doc((), REPORT_TO_DOC)
    seed: int = doc(0, "global seed (initialisation, batch order)")


@dataclass(frozen=True)
class SpanRLConfig:
    """`rewardtune rl policy=span`: REINFORCE on sampled spans with a task-metric reward."""

    model: ModelSettings = nested(ModelSettings, "encoder or `sft policy=span` checkpoint to start from")
    data: SpanDataSettings = nested(SpanDataSettings, "training / validation questions")
    train: OptimSettings = span_optim()
    span: SpanSettings = nested(SpanSettings, "windows and spans")
    rl: SpanRLSettings = nested(SpanRLSettings, "samples, baseline, penalties")
    reward: SpanRewardSettings = nested(SpanRewardSettings, "reward functions, weights, failures")
    ckpt: CheckpointSettings = nested(CheckpointSettings, "resumable checkpoints, resumption, stop/NaN handling")
    policy: Literal["span"] = doc("span", "what the action is (span: a start and an end in the context)")
    runs_dir: str = doc("runs", "folder holding run folders")
    name: str = doc("rl-span", "run folder name")
    report_to: tuple = doc((), REPORT_TO_DOC)
    seed: int = doc(0, "global seed")


def check_span_config(cfg: SpanSFTConfig | SpanRLConfig) -> None:
    """Settings that cannot work, refused before anything loads."""
    if not cfg.data.path:
        raise ConfigError("data.path: give a SQuAD-layout file, e.g. data.path=../shared/data/qa/squad-v1.1/train.jsonl.gz")
    if cfg.train.best_metric not in SPAN_METRICS:
        raise ConfigError(f"train.best_metric={cfg.train.best_metric!r}; a span run reports {', '.join(SPAN_METRICS)}")
    if not 0 <= cfg.span.stride < cfg.train.max_length // 2 - 3:
        raise ConfigError(f"span.stride={cfg.span.stride} must be below train.max_length // 2 - 3 = "
                          f"{cfg.train.max_length // 2 - 3} (a window keeps half its tokens for the context)")
    if cfg.span.max_answer_tokens < 1:
        raise ConfigError("span.max_answer_tokens must be at least 1")
    rl = getattr(cfg, "rl", None)
    if rl is not None and rl.baseline == "rloo" and rl.samples < 2:
        raise ConfigError("rl.baseline=rloo needs rl.samples >= 2 (or rl.baseline=greedy)")
