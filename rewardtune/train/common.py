"""Named set-up steps shared by the classifier trainers (SFT and RL).

Each step is a plain function of the config so a user can replace one (say, `setup_model`)
without copying the training loop.
"""
from __future__ import annotations

import copy
import json
import math
import shutil
import types
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, NamedTuple

import torch

from ..batching import batch_order, encode, iterate
from ..config import ConfigError, DataSettings, ModelSettings, doc
from ..data import Examples, load_examples, split
from ..eval import Report, evaluate_classifier, format_confusion, predict, report
from ..dropout import use_fast_dropout
from ..models import apply_lora, load_classifier
from ..collectives import over_shares
from ..run import RunContext


@dataclass(frozen=True)
class OptimSettings:
    """Optimiser, schedule and batching shared by classifier trainers."""

    epochs: int = doc(3, "passes over the training data")
    batch_size: int = doc(32, "examples per optimiser step, summed over all processes")
    lr: float = doc(5e-5, "peak learning rate (AdamW)")
    weight_decay: float = doc(0.01, "AdamW weight decay (not applied to biases and norms)")
    warmup_ratio: float = doc(0.06, "fraction of steps with linear warm-up, then linear decay to 0")
    max_grad_norm: float = doc(1.0, "gradient clipping norm (0 = off)")
    max_length: int = doc(128, "tokens per example, special tokens included")
    truncation: Literal["head", "tail", "head+tail"] = doc("head", "which tokens to keep of long texts")
    group_by_length: bool = doc(True, "batch similar lengths together (less padding)")
    eval_batch_size: int = doc(128, "examples per evaluation batch")
    best_metric: str = doc("accuracy", "metric that picks the best checkpoint (e.g. accuracy, macro_f1)")
    log_every: int = doc(20, "optimiser steps between metrics.jsonl rows")
    max_steps: int = doc(0, "stop after this many optimiser steps (0 = run all epochs)")
    mixed_precision: Literal["no", "bf16"] = doc("no", "bf16 autocast (CPUs with AVX512-BF16/AMX, GPUs)")
    freeze_embeddings: bool = doc(False, "keep the word-embedding matrix fixed (faster steps)")
    freeze_encoder: bool = doc(False, "train the classification head only: the encoder is a fixed feature extractor "
                                      "(eval mode, no backward pass through it: steps about 3x cheaper)")
    cache_encoder: bool = doc(False, "with freeze_encoder: each text's encoder output computed once and reused by "
                                     "every epoch (memory: texts x tokens x hidden size x 4 bytes)")
    fast_dropout: bool = doc(True, "on CPU, dropout masks from 16 random bits per element (same distribution, "
                                   "p rounded to 1/65536; rewardtune/dropout.py)")


@dataclass
class ClassifierData:
    train: Examples
    val: Examples
    test: Examples | None
    label_names: list[str]


def setup_data(data: DataSettings) -> ClassifierData:
    """Train/val(/test) examples with one shared label set."""
    def load(path: str, labels: Any) -> Examples:
        return load_examples(path, data.text_column, data.label_column, labels, data.split, data.skip_invalid,
                             config=data.config)

    full = load(data.path, data.labels)
    labels = data.labels or tuple(full.label_names)
    if data.val_path:
        train, val = full, load(data.val_path, labels)
    else:
        train, val = split_or_explain(full, data.val_fraction, data, "data.val_fraction")
    if 0 < data.max_examples < len(train):  # the first rows of a file sorted by label would be one class
        train = (train.subset(range(data.max_examples)) if data.subset == "first" else
                 split_or_explain(train, data.max_examples / len(train), data, "data.max_examples")[1])
    test = load(data.test_path, labels) if data.test_path else None
    return ClassifierData(train, val, test, list(full.label_names))


def split_or_explain(examples: Examples, fraction: float, data: DataSettings, key: str) -> tuple[Examples, Examples]:
    """`split`, with its failure (a fraction outside (0, 1); a stratified side left empty, e.g. fewer examples asked
    for than there are classes) said as a ConfigError naming the setting and the way out."""
    try:
        return split(examples, fraction, data.seed, data.stratify)
    except ValueError as e:
        value = getattr(data, key.split(".")[1])
        n_classes = len(set(examples.labels)) if examples.labels is not None else 1
        raise ConfigError(f"{key}={value} cannot split {data.path} ({len(examples)} examples, {n_classes} classes): "
                          f"{e}. Give {key} so that every side keeps at least one example per class "
                          "(stratified), or data.stratify=false, or data.val_path=FILE") from None


