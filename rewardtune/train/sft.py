"""Supervised baseline: cross-entropy fine-tuning of a sequence classifier.

The loop reads top to bottom: batches → loss → backward → clip → step; after each epoch,
the validation report and the best checkpoint; at the end, the test report.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from ..checkpoint import CheckpointSettings
from ..config import REPORT_TO_DOC, DataSettings, ModelSettings, doc, nested
from ..models import check_model
from ..run import discard_failed_start, ends_trackers, start_run
from .common import (OptimSettings, accelerator_kwargs, check_best_metric, encode_examples, epoch_batches, final_test, report_and_keep_best, setup_data,
                     setup_model, setup_optimizer, steps_per_epoch)
from .loop import train_epochs


@dataclass(frozen=True)
class SFTConfig:
    """`rewardtune sft`: supervised fine-tuning of a classifier."""

    model: ModelSettings = nested(ModelSettings, "encoder or checkpoint to start from")
    data: DataSettings = nested(DataSettings, "training / validation / test data")
    train: OptimSettings = nested(OptimSettings, "optimiser, schedule, batching")
    ckpt: CheckpointSettings = nested(CheckpointSettings, "resumable checkpoints, resumption, stop/NaN handling")
    policy: Literal["classifier"] = doc("classifier", "what is trained (classifier: a label head; causal-lm: "
                                                      "`rewardtune sft policy=causal-lm`, train/sft_lm.py)")
    runs_dir: str = doc("runs", "folder holding run folders")
    name: str = doc("sft", "run folder name")
    report_to: tuple = doc((), REPORT_TO_DOC)
    seed: int = doc(0, "global seed (initialisation, batch order)")


@discard_failed_start
@ends_trackers
def train_sft(cfg: SFTConfig, show_progress: bool = True) -> dict[str, Any]:
    """Run SFT; returns the best validation score, last metrics and the run folder."""
    data = setup_data(cfg.data)  # bad data, a bad best_metric or model fail before the run folder exists
    check_best_metric(cfg.train, data)
    check_model(cfg.model.name)
    run = start_run(cfg, cfg.name, cfg.runs_dir, cfg.seed, accelerator_kwargs(cfg.train))
    model, tok = setup_model(cfg.model, data.label_names, cfg.train)
    opt = cfg.train
    total = steps_per_epoch(len(data.train), opt) * opt.epochs
    total = min(total, opt.max_steps) if opt.max_steps else total
    optim, sched = setup_optimizer(model, opt, total)
    model, optim, sched = run.accelerator.prepare(model, optim, sched)
    encoded = encode_examples(tok, data.train, opt)
    meta = {"label_names": data.label_names, "max_length": opt.max_length, "truncation": opt.truncation,
            "trainer": "sft"}
    run.print(f"sft: {len(data.train)} train / {len(data.val)} val, labels {data.label_names}, {total} steps, "
              f"{run.accelerator.num_processes} process(es)")

    def batch_loss(batch: Any) -> tuple[torch.Tensor, int, dict[str, Any], Any]:
        batch = batch.to(run.accelerator.device)
        logits = model(**batch.model_inputs()).logits  # (b, A)
        loss = F.cross_entropy(logits.float(), batch.labels)
        run.accelerator.backward(loss * batch.weight)
        return loss, len(batch.index) * run.accelerator.num_processes, {}, batch.index

    res = train_epochs(
        run, cfg.ckpt, model, optim, sched, epochs=opt.epochs, total=total, max_grad_norm=opt.max_grad_norm,
        log_every=opt.log_every, desc="sft", show_progress=show_progress, batch_loss=batch_loss,
        batches=lambda epoch, start: epoch_batches(encoded, data.train.labels, opt, cfg.seed, epoch, run,
                                                   tok.pad_token_id, start),
        end_of_epoch=lambda step, epoch, best: report_and_keep_best(run, model, tok, data, opt, step, epoch, best, meta))
    if res.stopped:
        return {"stopped": True, "signal": res.signal, "run_dir": str(run.dir), "steps": res.step, "best": res.best}
    step, best, train_s = res.step, res.best, res.train_s
    run.log(step, split="summary", train_s=train_s, train_examples_per_s=res.seen / max(train_s, 1e-9), best=best)
    test = final_test(run, data, opt, step)
    return {"best": best, "run_dir": str(run.dir), "steps": step, "train_s": train_s,
            "test": test.metrics if test else None}
