"""`rewardtune bandit train`: a classifier policy (action = label) learned from logged bandit feedback.

No interaction: every batch is logged rows (x_i, a_i, r_i, p_i), and the loss is an off-policy estimate of π_θ's
value, negated (algorithms/ope.py: clipped IPS, SNIPS, DR, BanditNet), picked by `bandit.estimator`. After each
epoch the greedy policy is valued off-policy on a held-out part of the log (`bandit.select`), which picks the best
checkpoint without a single label; a labelled `data.test_path` (a converted data set) gives its true accuracy.
The epoch loop, exact resumption and checkpoints are the classifier trainers' (train/loop.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from ..batching import encode
from ..algorithms.ope import OFF_POLICY_LOSSES, LoggedBatch
from ..bandit.direct import embed, fit_reward_table
from ..bandit.evaluate import TARGET_POLICIES, estimates, flat_metrics, off_policy_data, restrict
from ..bandit.log import BanditLog, LogColumns, load_log
from ..checkpoint import CheckpointSettings
from ..collectives import over_shares
from ..config import REPORT_TO_DOC, ConfigError, ModelSettings, doc, nested
from ..data import Examples, load_examples, normalize_label
from ..eval import evaluate_classifier, predict
from ..policies import classifier as policy
from ..run import RunContext, discard_failed_start, ends_trackers, start_run
from .common import (OptimSettings, accelerator_kwargs, epoch_batches, save_classifier, setup_model,
                     setup_optimizer)
from .loop import LoopResult, train_epochs
from .rl_classifier import total_steps


@dataclass(frozen=True)
class LogDataSettings:
    """The log to learn from, its fields, the validation part and an optional labelled test file."""

    path: str = doc("", "the log: jsonl/csv/parquet rows with a text, an action, a reward and a propensity")
    text_column: str = doc("text", "field holding the context text")
    action_column: str = doc("action", "field holding the logged action (a label name)")
    reward_column: str = doc("reward", "field holding the reward")
    propensity_column: str = doc("propensity", "field holding μ(a|x), the logging policy's probability of the action")
    candidates_column: str = doc("", "field holding each row's candidate actions ('' = every action)")
    actions: tuple = doc((), "the action set in order; empty = the starting checkpoint's labels, else the logged "
                             "actions, sorted")
    val_path: str = doc("", "validation log; empty = carve val_fraction from `path`")
    val_fraction: float = doc(0.1, "fraction of the log held out for off-policy model selection")
    seed: int = doc(0, "seed of the train/validation split")
    test_path: str = doc("", "optional labelled file (text, label): the best checkpoint's true accuracy at the end")
    test_label_column: str = doc("label", "label field of test_path")
    test_each_epoch: bool = doc(False, "also log test_path's accuracy after every epoch (split=test_epoch): a "
                                       "diagnostic of the selection rule, never used to pick the checkpoint")


@dataclass(frozen=True)
class BanditSettings:
    """The off-policy objective and how the best checkpoint is picked."""

    estimator: Literal["ips", "snips", "dr", "banditnet"] = doc("banditnet", "off-policy objective")
    clip: float = doc(0.0, "M of the clipped weight min(π/μ, M); 0 = no clipping")
    baseline: float | None = doc(None, "BanditNet's λ, subtracted from every reward; null = the log's mean reward")
    dr_l2: float = doc(1.0, "ridge penalty of DR's reward model (bandit/direct.py)")
    select: Literal["ips", "snips", "dr"] = doc("ips", "estimate of the greedy policy on the validation log that "
                                                       "picks the best checkpoint (ips: unbiased; docs/bandit.md)")
    level: float = doc(0.95, "confidence level of the logged intervals")


@dataclass(frozen=True)
class BanditConfig:
    """`rewardtune bandit train`: learn a classifier policy from a bandit log."""

    model: ModelSettings = nested(ModelSettings, "encoder or `sft` checkpoint to start from")
    data: LogDataSettings = nested(LogDataSettings, "the log, its fields, validation and test data")
    train: OptimSettings = nested(OptimSettings, "optimiser, schedule, batching")
    bandit: BanditSettings = nested(BanditSettings, "off-policy objective, clipping, baseline, selection")
    ckpt: CheckpointSettings = nested(CheckpointSettings, "resumable checkpoints, resumption, stop/NaN handling")
    runs_dir: str = doc("runs", "folder holding run folders")
    name: str = doc("bandit", "run folder name")
    report_to: tuple = doc((), REPORT_TO_DOC)
    seed: int = doc(0, "global seed (initialisation, batch order)")


# Below this many validation rows per action, the greedy policy's estimate moves more from noise than from
# training (Banking77, 2.6 rows per action: the SNIPS-picked epoch was the worst; BENCHMARKS.md, issue 23).
MIN_VAL_ROWS_PER_ACTION = 10


def thin_validation_warning(rows: int, actions: int, select: str) -> str:
    return (f"warning: the validation log has {rows} rows for {actions} actions ({rows / actions:.1f} per action, "
            f"fewer than {MIN_VAL_ROWS_PER_ACTION}): the checkpoint it picks may be noise. Give a larger "
            "data.val_fraction or a data.val_path log"
            + ("" if select == "ips" else ", or bandit.select=ips (unbiased; SNIPS can be far off here)"))


# SNIPS normalises by the batch's importance weights, so a batch's objective rises when the policy moves away from
# the logged actions altogether (propensity overfitting): on Banking77 it fell below 0.02 accuracy from epoch 3
# (BENCHMARKS.md, issue 23). As an estimate for evaluation (bandit.select, `ope`) it is fine.
SNIPS_OBJECTIVE_WARNING = ("warning: bandit.estimator=snips as a training objective can collapse (propensity "
                           "overfitting: on Banking77 it fell below 0.02 accuracy); train with banditnet (the default) "
                           "or ips, and keep snips for evaluation")


@dataclass
class Logs:
    train: BanditLog
    val: BanditLog
    test: Examples | None


def start_actions(cfg: BanditConfig) -> tuple:
    """The action set in the policy head's order: `data.actions`, else the starting checkpoint's labels (a policy
    warm-started from the logging classifier keeps its head), else () (the logged actions, sorted)."""
    meta = Path(cfg.model.name) / "rewardtune.json"
    labels = tuple(json.loads(meta.read_text())["label_names"]) if meta.is_file() else ()
    given = tuple(str(normalize_label(a)) for a in cfg.data.actions)
    if labels and given and given != labels:
        raise ConfigError(f"data.actions {list(given)} differ from the labels of the checkpoint {cfg.model.name} "
                          f"({list(labels)}, in its head's order); give them in that order, or leave data.actions empty")
    return given or labels


def setup_logs(d: LogDataSettings, actions: tuple = ()) -> Logs:
    """Train/validation logs with one action set (`actions`, else the logged ones), and the labelled test file; all
    checked before any run folder."""
    if not d.path:
        raise ConfigError("give the log to learn from: data.path=FILE (rows of text, action, reward, propensity)")
    cols = LogColumns(d.text_column, d.action_column, d.reward_column, d.propensity_column, d.candidates_column)
    full = load_log(d.path, cols, actions)
    if d.val_path:
        train, val = full, load_log(d.val_path, cols, full.action_names)
    else:
        if not 0.0 < d.val_fraction < 1.0 or round(len(full) * d.val_fraction) < 1:
            raise ConfigError(f"data.val_fraction={d.val_fraction} of {len(full)} rows leaves no validation rows")
        order = torch.randperm(len(full), generator=torch.Generator().manual_seed(d.seed)).tolist()
        cut = round(len(full) * d.val_fraction)
        train, val = full.subset(sorted(order[cut:])), full.subset(sorted(order[:cut]))
    test = load_examples(d.test_path, d.text_column, d.test_label_column, full.action_names) if d.test_path else None
    return Logs(train, val, test)


def reward_tables(cfg: BanditConfig, model: Any, tok: Any, logs: Logs) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """DR's q̂ (N, A) on the training and validation rows, fitted on the training rows with the initial encoder's
    features (before any update: a resumed run refits the very same model); (None, None) when unused."""
    if "dr" not in (cfg.bandit.estimator, cfg.bandit.select):
        return None, None
    opt, n_actions = cfg.train, len(logs.train.action_names)
    feats = embed(model, tok, logs.train.texts, opt.max_length, opt.eval_batch_size)
    table = fit_reward_table(feats, logs.train.actions, logs.train.rewards, n_actions, cfg.bandit.dr_l2)
    val = embed(model, tok, logs.val.texts, opt.max_length, opt.eval_batch_size)
    return table.predict(feats), table.predict(val)


def batch_loss_fn(cfg: BanditConfig, run: RunContext, model: Any, log: BanditLog,
                  q_hat: torch.Tensor | None) -> Callable[[Any], tuple[torch.Tensor, int, dict[str, Any], Any]]:
    """One batch of logged rows: π_θ's logits (candidates only) → the off-policy loss → backward."""
    loss_fn, acc = OFF_POLICY_LOSSES[cfg.bandit.estimator], run.accelerator
    baseline = cfg.bandit.baseline if cfg.bandit.baseline is not None else log.rewards.mean().item()

    def batch_loss(batch: Any) -> tuple[torch.Tensor, int, dict[str, Any], Any]:
        batch = batch.to(acc.device)
        idx = batch.index.cpu()
        logits = policy.label_logits(model, batch.model_inputs())  # (b, A)
        if log.candidates is not None:
            logits = logits.masked_fill(~log.candidates[idx].to(logits.device), float("-inf"))
        on = lambda t: t[idx].to(acc.device, torch.float32)  # noqa: E731
        b = LoggedBatch(logits, batch.labels, on(log.rewards), on(log.propensities),
                        None if q_hat is None else on(q_hat))
        loss, st = loss_fn(b, cfg.bandit.clip, baseline)
        acc.backward(loss * batch.weight)
        return loss, len(idx) * acc.num_processes, {"value": st.value, "weight_mean": st.weight_mean}, idx
    return batch_loss