def check_best_metric(opt: OptimSettings, data: ClassifierData) -> None:
    """train.best_metric must be one the validation report carries (before any training, not after an epoch)."""
    labels = data.val.labels
    if not labels:  # nothing to validate on: the evaluation itself says so
        return
    names = report(torch.eye(len(data.label_names))[labels], labels, data.label_names).metrics  # one-hot: instant
    if opt.best_metric not in names:
        raise ConfigError(f"train.best_metric={opt.best_metric!r} is not in the validation report; choose one of: "
                          f"{', '.join(names)}")


def setup_model(model: ModelSettings, label_names: list[str], opt: OptimSettings | None = None) -> tuple[Any, Any]:
    """A sequence classifier over `label_names` (from an encoder or an earlier checkpoint), with LoRA if asked."""
    net, tok = load_classifier(model.name, len(label_names), dict(enumerate(label_names)))
    add_tokens(net, tok, model.add_tokens)
    if opt is not None and opt.freeze_embeddings:
        # The word embeddings are half of MiniLM's weights: a dense gradient and an AdamW update
        # for 30k rows of which a batch touches a few hundred. Position/type embeddings stay trainable.
        net.get_input_embeddings().weight.requires_grad_(False)
    if opt is not None and opt.fast_dropout:
        use_fast_dropout(net)
    if opt is not None:
        apply_freeze(net, opt, model.lora.r)
    return apply_lora(net, model.lora), tok


def add_tokens(net: Any, tok: Any, texts: tuple) -> None:
    """Make each text one special token (entity markers must not split into '<', 'e', '##1', '>'); the new embedding
    rows start as transformers initialises them. A checkpoint that already has them is left as it is."""
    if texts and tok.add_tokens([str(t) for t in texts], special_tokens=True):
        net.resize_token_embeddings(len(tok))


def apply_freeze(net: Any, opt: OptimSettings, lora_r: int = 0) -> None:
    """`train.freeze_encoder` and `train.cache_encoder`, checked."""
    if opt.cache_encoder and not opt.freeze_encoder:
        raise ConfigError("train.cache_encoder=true needs train.freeze_encoder=true (a trained encoder's outputs change)")
    if opt.freeze_encoder:
        freeze_encoder(net, lora_r, opt.cache_encoder)


def freeze_encoder(net: Any, lora_r: int = 0, cache: bool = False) -> None:
    """Only the head trains: the encoder (`net.base_model`: embeddings, layers, pooler) gets no gradient and stays in
    eval mode, so every epoch sees the same features (a linear probe, on a frozen MiniLM) and its forward pass keeps
    no activations for a backward pass."""
    if lora_r > 0:
        raise ConfigError("train.freeze_encoder=true trains the head alone, but LoRA (model.lora.r > 0, or a LoRA "
                          "checkpoint to go on from) trains adapters in the encoder: set model.lora.r=0 or "
                          "train.freeze_encoder=false")
    base = net.base_model
    if base is net:
        raise ConfigError(f"train.freeze_encoder: {type(net).__name__} has no separate encoder and head")
    base.requires_grad_(False)
    # model.train() (every epoch) leaves the encoder in eval mode: dropout off, also in modules swapped in later
    # (use_fast_dropout's), whose own mode is set by the next train()/eval()
    base.train = types.MethodType(lambda self, mode=True: torch.nn.Module.train(self, False), base)
    base.eval()
    if cache:
        base.forward = cached_forward(base.forward)


