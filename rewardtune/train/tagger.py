"""Token tagging (NER, slot filling): the settings and set-up steps shared by `sft policy=tagger` and
`rl policy=tagger`, and the supervised trainer (cross-entropy over each word's first sub-token).

The tagger is a classifier per word, so the classifier machinery is reused as it is: the epoch loop with exact
resumption (loop.py), the optimiser and schedule, LoRA, the reference policy and the checkpoint writer
(common.py). What differs is named here: the data (words and tags, tagging.py), the model (a token-classification
head, eval_tagger.py), the batches (aligned words) and the evaluation (seqeval's entity report).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..batching import batch_order
from ..checkpoint import CheckpointSettings
from ..config import REPORT_TO_DOC, ConfigError, ModelSettings, doc, nested
from ..dropout import use_fast_dropout
from ..eval_tagger import evaluate_tagger, load_tagger, load_trained_tagger, with_lora
from ..policies import tagger as policy
from ..rewards.spans import entity_report
from ..run import RunContext, discard_failed_start, ends_trackers, start_run
from ..tagging import Encoded, TaggedExamples, collate_tagged, encode_tagged, load_tagged
from .common import (OptimSettings, accelerator_kwargs, apply_freeze, keep_if_best, setup_optimizer, shares,
                     steps_per_epoch)
from .loop import LoopResult, train_epochs


@dataclass(frozen=True)
class TaggerDataSettings:
    """Where tagged sentences come from: rows with a list of words and one BIO tag per word."""

    path: str = doc("", "training file (jsonl[.gz], csv, parquet) or hub name, e.g. "
                        "../shared/data/ner/wikiann-en/train.jsonl.gz")
    val_path: str = doc("", "validation file; empty = carve val_fraction from `path`")
    test_path: str = doc("", "optional test file, evaluated once at the end with the best checkpoint")
    tokens_column: str = doc("tokens", "column holding each sentence's words (a list of strings)")
    tags_column: str = doc("tags", "column holding one IOB2 tag per word (O, B-TYPE, I-TYPE)")
    labels: tuple = doc((), "the tag set in order; empty = the training file's tags (O first, then by type)")
    skip_invalid: bool = doc(False, "skip bad rows (counted and logged) instead of failing")
    val_fraction: float = doc(0.1, "fraction held out when val_path is empty")
    max_examples: int = doc(0, "train on a seeded random subset of this many sentences (0 = all)")
    max_val_examples: int = doc(0, "validate on a seeded random subset of this many sentences (0 = all)")
    seed: int = doc(0, "seed of the split and the subsets")


def tagger_optim() -> OptimSettings:
    return OptimSettings(best_metric="f1", lr=5e-5, max_length=128)


@dataclass(frozen=True)
class TaggerSFTConfig:
    """`rewardtune sft policy=tagger`: token cross-entropy on each word's first sub-token."""

    model: ModelSettings = nested(ModelSettings, "encoder or tagger checkpoint to start from")
    data: TaggerDataSettings = nested(TaggerDataSettings, "tagged training / validation / test sentences")
    train: OptimSettings = nested(tagger_optim, "optimiser, schedule, batching (best_metric: f1, macro_f1, "
                                                "token_accuracy, f1/TYPE, ...)")
    ckpt: CheckpointSettings = nested(CheckpointSettings, "resumable checkpoints, resumption, stop/NaN handling")
    policy: Literal["tagger"] = doc("tagger", "what is trained (tagger: one BIO tag per word)")
    constrained: bool = doc(True, "BIO-consistent decoding: Viterbi over allowed transitions (I-X only after B-X/I-X)")
    runs_dir: str = doc("runs", "folder holding run folders")
    name: str = doc("sft-tagger", "run folder name")
    report_to: tuple = doc((), REPORT_TO_DOC)
    seed: int = doc(0, "global seed (initialisation, batch order)")


@dataclass
class TaggedData:
    train: TaggedExamples
    val: TaggedExamples
    test: TaggedExamples | None
    tag_names: list[str]


def seeded_indices(n: int, k: int, seed: int) -> list[int]:
    """k of range(n), drawn without replacement by `random.Random(seed)`, in file order."""
    return sorted(random.Random(seed).sample(range(n), k))