def validate(cfg: BanditConfig, run: RunContext, model: Any, tok: Any, val: BanditLog,
             q_val: torch.Tensor | None) -> dict[str, float] | None:
    """The greedy policy's off-policy estimates on the validation log (main process; None on the others)."""
    opt, net = cfg.train, run.accelerator.unwrap_model(model)
    probs = over_shares(run, len(val), lambda rows: predict(net, tok, val.texts[rows], opt.max_length, opt.truncation,
                                                            opt.eval_batch_size, run.accelerator.device))
    if probs is None:
        return None
    pi = TARGET_POLICIES["greedy"](restrict(probs.double(), val.candidates))  # (N, A)
    names = ["ips", "snips"] + (["dr"] if q_val is not None else [])
    return flat_metrics(estimates(off_policy_data(val, pi, q_val, 0.0), names, cfg.bandit.level))


def keep_best(cfg: BanditConfig, run: RunContext, model: Any, tok: Any, logs: Logs, q_val: torch.Tensor | None,
              meta: dict[str, Any]) -> Callable[[int, int, float | None], float | None]:
    """End of an epoch: log the validation estimates, save `checkpoints/best` when `bandit.select` improved."""
    def end_of_epoch(step: int, epoch: int, best: float | None) -> float | None:
        row = validate(cfg, run, model, tok, logs.val, q_val)
        if row is not None:
            score = row[cfg.bandit.select]
            run.log(step, epoch=epoch, split="val", **row)
            run.print(f"\nepoch {epoch} step {step}: greedy policy on the validation log ({len(logs.val)} rows): "
                      + ", ".join(f"{k} {row[k]:.4f}" for k in ("ips", "snips", "dr") if k in row))
            if cfg.data.test_each_epoch and logs.test is not None:
                rep = test_report(cfg, run, run.accelerator.unwrap_model(model), tok, logs.test)
                run.log(step, epoch=epoch, split="test_epoch", **rep.metrics)
                run.print(f"epoch {epoch}: accuracy on the labelled test file {rep.metrics['accuracy']:.4f} "
                          "(diagnostic only)")
            if best is None or score > best:
                best = score
                save_classifier(run, model, tok, run.checkpoints / "best", {**meta, "step": step, "epoch": epoch,
                                                                             cfg.bandit.select: score})
        run.accelerator.wait_for_everyone()
        return best
    return end_of_epoch