def cached_forward(forward: Callable[..., Any]) -> Callable[..., Any]:
    """A frozen encoder's forward that computes each row once, alone and unpadded (the same numbers whichever batch
    the row comes in, so a resumed run is bit-identical), and then reuses it: after the first epoch a step costs the
    head alone. Rows are told apart by their unpadded token (and token-type) ids; padded positions read zeros."""
    store: dict[tuple[bytes, bytes], Any] = {}

    def row(ids: torch.Tensor, types_: torch.Tensor | None) -> Any:
        key = (ids.cpu().numpy().tobytes(), b"" if types_ is None else types_.cpu().numpy().tobytes())
        if key not in store:
            extra = {} if types_ is None else {"token_type_ids": types_[None]}
            with torch.no_grad():
                store[key] = forward(input_ids=ids[None], attention_mask=torch.ones_like(ids)[None], **extra,
                                     return_dict=True)
        return store[key]

    def cached(input_ids: Any = None, attention_mask: Any = None, token_type_ids: Any = None, **kwargs: Any) -> Any:
        if input_ids is None or any(kwargs.get(k) is not None for k in ("inputs_embeds", "position_ids")) \
                or any(kwargs.get(k) for k in ("output_attentions", "output_hidden_states")):
            return forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **kwargs)
        mask = (torch.ones_like(input_ids) if attention_mask is None else attention_mask).bool()  # (B, T)
        outs = [row(input_ids[i][mask[i]], None if token_type_ids is None else token_type_ids[i][mask[i]])
                for i in range(len(input_ids))]
        first = outs[0].last_hidden_state  # (1, t, H)
        hidden = first.new_zeros(*input_ids.shape, first.shape[-1])  # (B, T, H)
        for i, o in enumerate(outs):
            hidden[i][mask[i]] = o.last_hidden_state[0]
        pooled = None if outs[0].get("pooler_output") is None else torch.cat([o.pooler_output for o in outs])  # (B, H)
        result = type(outs[0])(last_hidden_state=hidden, pooler_output=pooled) if pooled is not None else \
            type(outs[0])(last_hidden_state=hidden)
        return result if kwargs.get("return_dict", True) else result.to_tuple()
    return cached


def accelerator_kwargs(opt: OptimSettings) -> dict[str, Any]:
    return {"mixed_precision": opt.mixed_precision}


def setup_optimizer(model: Any, opt: OptimSettings, total_steps: int) -> tuple[Any, Any]:
    """AdamW (no decay on biases/norms) and linear warm-up + linear decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:  # the fused kernel does the whole update in one pass (CPU and GPU since torch 2.4)
        optim = torch.optim.AdamW(groups, lr=opt.lr, fused=True)
    except (RuntimeError, TypeError):
        optim = torch.optim.AdamW(groups, lr=opt.lr)
    warmup = int(total_steps * opt.warmup_ratio)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
    return optim, torch.optim.lr_scheduler.LambdaLR(optim, schedule)


def steps_per_epoch(n: int, opt: OptimSettings) -> int:
    return math.ceil(n / opt.batch_size)


def epoch_batches(encoded: list[list[int]], labels: list[int], opt: OptimSettings, seed: int, epoch: int,
                  run: RunContext, pad_id: int, start: int = 0):
    """This process's share of each global batch: rows rank::world of it.

    The global batch order depends only on (seed, epoch), so N processes × batch b see the same
    examples per step as 1 process × batch N·b, and DDP's gradient averaging gives the same update.
    Each batch's `weight` is world·local/global rows: the trainer multiplies its batch-mean loss by it,
    so DDP's mean over processes is the global batch's mean even when a batch does not split evenly
    (a last batch of 5 rows on 2 processes). A process whose share is empty gets one row with weight
    0, so that every process runs the same number of steps (DDP's collectives must pair up, or the
    process group hangs). `start` skips the batches trained on before a resumption.
    """
    order = batch_order([len(e) for e in encoded], opt.batch_size, seed, epoch, True, opt.group_by_length)
    for _, shard, weight in shares(order[start:], run.accelerator.process_index, run.accelerator.num_processes):
        batch = next(iterate(encoded, labels, [shard], pad_id))
        batch.weight = weight
        yield batch


class Share(NamedTuple):
    """A global batch's rows, this process's rows of it, and its weight world·local/global (0: a filler share)."""

    rows: list[int]
    shard: list[int]
    weight: float


def shares(order: list[list[int]], rank: int, world: int) -> Iterator[Share]:
    """For each global batch: (its rows, this process's rows rank::world of them, the weight world·local/global).
    A process whose share is empty gets the batch's first row with weight 0 (see `epoch_batches`)."""
    for b in order:
        shard = b[rank::world]
        yield Share(b, shard or b[:1], world * len(shard) / len(b))


def encode_examples(tok: Any, ex: Examples, opt: OptimSettings) -> list[list[int]]:
    return encode(tok, ex.texts, opt.max_length, opt.truncation)


def classification_report(run: RunContext, model: Any, tok: Any, ex: Examples, label_names: list[str],
             opt: OptimSettings) -> Report | None:
    """Classification report on `ex` for the main process (None on the others; each predicts a share: see
    `over_shares`)."""
    net, device = run.accelerator.unwrap_model(model), run.accelerator.device
    probs = over_shares(run, len(ex.texts), lambda rows: predict(
        net, tok, ex.texts[rows], opt.max_length, opt.truncation, opt.eval_batch_size, device))  # (N, A)
    return None if probs is None else report(probs, ex.labels, label_names)


def save_classifier(run: RunContext, model: Any, tok: Any, folder: Path, meta: dict[str, Any]) -> None:
    """Weights (safetensors; the adapter only with LoRA), tokenizer and a small JSON, written atomically."""
    if not run.is_main:
        return
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    net = run.accelerator.unwrap_model(model)
    net.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "rewardtune.json").write_text(json.dumps(meta, indent=2))
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def report_and_keep_best(run: RunContext, model: Any, tok: Any, data: ClassifierData, opt: OptimSettings,
                         step: int, epoch: int, best: float | None, meta: dict[str, Any]) -> float | None:
    """Evaluate on val, log and print the report, save `checkpoints/best` if the metric improved."""
    rep = classification_report(run, model, tok, data.val, data.label_names, opt)  # on every process: each predicts a share
    if rep is not None:
        score = rep.metrics.get(opt.best_metric)
        if score is None:
            raise KeyError(f"best_metric {opt.best_metric!r} is not reported; choose one of: {', '.join(rep.metrics)}")
        run.log(step, epoch=epoch, split="val", **rep.metrics, confusion=rep.confusion)  # rows gold, columns predicted
        run.print(f"\nepoch {epoch} step {step}: validation ({len(data.val)} examples)\n{rep.text}")
        best = keep_if_best(run, model, tok, score, best, opt.best_metric, step, epoch, meta)
    run.accelerator.wait_for_everyone()
    return best