def _seeded_subset(ex: TaggedExamples, n: int, seed: int) -> TaggedExamples:
    return ex if not 0 < n < len(ex) else ex.subset(seeded_indices(len(ex), n, seed))


def setup_tagged_data(d: TaggerDataSettings) -> TaggedData:
    """Train/val(/test) sentences with one tag set (the training file's, or `labels`), checked before any model."""
    if not d.path:
        raise ConfigError("data.path is empty: give a file of tagged sentences, e.g. "
                          "data.path=../shared/data/ner/wikiann-en/train.jsonl.gz")

    def load(path: str, tags: Any) -> TaggedExamples:
        return load_tagged(path, d.tokens_column, d.tags_column, tags, d.skip_invalid)

    full = load(d.path, d.labels)
    names = full.tag_names
    if d.val_path:
        train, val = full, load(d.val_path, names)
    else:
        n_val = max(1, round(len(full) * d.val_fraction))
        val_idx = set(seeded_indices(len(full), n_val, d.seed))
        train = full.subset([i for i in range(len(full)) if i not in val_idx])
        val = full.subset(sorted(val_idx))
    test = load(d.test_path, names) if d.test_path else None
    return TaggedData(_seeded_subset(train, d.max_examples, d.seed), _seeded_subset(val, d.max_val_examples, d.seed),
                      test, names)


def check_tagger_metric(opt: OptimSettings, data: TaggedData) -> None:
    """train.best_metric must be one the entity report carries (checked on gold against itself: instant)."""
    gold = data.val.tag_strings()
    names = entity_report(gold, gold)[0]
    if opt.best_metric not in names:
        raise ConfigError(f"train.best_metric={opt.best_metric!r} is not in the tagger's validation report; choose "
                          f"one of: {', '.join(names)}")
    if opt.truncation != "head":
        raise ConfigError(f"train.truncation={opt.truncation!r}: a tagger keeps the head of a long sentence (its "
                          "words past max_length are tagged O); set train.truncation=head")


def setup_tagger_model(model: ModelSettings, tag_names: list[str], opt: OptimSettings) -> tuple[Any, Any]:
    """A token classifier over `tag_names` (from an encoder or a tagger checkpoint), with LoRA if asked."""
    net, tok = load_tagger(model.name, tag_names, trainable=True)
    if opt.freeze_embeddings:
        net.get_input_embeddings().weight.requires_grad_(False)
    if opt.fast_dropout:
        use_fast_dropout(net)
    apply_freeze(net, opt, model.lora.r + hasattr(net, "peft_config"))
    return (net if hasattr(net, "peft_config") else with_lora(net, model.lora)), tok


def total_steps(n: int, opt: OptimSettings) -> int:
    total = steps_per_epoch(n, opt) * opt.epochs
    return min(total, opt.max_steps) if opt.max_steps else total


def tag_batches(encoded: list[Encoded], gold: list[list[int]], opt: OptimSettings, seed: int, epoch: int,
                run: RunContext, pad_id: int, start: int = 0):
    """This process's share of each global batch, as `common.epoch_batches` lays them out (weights, fillers)."""
    order = batch_order([len(e.ids) for e in encoded], opt.batch_size, seed, epoch, True, opt.group_by_length)
    for _, shard, weight in shares(order[start:], run.accelerator.process_index, run.accelerator.num_processes):
        batch = collate_tagged(encoded, gold, shard, pad_id)
        batch.weight = weight
        yield batch


def tagger_meta(cfg: Any, data: TaggedData, trainer: str) -> dict[str, Any]:
    """What a tagger checkpoint's rewardtune.json says (eval_tagger.tagger_meta reads it back)."""
    return {"policy": "tagger", "tag_names": data.tag_names, "label_names": data.tag_names,
            "max_length": cfg.train.max_length, "truncation": "head", "constrained": cfg.constrained,
            "tokens_column": cfg.data.tokens_column, "tags_column": cfg.data.tags_column, "trainer": trainer}