def test_report(cfg: BanditConfig, run: RunContext, model: Any, tok: Any, test: Examples) -> Any:
    """The classifier's report on the labelled test file."""
    return evaluate_classifier(model.to(run.accelerator.device), tok, test.texts, test.labels, test.label_names,
                               cfg.train.max_length, cfg.train.truncation, cfg.train.eval_batch_size,
                               run.accelerator.device)


def final_test(cfg: BanditConfig, run: RunContext, test: Examples | None, step: int) -> dict[str, float] | None:
    """The best checkpoint's accuracy on the labelled test file (the truth the estimates are checked against)."""
    if test is None or not run.is_main or not (run.checkpoints / "best").exists():
        return None
    from ..models import load_trained_classifier

    model, tok = load_trained_classifier(run.checkpoints / "best")
    rep = test_report(cfg, run, model, tok, test)
    run.log(step, split="test", **rep.metrics)
    run.print(f"\ntest ({len(test)} labelled examples), best checkpoint\n{rep.text}")
    return rep.metrics


@discard_failed_start
@ends_trackers
def train_bandit(cfg: BanditConfig, show_progress: bool = True) -> dict[str, Any]:
    """Learn from the log; returns the best validation estimate, the run folder and the test metrics."""
    logs = setup_logs(cfg.data, start_actions(cfg))  # a bad row fails before the run folder exists
    run = start_run(cfg, cfg.name, cfg.runs_dir, cfg.seed, accelerator_kwargs(cfg.train))
    opt, names = cfg.train, logs.train.action_names
    model, tok = setup_model(cfg.model, names, opt)
    q_train, q_val = reward_tables(cfg, model, tok, logs)
    total = total_steps(len(logs.train), opt)
    optim, sched = setup_optimizer(model, opt, total)
    model, optim, sched = run.accelerator.prepare(model, optim, sched)
    encoded = encode(tok, logs.train.texts, opt.max_length, opt.truncation)
    meta = {"label_names": names, "max_length": opt.max_length, "truncation": opt.truncation,
            "trainer": f"bandit-{cfg.bandit.estimator}"}
    run.print(f"bandit ({cfg.bandit.estimator}): {len(logs.train)} logged rows / {len(logs.val)} validation, "
              f"{len(names)} actions, mean logged reward {logs.train.rewards.mean():.4f}, {total} steps")
    if len(logs.val) < MIN_VAL_ROWS_PER_ACTION * len(names):
        run.print(thin_validation_warning(len(logs.val), len(names), cfg.bandit.select))
    if cfg.bandit.estimator == "snips":
        run.print(SNIPS_OBJECTIVE_WARNING)
    res = train_epochs(
        run, cfg.ckpt, model, optim, sched, epochs=opt.epochs, total=total, max_grad_norm=opt.max_grad_norm,
        log_every=opt.log_every, desc=f"bandit-{cfg.bandit.estimator}", show_progress=show_progress,
        batch_loss=batch_loss_fn(cfg, run, model, logs.train, q_train),
        batches=lambda epoch, start: epoch_batches(encoded, logs.train.actions.tolist(), opt, cfg.seed, epoch, run,
                                                   tok.pad_token_id, start),
        end_of_epoch=keep_best(cfg, run, model, tok, logs, q_val, meta))
    return finish(cfg, run, logs, res)


def finish(cfg: BanditConfig, run: RunContext, logs: Logs, res: LoopResult) -> dict[str, Any]:
    """The summary row and the test accuracy; a stopped run only says where it stopped."""
    if res.stopped:
        return {"stopped": True, "signal": res.signal, "run_dir": str(run.dir), "steps": res.step, "best": res.best}
    run.log(res.step, split="summary", train_s=res.train_s, train_examples_per_s=res.seen / max(res.train_s, 1e-9),
            best=res.best)
    test = final_test(cfg, run, logs.test, res.step)
    return {"best": res.best, "select": cfg.bandit.select, "run_dir": str(run.dir), "steps": res.step,
            "train_s": res.train_s, "test": test}
