"""`rewardtune rm train`: pointwise (labels → P(positive)), regression (scores) and pairwise (Bradley–Terry).

Pointwise training *is* supervised classification, so it reuses `train_sft` and only marks the
saved folder as a reward model. Regression and pairwise share one short loop over a one-output
head; what differs (row loading, loss, validation metric) is a `ScalarTask` picked once by mode.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from ..algorithms import bradley_terry_loss, centring_penalty
from ..batching import batch_order
from ..checkpoint import CheckpointSettings
from ..config import REPORT_TO_DOC, DataSettings, ModelSettings, doc, nested
from ..data import DataError, Table, read_table, split
from ..collectives import over_shares
from ..models import check_model
from ..run import RunContext, discard_failed_start, ends_trackers, start_run
from .common import (OptimSettings, accelerator_kwargs, save_classifier, setup_model, setup_optimizer,
                     shares)
from .loop import train_epochs


@dataclass(frozen=True)
class RMSettings:
    """What kind of reward model and how its loss is shaped."""

    mode: Literal["pointwise", "regression", "pairwise"] = doc(
        "pointwise", "labels → classifier; numeric scores → scalar head (MSE); or chosen/rejected pairs")
    score_column: str = doc("score", "regression: column holding each text's numeric score")
    positive_label: str = doc("", "pointwise: the label whose probability is the reward ('' = guess)")
    margin: float = doc(0.0, "pairwise: Bradley–Terry margin m")
    center_coef: float = doc(0.0, "pairwise: weight of mean(r)² keeping rewards centred at 0")
    chosen_column: str = doc("chosen", "pairwise: column of the preferred completion")
    rejected_column: str = doc("rejected", "pairwise: column of the other completion")
    truncation_side: Literal["left", "right"] = doc("right", "which end of long inputs is cut")


@dataclass(frozen=True)
class RMConfig:
    """`rewardtune rm train`."""

    model: ModelSettings = nested(ModelSettings, "encoder (or causal LM) to put a reward head on")
    data: DataSettings = nested(DataSettings, "labelled texts (pointwise) or prompt/chosen/rejected rows")
    train: OptimSettings = nested(OptimSettings, "optimiser, schedule, batching")
    rm: RMSettings = nested(RMSettings, "reward-model settings")
    ckpt: CheckpointSettings = nested(CheckpointSettings, "resumable checkpoints, resumption, stop/NaN handling")
    runs_dir: str = doc("runs", "folder holding run folders")
    name: str = doc("rm", "run folder name")
    report_to: tuple = doc((), REPORT_TO_DOC)
    seed: int = doc(0, "global seed")


@discard_failed_start
@ends_trackers
def train_reward_model(cfg: RMConfig, show_progress: bool = True) -> dict[str, Any]:
    """Train and save a reward model; its folder is `<run>/checkpoints/best`."""
    if cfg.rm.mode == "pointwise":
        return _pointwise(cfg, show_progress)
    return _scalar_head(cfg, show_progress)


def _pointwise(cfg: RMConfig, show_progress: bool) -> dict[str, Any]:
    from .sft import SFTConfig, train_sft

    out = train_sft(SFTConfig(model=cfg.model, data=cfg.data, train=cfg.train, ckpt=cfg.ckpt, runs_dir=cfg.runs_dir,
                              name=cfg.name, seed=cfg.seed, report_to=cfg.report_to), show_progress)
    from accelerate import PartialState

    meta_file, state = Path(out["run_dir"]) / "checkpoints" / "best" / "rewardtune.json", PartialState()
    if meta_file.exists() and state.is_main_process:  # one writer: another process could read it half-written
        meta = json.loads(meta_file.read_text())
        meta |= {"kind": "reward_model", "head": "classifier", "mode": "pointwise",
                 "positive_label": cfg.rm.positive_label or None}
        meta_file.write_text(json.dumps(meta, indent=2))
    state.wait_for_everyone()  # and no process returns before the file says what it holds
    return out


# ---------------------------------------------------------------- pairwise
@dataclass
class Pairs:
    prompts: list[str]
    chosen: list[str]
    rejected: list[str]

    def subset(self, idx: Any) -> "Pairs":
        return Pairs(*([getattr(self, f)[i] for i in idx] for f in ("prompts", "chosen", "rejected")))

    def __len__(self) -> int:
        return len(self.chosen)

    def lengths(self) -> list[int]:
        return [len(c) for c in self.chosen]


@dataclass
class Scored:
    prompts: list[str]
    texts: list[str]
    scores: list[float]

    def subset(self, idx: Any) -> "Scored":
        return Scored(*([getattr(self, f)[i] for i in idx] for f in ("prompts", "texts", "scores")))

    def __len__(self) -> int:
        return len(self.texts)

    def lengths(self) -> list[int]:
        return [len(t) for t in self.texts]


def load_pairs(table: Table, data: DataSettings, rm: RMSettings) -> Pairs:
    """Validate prompt/chosen/rejected rows; each bad row is named (file and line)."""
    cols = table.columns
    for c in (rm.chosen_column, rm.rejected_column):
        if c not in cols:
            raise DataError(f"{table.source}: no column {c!r}; the columns are: {', '.join(cols)}")
    pairs = Pairs([], [], [])
    for row, where in zip(table.rows, table.where):
        prompt = row.get(data.prompt_column) or ""
        ch, rj = row.get(rm.chosen_column), row.get(rm.rejected_column)
        for name, v in ((rm.chosen_column, ch), (rm.rejected_column, rj)):
            if not isinstance(v, str) or not v.strip():
                raise DataError(f"{where}: field {name!r}: expected non-empty text, got {v!r}")
        if ch.strip() == rj.strip():
            raise DataError(f"{where}: chosen and rejected are identical; a pair must differ")
        pairs.prompts.append(str(prompt))
        pairs.chosen.append(ch)
        pairs.rejected.append(rj)
    return pairs


def load_scored(table: Table, data: DataSettings, rm: RMSettings) -> Scored:
    """Validate text/score rows for regression; each bad row is named (file and line)."""
    for c in (data.text_column, rm.score_column):
        if c not in table.columns:
            raise DataError(f"{table.source}: no column {c!r}; the columns are: {', '.join(table.columns)}")
    out = Scored([], [], [])
    for row, where in zip(table.rows, table.where):
        text, score = row.get(data.text_column), row.get(rm.score_column)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: field {data.text_column!r}: expected non-empty text, got {text!r}")
        try:
            value = float(score)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value) or isinstance(score, bool):
            raise DataError(f"{where}: field {rm.score_column!r}: expected a finite number, got {score!r}")
        out.prompts.append(str(row.get(data.prompt_column) or ""))
        out.texts.append(text)
        out.scores.append(value)
    return out


def _scores(model: Any, tok: Any, prompts: list[str], texts: list[str], max_length: int, device: Any) -> torch.Tensor:
    """Scalar rewards (b,) for (prompt, text) pairs; the prompt is a text pair's first segment if any."""
    use_prompt = any(p for p in prompts)
    args = (prompts, texts) if use_prompt else (texts,)
    enc = tok(*args, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    return model(**enc).logits[:, 0].float()  # (b,)


def evaluate_pairs(model: Any, tok: Any, pairs: Pairs, max_length: int, device: Any, batch_size: int = 64) -> dict[str, float]:
    """Pairwise accuracy (chosen scored above rejected) and mean margin r_c - r_r."""
    return margin_metrics(pair_margins(model, tok, pairs, max_length, device, batch_size), pairs)


@torch.no_grad()
def pair_margins(model: Any, tok: Any, pairs: Pairs, max_length: int, device: Any, batch_size: int = 64) -> torch.Tensor:
    """r(chosen) − r(rejected) of each pair.  → (N,)"""
    was = model.training
    model.eval()
    diffs = []
    for s in range(0, len(pairs), batch_size):
        p = pairs.prompts[s:s + batch_size]
        diffs.append(_scores(model, tok, p, pairs.chosen[s:s + batch_size], max_length, device)
                     - _scores(model, tok, p, pairs.rejected[s:s + batch_size], max_length, device))
    model.train(was)
    return torch.cat(diffs).cpu() if diffs else torch.empty(0)


def margin_metrics(d: torch.Tensor, pairs: Pairs) -> dict[str, float]:
    """Pairwise accuracy and mean margin of the margins d (N,)."""
    return {"pairwise_accuracy": float((d > 0).float().mean()), "mean_margin": float(d.mean())}


def evaluate_scored(model: Any, tok: Any, rows: Scored, max_length: int, device: Any, batch_size: int = 64) -> dict[str, float]:
    """Pearson and Spearman correlation and MSE between predicted and true scores."""
    return score_metrics(predicted_scores(model, tok, rows, max_length, device, batch_size), rows)


@torch.no_grad()
def predicted_scores(model: Any, tok: Any, rows: Scored, max_length: int, device: Any, batch_size: int = 64) -> torch.Tensor:
    """The model's score of each row.  → (N,)"""
    was = model.training
    model.eval()
    pred = [_scores(model, tok, rows.prompts[s:s + batch_size], rows.texts[s:s + batch_size], max_length, device)
            for s in range(0, len(rows), batch_size)]
    model.train(was)
    return torch.cat(pred).cpu() if pred else torch.empty(0)


def score_metrics(pred: torch.Tensor, rows: Scored) -> dict[str, float]:
    """Pearson and Spearman correlation and MSE of predicted scores (N,) against the rows' true scores."""
    from scipy.stats import pearsonr, spearmanr

    y = torch.tensor(rows.scores)
    constant = bool(pred.std() == 0 or y.std() == 0)  # correlation undefined: report 0, not NaN
    return {"pearson": 0.0 if constant else float(pearsonr(pred, y)[0]),
            "spearman": 0.0 if constant else float(spearmanr(pred, y)[0]), "mse": float(((pred - y) ** 2).mean())}


@dataclass(frozen=True)
class ScalarTask:
    """How one scalar-head mode loads rows, computes its loss and is evaluated (picked once by mode)."""

    load: Callable[[Table, DataSettings, RMSettings], Any]
    loss: Callable[..., tuple[torch.Tensor, dict]]
    values: Callable[..., torch.Tensor]  # (model, tok, rows, max_length, device) → one number per row (N,)
    metrics: Callable[[torch.Tensor, Any], dict[str, float]]  # (those numbers, the rows) → validation metrics
    metric: str


def _scalar_head(cfg: RMConfig, show_progress: bool) -> dict[str, Any]:
    """Pairwise (Bradley–Terry) or regression (MSE) training of a one-output head; best kept by val metric."""
    opt, task = cfg.train, TASKS[cfg.rm.mode]
    items = task.load(read_table(cfg.data.path, cfg.data.split, cfg.data.config), cfg.data, cfg.rm)  # data and model checked first
    if cfg.data.val_path:
        train, val = items, task.load(read_table(cfg.data.val_path, cfg.data.split, cfg.data.config), cfg.data, cfg.rm)
    else:
        train, val = _split_rows(items, cfg.data)
    check_model(cfg.model.name)
    run = start_run(cfg, cfg.name, cfg.runs_dir, cfg.seed, accelerator_kwargs(opt))
    model, tok = setup_model(cfg.model, ["reward"], opt)  # LoRA, frozen embeddings, fast dropout as asked
    tok.truncation_side = cfg.rm.truncation_side
    total = -(-len(train) // opt.batch_size) * opt.epochs
    total = min(total, opt.max_steps) if opt.max_steps else total
    optim, sched = setup_optimizer(model, opt, total)
    model, optim, sched = run.accelerator.prepare(model, optim, sched)
    meta = {"kind": "reward_model", "head": "scalar", "mode": cfg.rm.mode, "label_names": ["reward"],
            "max_length": opt.max_length, "use_prompt": any(p for p in train.prompts), "trainer": f"rm-{cfg.rm.mode}"}
    run.print(f"rm {cfg.rm.mode}: {len(train)} train / {len(val)} val rows, {total} steps")

    acc = run.accelerator

    def batch_loss(b: Any) -> tuple[torch.Tensor, int, dict[str, Any], Any]:
        idx, shard, weight = b
        mean_of = (lambda r: _batch_mean(acc, r, weight > 0)) if acc.num_processes > 1 else None
        loss, stats = task.loss(model, tok, train.subset(shard), cfg, acc.device, mean_of)
        acc.backward(loss * weight)
        return loss, len(idx), stats, idx

    def batches(epoch: int, start: int) -> Any:
        """Each process takes rows rank::world of every global batch, weighted by its share (as in
        `common.epoch_batches`): DDP's average is then the global batch's gradient."""
        order = batch_order(train.lengths(), opt.batch_size, cfg.seed, epoch, True, opt.group_by_length)
        return shares(order[start:], acc.process_index, acc.num_processes)

    res = train_epochs(
        run, cfg.ckpt, model, optim, sched, epochs=opt.epochs, total=total, max_grad_norm=opt.max_grad_norm,
        log_every=opt.log_every, desc="rm", show_progress=show_progress, batch_loss=batch_loss, batches=batches,
        end_of_epoch=lambda step, epoch, best: _eval_and_keep(run, model, tok, val, opt, step, epoch, best, meta, task))
    if not res.stopped:
        run.log(res.step, split="summary", train_s=res.train_s, best=res.best)
    return {"best": res.best, "run_dir": str(run.dir), "steps": res.step, "stopped": res.stopped, "signal": res.signal}


def _batch_mean(acc: Any, r: torch.Tensor, counts: bool) -> torch.Tensor:
    """The mean of r over every process's rows (a weight-0 filler share does not count).  (n,) → ()"""
    part = torch.stack([r.detach().sum(), torch.tensor(float(r.numel()), device=r.device)]) * float(counts)
    total = acc.reduce(part, "sum")
    return total[0] / total[1]


def _pairwise_loss(model: Any, tok: Any, b: Pairs, cfg: RMConfig, dev: Any,
                   mean_of: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, dict]:
    """Bradley–Terry loss of this process's pairs, plus the centring term over the global batch
    (`mean_of`: the mean over every process's rewards; None with one process)."""
    r_c = _scores(model, tok, b.prompts, b.chosen, cfg.train.max_length, dev)  # (b,)
    r_r = _scores(model, tok, b.prompts, b.rejected, cfg.train.max_length, dev)  # (b,)
    loss, st = bradley_terry_loss(r_c, r_r, cfg.rm.margin or None)
    if cfg.rm.center_coef:
        r = torch.cat([r_c, r_r])  # (2b,)
        loss = loss + cfg.rm.center_coef * centring_penalty(r, mean_of(r) if mean_of else r.mean())
    return loss, {"accuracy": st.accuracy, "margin": st.margin}


def _regression_loss(model: Any, tok: Any, b: "Scored", cfg: RMConfig, dev: Any,
                     mean_of: Any = None) -> tuple[torch.Tensor, dict]:
    pred = _scores(model, tok, b.prompts, b.texts, cfg.train.max_length, dev)  # (b,)
    return torch.nn.functional.mse_loss(pred, torch.tensor(b.scores, device=dev)), {}


def _split_rows(items: Any, data: DataSettings) -> tuple[Any, Any]:
    from ..data import Examples

    ex = Examples([str(i) for i in range(len(items))], None, [])  # split row numbers: texts may repeat
    tr, va = split(ex, data.val_fraction, data.seed, stratify=False)
    return items.subset([int(t) for t in tr.texts]), items.subset([int(t) for t in va.texts])


def _eval_and_keep(run: RunContext, model: Any, tok: Any, val: Any, opt: OptimSettings, step: int, epoch: int,
                   best: float | None, meta: dict[str, Any], task: "ScalarTask") -> float | None:
    net, device, everything = run.accelerator.unwrap_model(model), run.accelerator.device, range(len(val))
    v = over_shares(run, len(val), lambda rows: task.values(net, tok, val.subset(everything[rows]), opt.max_length,
                                                             device))  # (N,) on the main process: each did a share
    if v is not None:
        m = task.metrics(v, val)
        run.log(step, epoch=epoch, split="val", **m)
        run.print(f"epoch {epoch} step {step}: val " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()))
        if best is None or m[task.metric] > best:
            best = m[task.metric]
            save_classifier(run, model, tok, run.checkpoints / "best", {**meta, "step": step, **m})
    run.accelerator.wait_for_everyone()
    return best



TASKS = {"pairwise": ScalarTask(load_pairs, _pairwise_loss, pair_margins, margin_metrics, "pairwise_accuracy"),
         "regression": ScalarTask(load_scored, _regression_loss, predicted_scores, score_metrics, "pearson")}
