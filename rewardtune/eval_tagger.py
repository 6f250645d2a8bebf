"""Token taggers: loading (a new head on an encoder, or a rewardtune checkpoint), predicting each word's tag,
seqeval's entity-level report, and per-sentence predictions as JSONL (`rewardtune eval` on a tagger checkpoint).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .algorithms.tagging import Transitions, bio_transitions
from .batching import batch_order
from .models import ModelError, apply_lora, load_tokenizer, resolve
from .policies import tagger as policy
from .rewards.spans import entity_report
from .tagging import TaggedExamples, check_fast, collate_tagged, encode_tagged, word_tags


def load_tagger(name: str, tag_names: Sequence[str], trainable: bool = False) -> tuple[Any, Any]:
    """(AutoModelForTokenClassification over `tag_names`, fast tokenizer): a new head on an encoder, or a
    trained tagger (whose tag set must be the same; a LoRA adapter stays trainable when `trainable`)."""
    from transformers import AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    meta = Path(name) / "rewardtune.json"  # a rewardtune checkpoint: a folder (an adapter has no config.json)
    if meta.exists():
        have = json.loads(meta.read_text()).get("tag_names")
        if have is not None and list(have) != list(tag_names):
            raise ModelError(f"{name} is a tagger trained on the tags {have}, but the data's tag set is "
                             f"{list(tag_names)}; give data.labels in that order")
        if (Path(name) / "adapter_config.json").exists():
            return load_trained_tagger(name, trainable)
    path = resolve(name)
    tok = load_tokenizer(path)
    check_fast(tok)
    id2label = dict(enumerate(tag_names))
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized head" is expected here, not a warning
    try:
        model = AutoModelForTokenClassification.from_pretrained(
            path, num_labels=len(tag_names), id2label=id2label, label2id={v: k for k, v in id2label.items()},
            ignore_mismatched_sizes=True)
    finally:
        hf_logging.set_verbosity(level)
    return model, tok


def load_trained_tagger(folder: str | Path, trainable: bool = False) -> tuple[Any, Any]:
    """A tagger saved by a rewardtune trainer: full weights, or a LoRA adapter over its base encoder (frozen unless
    `trainable`: a run that starts from it trains the same adapter)."""
    folder = Path(folder)
    meta = tagger_meta(folder)
    if not (folder / "adapter_config.json").exists():
        return load_tagger(str(folder), meta["tag_names"])
    from peft import PeftModel

    base_name = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    base, _ = load_tagger(base_name, meta["tag_names"])
    tok = load_tokenizer(str(folder))
    return PeftModel.from_pretrained(base, folder, is_trainable=trainable), tok


def tagger_meta(folder: str | Path) -> dict[str, Any]:
    """A tagger checkpoint's rewardtune.json (tag set, max_length, constraints, columns)."""
    meta_file = Path(folder) / "rewardtune.json"
    if not meta_file.exists():
        raise ModelError(f"{folder} has no rewardtune.json; it is not a checkpoint written by rewardtune")
    meta = json.loads(meta_file.read_text())
    if meta.get("policy") != "tagger":
        raise ModelError(f"{folder} is not a tagger checkpoint (policy {meta.get('policy', 'classifier')!r})")
    return meta


def with_lora(model: Any, lora: Any) -> Any:
    """LoRA for a token classifier: the new head stays fully trainable (peft's TOKEN_CLS `modules_to_save`).
    peft's 'all-linear' would put an adapter on that head too, which it then refuses to also train whole; so
    'all-linear' is spelled out here as every linear layer's name but the head's."""
    if lora.r > 0 and lora.target_modules == "all-linear":
        from dataclasses import replace

        names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and not n.startswith("classifier")}
        lora = replace(lora, target_modules=",".join(sorted(names)))
    return apply_lora(model, lora, task_type="TOKEN_CLS")


def transitions(tag_names: Sequence[str], constrained: bool) -> Transitions | None:
    return bio_transitions(tag_names) if constrained else None


@torch.no_grad()
def predict_tags(model: Any, tok: Any, sentences: Sequence[Sequence[str]], tag_names: Sequence[str], max_length: int,
                 constrained: bool = True, batch_size: int = 64, device: Any = "cpu") -> list[list[str]]:
    """Each sentence's predicted tags, one per word (`O` for the words past `max_length`: see tagging.py)."""
    was_training, tr = model.training, transitions(tag_names, constrained)
    model.eval()
    encoded = encode_tagged(tok, sentences, max_length)
    order = batch_order([len(e.ids) for e in encoded], batch_size, 0, 0, shuffle=False, group_by_length=True,
                        mega=10**9)
    out: list[list[str]] = [[] for _ in sentences]
    for rows in order:
        batch = collate_tagged(encoded, None, rows, tok.pad_token_id or 0).to(device)
        best = policy.greedy(policy.word_logits(model, batch.model_inputs(), batch.first), batch.word_mask, tr)
        for i, seq in zip(rows, best.cpu().tolist()):
            aligned = [tag_names[t] for t in seq[:len(encoded[i].words)]]
            out[i] = word_tags(aligned, encoded[i], len(sentences[i]))
    model.train(was_training)
    return out


@dataclass
class TagReport:
    """One evaluation: flat metrics for metrics.jsonl, the printed report, and the predicted tags."""

    metrics: dict[str, float]
    text: str
    predictions: list[list[str]]


def evaluate_tagger(model: Any, tok: Any, ex: TaggedExamples, max_length: int, constrained: bool = True,
                    batch_size: int = 64, device: Any = "cpu") -> TagReport:
    pred = predict_tags(model, tok, ex.tokens, ex.tag_names, max_length, constrained, batch_size, device)
    metrics, text = entity_report(ex.tag_strings(), pred)
    return TagReport(metrics, text, pred)


def write_predictions(path: str | Path, ex: TaggedExamples, rep: TagReport) -> None:
    """One JSON line per sentence: its words, gold tags and predicted tags."""
    with open(path, "w", encoding="utf-8") as fh:
        for words, gold, pred in zip(ex.tokens, ex.tag_strings(), rep.predictions):
            fh.write(json.dumps({"tokens": words, "tags": gold, "prediction": pred}) + "\n")


def eval_tagger_command(args: Any) -> None:
    """`rewardtune eval CHECKPOINT --data FILE` for a tagger checkpoint: the columns default to the ones it was
    trained on (`--text-column`/`--label-column` name the words and tags columns when given)."""
    from .tagging import load_tagged

    meta = tagger_meta(args.checkpoint)
    words_col = meta.get("tokens_column", "tokens") if args.text_column == "text" else args.text_column
    tags_col = meta.get("tags_column", "tags") if args.label_column == "label" else args.label_column
    ex = load_tagged(args.data, words_col, tags_col, meta["tag_names"])
    model, tok = load_trained_tagger(args.checkpoint)
    rep = evaluate_tagger(model, tok, ex, args.max_length or meta.get("max_length", 128), meta.get("constrained", True))
    print(f"{args.checkpoint} on {ex.source} ({len(ex)} sentences)\n{rep.text}")
    if args.out:
        write_predictions(args.out, ex, rep)
        print(f"predictions written to {args.out}")
