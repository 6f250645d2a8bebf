"""Test helpers importable from any test module (`from helpers import ...`)."""
from __future__ import annotations

from pathlib import Path

import pytest

from dataclasses import dataclass
from typing import Literal

from rewardtune.config import DataSettings, ModelSettings, doc, nested

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WORDS = (
    "the a an this that film movie plot acting music ending story was is were good great bad awful "
    "boring fun loved hated not never very quite best worst scene actor director i it and but of to "
    "with in on at for my really so too much little slow fast funny sad dull brilliant"
).split()


def needs_shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data {path} is absent (it sits beside the repo as ../shared/data)")
    return path


def make_tokenizer():
    """A word-level tokenizer over a few dozen words: no files, no network."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<eos>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", eos_token="<eos>")


def needs_package(name: str) -> None:
    """Skip unless a bundled-model package is installed (located, not imported: see models.alias_source)."""
    import importlib.util

    if importlib.util.find_spec(name) is None:
        pytest.skip(f"bundled model package {name} is not installed (bash scripts/setup.sh installs it)")


@dataclass(frozen=True)
class Train:
    """A small config section for config-loader tests."""

    lr: float = doc(1e-5, "learning rate")
    epochs: int = doc(1, "passes over the data")
    algo: Literal["reinforce", "rloo"] = doc("reinforce", "estimator")


@dataclass(frozen=True)
class Cfg:
    """A small command config for config-loader tests."""

    model: ModelSettings = nested(ModelSettings, "model")
    data: DataSettings = nested(DataSettings, "data")
    train: Train = nested(Train, "training")
    name: str = doc("run", "run name")


def parse_help_config(text: str) -> dict:
    """`--help-config` output → {dotted key: value} (lists as tuples), the comment lines skipped."""
    import ast

    out = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, rest = line.split(" = ", 1)
        out[key] = ast.literal_eval(rest.split("  # ", 1)[0])
    return out


def flat_config(data: dict, prefix: str = "") -> dict:
    """A nested config dict (`to_dict`, a config.yaml) → {dotted key: value}, lists as tuples."""
    out = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out