def report_and_keep_best(run: RunContext, model: Any, tok: Any, data: TaggedData, cfg: Any, step: int, epoch: int,
                         best: float | None, meta: dict[str, Any]) -> float | None:
    """Entity report on val (main process), logged and printed; `checkpoints/best` when the metric improved."""
    opt = cfg.train
    if run.is_main:
        rep = evaluate_tagger(run.accelerator.unwrap_model(model), tok, data.val, opt.max_length, cfg.constrained,
                              opt.eval_batch_size, run.accelerator.device)
        score = rep.metrics[opt.best_metric]
        run.log(step, epoch=epoch, split="val", **rep.metrics)
        run.print(f"\nepoch {epoch} step {step}: validation ({len(data.val)} sentences)\n{rep.text}")
        best = keep_if_best(run, model, tok, score, best, opt.best_metric, step, epoch, meta)
    run.accelerator.wait_for_everyone()
    return best


def finish(run: RunContext, data: TaggedData, cfg: Any, res: LoopResult) -> dict[str, Any]:
    """The summary row and the best checkpoint's test report; a stopped run only says where it stopped."""
    if res.stopped:
        return {"stopped": True, "signal": res.signal, "run_dir": str(run.dir), "steps": res.step, "best": res.best}
    run.log(res.step, split="summary", train_s=res.train_s, train_examples_per_s=res.seen / max(res.train_s, 1e-9),
            best=res.best)
    test = None
    if data.test is not None and run.is_main:
        model, tok = load_trained_tagger(run.checkpoints / "best")
        rep = evaluate_tagger(model.to(run.accelerator.device), tok, data.test, cfg.train.max_length, cfg.constrained,
                              cfg.train.eval_batch_size, run.accelerator.device)
        run.log(res.step, split="test", **rep.metrics)
        run.print(f"\ntest ({len(data.test)} sentences), best checkpoint\n{rep.text}")
        test = rep.metrics
    return {"best": res.best, "run_dir": str(run.dir), "steps": res.step, "train_s": res.train_s, "test": test}


def token_cross_entropy(logits: torch.Tensor, gold: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the batch's real words of −log π_w(gold_w).  logits (b, W, A), gold (b, W), mask (b, W) → ()."""
    return F.cross_entropy(logits[mask].float(), gold[mask]) if mask.any() else logits.sum() * 0.0


@discard_failed_start
@ends_trackers
def train_sft_tagger(cfg: TaggerSFTConfig, show_progress: bool = True) -> dict[str, Any]:
    """Supervised tagger: returns the best validation score, the run folder and the test metrics."""
    data = setup_tagged_data(cfg.data)  # bad data or a bad best_metric fail before the run folder exists
    check_tagger_metric(cfg.train, data)
    run = start_run(cfg, cfg.name, cfg.runs_dir, cfg.seed, accelerator_kwargs(cfg.train))
    opt, acc = cfg.train, run.accelerator
    model, tok = setup_tagger_model(cfg.model, data.tag_names, opt)
    total = total_steps(len(data.train), opt)
    optim, sched = setup_optimizer(model, opt, total)
    model, optim, sched = acc.prepare(model, optim, sched)
    encoded = encode_tagged(tok, data.train.tokens, opt.max_length)
    meta = tagger_meta(cfg, data, "sft")
    run.print(f"sft (tagger): {len(data.train)} train / {len(data.val)} val sentences, tags {data.tag_names}, "
              f"{total} steps")

    def batch_loss(batch: Any) -> tuple[torch.Tensor, int, dict[str, Any], Any]:
        batch = batch.to(acc.device)
        logits = policy.word_logits(model, batch.model_inputs(), batch.first)  # (b, W, A)
        loss = token_cross_entropy(logits, batch.tags, batch.word_mask)
        acc.backward(loss * batch.weight)
        return loss, len(batch.index) * acc.num_processes, {}, batch.index

    res = train_epochs(
        run, cfg.ckpt, model, optim, sched, epochs=opt.epochs, total=total, max_grad_norm=opt.max_grad_norm,
        log_every=opt.log_every, desc="sft-tagger", show_progress=show_progress, batch_loss=batch_loss,
        batches=lambda epoch, start: tag_batches(encoded, data.train.tags, opt, cfg.seed, epoch, run,
                                                 tok.pad_token_id or 0, start),
        end_of_epoch=lambda step, epoch, best: report_and_keep_best(run, model, tok, data, cfg, step, epoch, best,
                                                                    meta))
    return finish(run, data, cfg, res)
