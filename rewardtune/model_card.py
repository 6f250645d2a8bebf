"""The model card (README.md) of an exported run: what was trained from what, how, on what, and how it scored.

Everything is read from the run folder (config.yaml, metrics.jsonl), never retyped, so the card says what ran.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# metrics.jsonl rows that describe the trained model rather than a training step, by trainer family: the card shows
# the last row of each (the first as well for `eval`: the held-out metrics before training).
HELD_OUT_SPLITS = ("eval", "val", "test", "best", "summary")


@dataclass(frozen=True)
class CardFacts:
    """What a model card says; `config` is the run's resolved config.yaml as a dict, `config_text` its text."""

    base_model: str  # a hub id where the base is a bundled alias
    kind: str  # causal-lm | classifier
    form: str  # adapter | merged | full
    checkpoint: str  # best | final | a folder
    config: dict[str, Any]
    config_text: str
    metrics: dict[str, dict[str, Any]]  # heading → metric → value
    note: str = ""  # a caveat about the base model (e.g. the weights it was trained on differ from the hub's)


def algorithm(config: dict[str, Any]) -> str:
    """What trained the model, in words, from the resolved config's sections."""
    if not config:
        return "unknown (a checkpoint exported without its run folder)"
    if "rm" in config:
        return f"reward model ({config['rm'].get('mode', 'pointwise')}), `rewardtune rm train`"
    rl = config.get("rl") or {}
    if config.get("policy") == "causal-lm":
        if rl:
            return f"{rl.get('algorithm', 'rl')} (policy-gradient RL on a causal LM), `rewardtune rl policy=causal-lm`"
        return "supervised fine-tuning on completions, `rewardtune sft policy=causal-lm`"
    if rl:
        return f"RL on a classifier ({rl.get('estimator', '')} estimator), `rewardtune rl`"
    return "supervised fine-tuning (cross-entropy on labels), `rewardtune sft`"


def rewards(config: dict[str, Any]) -> str:
    """The reward functions and their weights ('none' for a trainer without rewards)."""
    rs = config.get("reward") or {}
    fns = rs.get("functions") or []
    if not fns or "rm" in config or (config.get("policy") == "classifier" and "rl" not in config):
        return "none"
    weights = rs.get("weights") or [1.0] * len(fns)
    used = "scored on held-out prompts only" if "rl" not in config else "trained on"
    return ", ".join(f"`{f}` × {w}" for f, w in zip(fns, weights)) + f" ({used})"


def data(config: dict[str, Any]) -> str:
    """The data files (or hub datasets) and the columns read from them."""
    d, rm = config.get("data") or {}, config.get("rm") or {}
    if not d:
        return "unknown (no run folder)"
    parts = [f"train: `{d.get('path')}`"] + [f"{k[:-5]}: `{d[k]}`" for k in ("val_path", "test_path") if d.get(k)]
    if config.get("policy") == "causal-lm":
        cols = {k: d.get(k) for k in ("prompt_column", "completion_column")}
    elif rm.get("mode") == "pairwise":
        cols = {"prompt_column": d.get("prompt_column"), **{k: rm.get(k) for k in ("chosen_column", "rejected_column")}}
    else:
        cols = {k: d.get(k) for k in ("text_column", "label_column")} | (
            {"score_column": rm.get("score_column")} if rm.get("mode") == "regression" else {})
    named = [f"{k} `{v}`" for k, v in cols.items() if v]
    return "; ".join(parts) + (f" (columns: {', '.join(named)})" if named else "")


def held_out_metrics(run_dir: Path | None) -> dict[str, dict[str, Any]]:
    """Heading → metrics: the last row of each held-out split of metrics.jsonl (and the first `eval` row: before
    training). Empty without a run folder or metrics."""
    path = run_dir / "metrics.jsonl" if run_dir else None
    if path is None or not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    out: dict[str, dict[str, Any]] = {}
    for split in HELD_OUT_SPLITS:
        mine = [r for r in rows if r.get("split") == split]
        if split == "eval" and len(mine) > 1:
            out[f"eval at step {mine[0].get('step')} (start)"] = _values(mine[0])
        if mine:
            out[f"{split} at step {mine[-1].get('step')}"] = _values(mine[-1])
    return out


def _values(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("step", "split")}


def _table(metrics: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    return "\n".join(["| metric | value |", "| --- | --- |"] + [f"| {k} | {fmt(v)} |" for k, v in metrics.items()])


def usage(facts: CardFacts) -> str:
    """How to load the folder (a snippet for the card)."""
    auto = "AutoModelForCausalLM" if facts.kind == "causal-lm" else "AutoModelForSequenceClassification"
    if facts.form != "adapter":
        return f"from transformers import AutoTokenizer, {auto}\n\nmodel = {auto}.from_pretrained(PATH)\n" \
               "tokenizer = AutoTokenizer.from_pretrained(PATH)"
    peft_auto = auto.replace("AutoModel", "AutoPeftModel")
    extra = ", num_labels=N_LABELS" if facts.kind == "classifier" else ""
    return f"from peft import {peft_auto}\nfrom transformers import AutoTokenizer\n\n" \
           f"model = {peft_auto}.from_pretrained(PATH{extra})  # fetches the base model\n" \
           "tokenizer = AutoTokenizer.from_pretrained(PATH)"


def model_card(facts: CardFacts) -> str:
    """README.md text: YAML front matter for the hub, then base model, algorithm, rewards, data, metrics, config."""
    library = "peft" if facts.form == "adapter" else "transformers"
    task = "text-generation" if facts.kind == "causal-lm" else "text-classification"
    lines = ["---", f"base_model: {facts.base_model}", f"library_name: {library}", f"pipeline_tag: {task}",
             "tags:", "- rewardtune", "---", "", f"# {facts.config.get('name', 'rewardtune run')}", "",
             f"Trained with rewardtune from `{facts.base_model}` "
             f"({'a LoRA adapter' if facts.form == 'adapter' else facts.form + ' weights'}, "
             f"checkpoint `{facts.checkpoint}`).", *(["", facts.note] if facts.note else []), "",
             f"- **Base model**: `{facts.base_model}`", f"- **Algorithm**: {algorithm(facts.config)}",
             f"- **Rewards**: {rewards(facts.config)}", f"- **Data**: {data(facts.config)}", "",
             "## Held-out metrics", ""]
    for heading, values in facts.metrics.items() or {"(none logged)": {}}.items():
        lines += [f"### {heading}", "", _table(values) if values else "", ""]
    lines += ["## Use", "", "```python", usage(facts), "```", "",
              "## Resolved config (`config.yaml`)", "", "```yaml", facts.config_text.rstrip(), "```", ""]
    return "\n".join(lines)
