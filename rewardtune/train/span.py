"""Extractive QA as a span policy: `sft policy=span` (gold-span cross-entropy) and `rl policy=span` (REINFORCE on
sampled spans, scored by token F1 or exact match against the gold answers).

The loop is the classifiers' (`train/loop.py`: clipping, checkpoints, exact resumption); what differs is here, as a
trainer's seam: the windows of each batch, the loss of one batch, and the end-of-epoch SQuAD evaluation. A batch
reads top to bottom: start/end logits → (rl) sample K spans → their texts → rewards → advantages → policy-gradient
loss, KL to the initial policy, entropy bonus, optional cross-entropy (the mixed objective) → backward.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..algorithms import pg_loss, rloo, self_critical
from ..config import ConfigError
from ..dropout import use_fast_dropout
from ..eval_span import evaluate_spans, load_span_model, with_lora, write_predictions
from ..policies import span as policy
from ..qa_data import QAExamples, Windows, iterate_windows, load_squad, make_windows, seeded_subset, split_by_article
from ..rewards import CombinedReward, build_rewards
from ..rewards.metrics import exact_match, token_f1
from ..run import RunContext, discard_failed_start, ends_trackers, start_run
from ..batching import batch_order
from .common import accelerator_kwargs, save_classifier, setup_optimizer, setup_reference, shares, steps_per_epoch
from .loop import LoopResult, train_epochs
from .span_config import SpanRLConfig, SpanRewardSettings, SpanSFTConfig, check_span_config

ANSWERS = "answers"  # the column the rewards read the gold answer texts from
# Baselines of the sampled spans' rewards: (rewards (b, K), greedy span's rewards (b,)) → advantages (b, K).
BASELINES: dict[str, Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]] = {
    "rloo": lambda r, g: rloo(r),
    "greedy": lambda r, g: self_critical(r, g),
    "none": lambda r, g: r,
}


@dataclass
class SpanData:
    train: QAExamples
    val: QAExamples
    train_w: Windows | None = None
    val_w: Windows | None = None


def setup_span_data(cfg: SpanSFTConfig | SpanRLConfig) -> SpanData:
    """Validated questions, split by article unless a validation file is given (bad rows fail here, before a run)."""
    d = cfg.data
    full = load_squad(d.path)
    train, val = (full, load_squad(d.val_path)) if d.val_path else split_by_article(full, d.val_fraction, d.seed)
    return SpanData(seeded_subset(train, d.max_examples, d.seed), seeded_subset(val, d.max_val_examples, d.seed))


def setup_span_model(cfg: SpanSFTConfig | SpanRLConfig) -> tuple[Any, Any]:
    """The start/end model (an encoder's new head, or a span checkpoint), with LoRA if asked."""
    net, tok = load_span_model(cfg.model.name)
    if hasattr(net, "merge_and_unload"):  # a LoRA span checkpoint: its adapter merged is the initial policy (and π₀)
        net = net.merge_and_unload()
    if cfg.train.freeze_embeddings:
        net.get_input_embeddings().weight.requires_grad_(False)
    if cfg.train.fast_dropout:
        use_fast_dropout(net)
    return with_lora(net, cfg.model.lora), tok


def window_batches(w: Windows, cfg: Any, epoch: int, run: RunContext, pad_id: int, start: int = 0):
    """This process's share of each global batch of windows, as `common.epoch_batches` deals sentences."""
    order = batch_order([len(x) for x in w.input_ids], cfg.train.batch_size, cfg.seed, epoch, True,
                        cfg.train.group_by_length)
    acc = run.accelerator
    for _, shard, weight in shares(order[start:], acc.process_index, acc.num_processes):
        batch = next(iterate_windows(w, [shard], pad_id))
        batch.weight = weight
        yield batch


def span_meta(cfg: SpanSFTConfig | SpanRLConfig, trainer: str) -> dict[str, Any]:
    """What `rewardtune eval` needs to rebuild the windows of a checkpoint (its rewardtune.json)."""
    return {"policy": "span", "max_length": cfg.train.max_length, "stride": cfg.span.stride,
            "max_answer_tokens": cfg.span.max_answer_tokens, "trainer": trainer}


def evaluate_and_keep_best(run: RunContext, cfg: Any, model: Any, tok: Any, data: SpanData, step: int, epoch: int,
                           best: float | None, meta: dict[str, Any]) -> float | None:
    """SQuAD EM/F1 on the validation questions; a better one saves `checkpoints/best` and `predictions.jsonl`."""
    if run.is_main:
        net = run.accelerator.unwrap_model(model)
        rep = evaluate_spans(net, tok, data.val, data.val_w, cfg.span.max_answer_tokens, cfg.train.eval_batch_size,
                             run.accelerator.device)
        score = rep.metrics[cfg.train.best_metric]
        run.log(step, epoch=epoch, split="val", **rep.metrics)
        run.print(f"epoch {epoch} step {step}: validation ({len(data.val)} questions) exact_match "
                  f"{rep.metrics['exact_match']:.4f} f1 {rep.metrics['f1']:.4f}")
        if best is None or score > best:
            best = score
            save_classifier(run, model, tok, run.checkpoints / "best",
                            {**meta, "step": step, "epoch": epoch, cfg.train.best_metric: score})
            write_predictions(run.dir / "predictions.jsonl", data.val, rep)
    run.accelerator.wait_for_everyone()
    return best


def sft_batch_loss(cfg: SpanSFTConfig, run: RunContext, model: Any) -> Callable[[Any], tuple]:
    """One batch: −(log π(s*) + log π(e*|s*)) / 2, averaged over its windows."""
    acc, max_len = run.accelerator, cfg.span.max_answer_tokens

    def batch_loss(batch: Any) -> tuple[torch.Tensor, int, dict[str, Any], Any]:
        s, e = policy.span_logits(model, batch.model_inputs(acc.device))  # (b, T) each
        loss = policy.gold_nll(s, e, batch.allowed.to(acc.device), batch.gold.to(acc.device), max_len).mean()
        acc.backward(loss * batch.weight)
        return loss, len(batch.index) * acc.num_processes, {}, batch.index
    return batch_loss


def setup_span_reward(r: SpanRewardSettings, device: Any = None) -> CombinedReward:
    """Built-ins token_f1 and exact_match (against the `answers` column), or rm:FOLDER (run on `device`), module:fn."""
    registry = {"token_f1": lambda: token_f1(ANSWERS), "exact_match": lambda: exact_match(ANSWERS)}
    return build_rewards(r.functions, r.weights, registry, on_error=r.on_error, device=device)


def score_spans(reward: CombinedReward, data: SpanData, batch: Any, spans: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Rewards (b, K) of spans (b, K, 2) of the batch's windows, each component's mean, and the windows kept (b,)."""
    w, ex = data.train_w, data.train
    b, k = spans.shape[:2]
    qs = [w.question[i] for i in batch.index]
    texts = policy.action_texts(spans.cpu(), [w.offsets[i] for i in batch.index], [ex.contexts[q] for q in qs])
    res = reward([ex.questions[q] for q in qs for _ in range(k)], texts,
                 **{ANSWERS: [ex.answer_texts(q) for q in qs for _ in range(k)]})
    keep = torch.ones(b, dtype=torch.bool) if res.dropped is None else ~res.dropped.reshape(b, k).any(-1)
    keep &= batch.weight != 0
    comps = {f"reward/{n}": torch.nanmean(v) for n, v in res.components.items()}
    return res.total.reshape(b, k) * keep[:, None], comps, keep


def rl_batch_loss(cfg: SpanRLConfig, run: RunContext, model: Any, reward: CombinedReward, reference: Any,
                  data: SpanData) -> Callable[[Any], tuple]:
    """One batch: sample K spans → rewards → advantages → policy-gradient loss + penalties → backward."""
    acc, rl, max_len = run.accelerator, cfg.rl, cfg.span.max_answer_tokens

    def batch_loss(batch: Any) -> tuple[torch.Tensor, int, dict[str, Any], Any]:
        inputs, allowed = batch.model_inputs(acc.device), batch.allowed.to(acc.device)
        s, e = policy.span_logits(model, inputs)  # (b, T) each
        spans, logp = policy.sample(s, e, allowed, rl.samples, max_len)  # (b, K, 2), (b, K)
        rewards, comps, keep = score_spans(reward, data, batch, spans)  # (b, K), {}, (b,)
        with torch.set_grad_enabled(bool(rl.kl_coef or rl.entropy_coef)):  # else the table is only read
            joint = policy.joint_logprobs(s, e, allowed, max_len)  # (b, T, T)
        greedy = None
        if rl.baseline == "greedy":
            greedy = score_spans(reward, data, batch, policy.greedy(joint.detach())[0][:, None, :])[0][:, 0]  # (b,)
        adv = BASELINES[rl.baseline](rewards, greedy).to(logp.device) * keep[:, None].to(logp.device)  # (b, K)
        mask = keep[:, None].expand_as(logp).float().to(logp.device)  # (b, K)
        loss, _ = pg_loss(logp, adv, mask, "token_mean")
        ent = policy.entropy(joint).mean()
        total, stats = loss - rl.entropy_coef * ent, {"reward": rewards.mean(), "entropy": ent.detach(), **comps}
        if rl.kl_coef:
            kl = policy.kl(joint, policy.reference_logprobs(model, reference, inputs, allowed, max_len)).mean()
            total, stats["kl"] = total + rl.kl_coef * kl, kl.detach()
        if rl.ce_coef:
            ce = policy.gold_nll(s, e, allowed, batch.gold.to(acc.device), max_len).mean()
            total, stats["ce"] = total + rl.ce_coef * ce, ce.detach()
        acc.backward(total * batch.weight)
        return loss, len(batch.index) * acc.num_processes, stats, batch.index
    return batch_loss


def run_span(cfg: SpanSFTConfig | SpanRLConfig, show_progress: bool = True) -> dict[str, Any]:
    """Set up, train with the shared loop, summarise: the one orchestration of both span trainers."""
    check_span_config(cfg)
    data = setup_span_data(cfg)  # bad data fails before the run folder exists
    is_rl = isinstance(cfg, SpanRLConfig)
    run = start_run(cfg, cfg.name, cfg.runs_dir, cfg.seed, accelerator_kwargs(cfg.train))
    model, tok = setup_span_model(cfg)
    reward = setup_span_reward(cfg.reward, run.accelerator.device) if is_rl else None
    reference = setup_reference(model, cfg.rl, run.accelerator.device) if is_rl else None
    sp, opt = cfg.span, cfg.train
    data.train_w = make_windows(tok, data.train, opt.max_length, sp.stride, sp.max_answer_tokens)
    data.val_w = make_windows(tok, data.val, opt.max_length, sp.stride, sp.max_answer_tokens)
    total = steps_per_epoch(len(data.train_w), opt) * opt.epochs
    total = min(total, opt.max_steps) if opt.max_steps else total
    optim, sched = setup_optimizer(model, opt, total)
    model, optim, sched = run.accelerator.prepare(model, optim, sched)
    trainer = "rl-span" if is_rl else "sft-span"
    meta = span_meta(cfg, trainer)
    run.print(f"{trainer}: {len(data.train)} questions ({len(data.train_w)} windows) train / {len(data.val)} val, "
              f"{total} steps")
    loss_fn = (rl_batch_loss(cfg, run, model, reward, reference, data) if is_rl  # type: ignore[arg-type]
               else sft_batch_loss(cfg, run, model))  # type: ignore[arg-type]
    def keep_best(step: int, epoch: int, best: float | None) -> float | None:
        return evaluate_and_keep_best(run, cfg, model, tok, data, step, epoch, best, meta)

    res = train_epochs(
        run, cfg.ckpt, model, optim, sched, epochs=opt.epochs, total=total, max_grad_norm=opt.max_grad_norm,
        log_every=opt.log_every, desc=trainer, show_progress=show_progress, batch_loss=loss_fn,
        batches=lambda epoch, start: window_batches(data.train_w, cfg, epoch, run, tok.pad_token_id, start),
        end_of_epoch=keep_best, at_start=(lambda: keep_best(0, 0, None)) if is_rl else None,  # rl: the start can be best
        state={"reward": reward} if reward is not None else None)
    return summary(run, res)


def summary(run: RunContext, res: LoopResult) -> dict[str, Any]:
    if res.stopped:
        return {"stopped": True, "signal": res.signal, "run_dir": str(run.dir), "steps": res.step, "best": res.best}
    per_s = res.seen / max(res.train_s, 1e-9)
    run.log(res.step, split="summary", train_s=res.train_s, train_examples_per_s=per_s, best=res.best)
    return {"best": res.best, "run_dir": str(run.dir), "steps": res.step, "train_s": res.train_s,
            "train_windows_per_s": per_s}


@discard_failed_start
@ends_trackers
def train_span_sft(cfg: SpanSFTConfig, show_progress: bool = True) -> dict[str, Any]:
    """`rewardtune sft policy=span`; returns the best validation score and the run folder."""
    if not isinstance(cfg, SpanSFTConfig):
        raise ConfigError(f"train_span_sft takes a SpanSFTConfig, got {type(cfg).__name__}")
    return run_span(cfg, show_progress)


@discard_failed_start
@ends_trackers
def train_span_rl(cfg: SpanRLConfig, show_progress: bool = True) -> dict[str, Any]:
    """`rewardtune rl policy=span`; returns the best validation score and the run folder."""
    if not isinstance(cfg, SpanRLConfig):
        raise ConfigError(f"train_span_rl takes a SpanRLConfig, got {type(cfg).__name__}")
    return run_span(cfg, show_progress)