def keep_if_best(run: RunContext, model: Any, tok: Any, score: float, best: float | None, metric: str, step: int,
                 epoch: int, meta: dict[str, Any]) -> float | None:
    """Save `checkpoints/best` when `score` beats `best` (larger is better); the best so far."""
    if best is not None and score <= best:
        return best
    save_classifier(run, model, tok, run.checkpoints / "best", {**meta, "step": step, "epoch": epoch, metric: score})
    run.print(f"new best {metric} = {score:.4f}: saved {run.checkpoints / 'best'}")
    return score


def final_test(run: RunContext, data: ClassifierData, opt: OptimSettings, step: int) -> Report | None:
    """Evaluate the best checkpoint on the test split, if one was given."""
    if data.test is None or not run.is_main:
        return None
    from ..models import load_trained_classifier

    model, tok = load_trained_classifier(run.checkpoints / "best")
    model.to(run.accelerator.device)
    rep = evaluate_classifier(model, tok, data.test.texts, data.test.labels, data.label_names, opt.max_length,
                              opt.truncation, opt.eval_batch_size, run.accelerator.device)
    run.log(step, split="test", **rep.metrics, confusion=rep.confusion)
    run.print(f"\ntest ({len(data.test)} examples), best checkpoint\n{rep.text}\n{format_confusion(rep.confusion, data.label_names)}")
    return rep


def setup_reference(model: Any, rl: Any, device: Any = None) -> Callable[[], Any]:
    """A context factory yielding the reference (initial) policy for the KL term: nothing when
    `rl.kl_coef` is 0; with LoRA the same model with its adapter disabled (no second copy in memory);
    with full fine-tuning a frozen copy, placed on `device` (the accelerator's: the copy is made before
    `prepare` moves the policy, and is not prepared itself). Shared by the classifier and the causal-LM loops."""
    if rl.kl_coef == 0:
        return nullcontext
    if hasattr(model, "disable_adapter"):
        return model.disable_adapter
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    if device is not None:
        frozen.to(device)

    class _Frozen:
        def __enter__(self) -> Any:
            return frozen

        def __exit__(self, *exc: Any) -> None:
            return None
    return _Frozen
