"""Reward-driven fine-tuning of a classifier: the action is a label, π(y|x) is the policy.

One loop for all estimators: batch → logits → estimator loss (from a dict) → KL to the
initial policy and entropy bonus → update. Each estimator is a short function below, reading
rollout → score → advantages → loss; the policy's pieces (sampling labels, log-probs, the reference's
log-probs, exact KL and entropy) are in `policies/classifier.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal

import torch
from ..algorithms import EMABaseline, expected_reward_loss, masked_mean, pg_loss, reinforce, rloo, value_loss
from ..checkpoint import CheckpointSettings
from ..collectives import failed_ranks, gather_rows
from ..config import REPORT_TO_DOC, DataSettings, ModelSettings, doc, nested
from ..policies import classifier as policy
from ..rewards import CombinedReward, build_rewards, cost_matrix, indicator, parse_cost_matrix
from ..models import check_model
from ..run import RunContext, discard_failed_start, ends_trackers, start_run
from .common import (ClassifierData, OptimSettings, accelerator_kwargs, check_best_metric, encode_examples,
                     epoch_batches, final_test, report_and_keep_best, setup_data, setup_model, setup_optimizer,
                     setup_reference, steps_per_epoch)
from .loop import LoopResult, train_epochs


@dataclass(frozen=True)
class RLSettings:
    """The estimator, its reward and the penalties that keep the policy near its start."""

    estimator: Literal["expected", "reinforce", "value"] = doc("expected", "gradient estimator")
    samples: int = doc(4, "labels sampled per example (reinforce, value)")
    baseline: Literal["rloo", "mean", "ema", "none"] = doc("rloo", "REINFORCE baseline")
    ema_decay: float = doc(0.9, "decay of the EMA baseline")
    kl_coef: float = doc(0.0, "β of the exact KL(π || π_initial) penalty")
    entropy_coef: float = doc(0.0, "weight of the entropy bonus")
    ce_coef: float = doc(0.0, "weight of the gold label's cross-entropy added to the RL loss (a mixed objective); "
                              "0 = rewards only")
    exploration: Literal["epsilon", "softmax"] = doc("softmax", "value estimator: ε-greedy or Boltzmann")
    epsilon: float = doc(0.1, "value estimator: ε-greedy exploration rate")
    temperature: float = doc(0.1, "value estimator: softmax exploration temperature τ")


@dataclass(frozen=True)
class ClassifierRewardSettings:
    """What scores a chosen label: reward functions, their weights, and what a failure does."""

    functions: tuple = doc(("indicator",), "reward functions: indicator, cost_matrix, rm:FOLDER, module:function, "
                                           "or Python callables (API)")
    weights: tuple = doc((), "one weight per reward function (default 1 each)")
    cost_matrix: str = doc("", "gold/pred=value,... for the cost_matrix reward")
    on_error: Literal["raise", "skip"] = doc(
        "raise", "a reward that raises or gives NaN: stop showing the example, or drop that example (counted)")


@dataclass(frozen=True)
class RLClassifierConfig:
    """`rewardtune rl` with a classifier policy."""

    model: ModelSettings = nested(ModelSettings, "encoder or `sft` checkpoint to start from")
    data: DataSettings = nested(DataSettings, "training / validation / test data")
    train: OptimSettings = nested(OptimSettings, "optimiser, schedule, batching")
    rl: RLSettings = nested(RLSettings, "estimator, samples, baseline, penalties")
    reward: ClassifierRewardSettings = nested(ClassifierRewardSettings, "reward functions, weights, failures")
    ckpt: CheckpointSettings = nested(CheckpointSettings, "resumable checkpoints, resumption, stop/NaN handling")
    policy: Literal["classifier"] = doc("classifier", "what the action is (classifier: a label)")
    runs_dir: str = doc("runs", "folder holding run folders")
    name: str = doc("rl", "run folder name")
    report_to: tuple = doc((), REPORT_TO_DOC)
    seed: int = doc(0, "global seed")

    # Keys of the `rl` section before the rewards had their own (older config.yaml files, --resume, command lines):
    # read as their new keys, with a warning (config.load_config).
    RENAMED: ClassVar[dict[str, str]] = {"rl.rewards": "reward.functions", "rl.reward_weights": "reward.weights",
                                         "rl.cost_matrix": "reward.cost_matrix", "rl.on_reward_error": "reward.on_error"}


@dataclass
class Step:
    """What an estimator sees: logits (b, A), the batch's texts and gold label names."""

    logits: torch.Tensor
    texts: list[str]
    gold: list[str]
    label_names: list[str]
    reward: CombinedReward
    rl: RLSettings
    ema: EMABaseline
    filler: bool = False  # a weight-0 row standing in for an empty share of the batch (see epoch_batches)
    gather: Callable[[torch.Tensor], list[torch.Tensor]] | None = None  # every process's rows, in rank order
    rank: int = 0


def _score(s: Step, actions: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Rewards (b, K) of chosen label indices (b, K), each component's mean, and the rows kept (b,).

    With on_reward_error=skip, an example with any failed reward is dropped from the update: its
    rewards are zeroed and its `keep` is 0 (the estimators mask it out).
    """
    b, k = actions.shape
    completions = policy.action_texts(actions, s.label_names)  # (b·K,)
    res = s.reward([t for t in s.texts for _ in range(k)], completions, label=[g for g in s.gold for _ in range(k)])
    comps = {f"reward/{n}": torch.nanmean(v) for n, v in res.components.items()}
    keep = torch.ones(b, dtype=torch.bool) if res.dropped is None else ~res.dropped.reshape(b, k).any(-1)
    keep &= not s.filler
    rewards = res.total.reshape(b, k) * keep[:, None]
    # Always logged (the same keys on every process: their rows are all-reduced); a filler share drops no real row.
    comps["reward_dropped"] = torch.tensor(0.0 if s.filler else float((~keep).sum()))
    return rewards.to(s.logits.device), comps, keep.float().to(s.logits.device)


def expected(s: Step) -> tuple[torch.Tensor, dict[str, Any]]:
    """Exact gradient of E_π[R]: every label is scored, nothing is sampled (zero variance)."""
    rewards, comps, _ = _score(s, policy.every_label(s.logits))  # (b, A); a dropped row is all zeros: no gradient
    loss, st = expected_reward_loss(s.logits.float(), rewards)
    return loss, {"reward": st.expected_reward, **comps}


def sampled(s: Step) -> tuple[torch.Tensor, dict[str, Any]]:
    """REINFORCE: K labels sampled per example, advantages from the chosen baseline."""
    actions, logp = policy.sample(s.logits, s.rl.samples)  # (b, K) each: each sample is one "token" of weight 1
    rewards, comps, keep = _score(s, actions.cpu())  # (b, K)
    global_baseline = s.gather is not None and s.rl.baseline in ("mean", "ema")
    adv = label_advantages(rewards, keep, s.rl, s.ema, s.gather if global_baseline else None, s.rank)  # (b, K)
    mask = keep[:, None].expand_as(logp)  # (b, K)
    loss, _ = pg_loss(logp, adv, mask, "token_mean")
    # The loss's value is −mean(advantage), ≈0 by construction; what shows learning (or its stall) is the
    # advantages' size and how often an example's K samples all agree (then RLOO gives them zero advantage).
    agree = (actions == actions[:, :1]).all(-1).float().to(keep.device)  # (b,)
    return loss, {"reward": rewards.mean(), "adv_abs": masked_mean(adv.abs(), mask),
                  "samples_agree": masked_mean(agree, keep), **comps}


def label_advantages(rewards: torch.Tensor, keep: torch.Tensor, rl: RLSettings, ema: EMABaseline,
                     gather: Callable[[torch.Tensor], list[torch.Tensor]] | None = None, rank: int = 0) -> torch.Tensor:
    """(b, K) rewards and (b,) kept rows → (b, K) advantages; the baseline comes from the kept rows only.

    With `gather` (every process's tensor, in rank order) a batch-mean or EMA baseline is the global
    batch's, as one process would compute it, and every process keeps the same EMA.
    """
    mine = torch.cat([rewards, keep[:, None].to(rewards.dtype)], -1)  # (b, K + 1): one gather for both
    parts = gather(mine) if gather is not None else [mine]
    both = torch.cat(parts)  # (b·world, K + 1)
    full, kept = both[:, :-1], both[:, -1].bool()  # (b·world, K), (b·world,)
    adv = torch.zeros_like(full)
    if kept.any():
        adv[kept] = rloo(full[kept]) if rl.baseline == "rloo" else reinforce(full[kept], rl.baseline, ema)
    start = sum(p.shape[0] for p in parts[:rank]) if gather is not None else 0  # without it: this process's rows only
    return adv[start:start + rewards.shape[0]].to(rewards.device)


# The value estimator's behaviour policy over Q(x, ·) (policies/classifier.py), by `rl.exploration`.
EXPLORATION: dict[str, Callable[[torch.Tensor, RLSettings], torch.Tensor]] = {
    "epsilon": lambda q, rl: policy.epsilon_greedy(q, rl.epsilon),
    "softmax": lambda q, rl: policy.boltzmann(q, rl.temperature),
}


def value(s: Step) -> tuple[torch.Tensor, dict[str, Any]]:
    """One-step Q-learning on the contextual bandit: logits are Q(x, ·), ε-greedy actions, squared error."""
    q = s.logits.float()  # (b, A)
    actions = EXPLORATION[s.rl.exploration](q.detach(), s.rl)  # (b, 1)
    rewards, comps, keep = _score(s, actions.cpu())  # (b, 1)
    q_taken = q.gather(-1, actions)  # (b, 1)
    loss, _ = value_loss(q_taken, q_taken.detach(), rewards, keep[:, None], clip_eps=None)
    return loss, {"reward": rewards.mean(), **comps}


ESTIMATORS: dict[str, Callable[[Step], tuple[torch.Tensor, dict[str, Any]]]] = {
    "expected": expected, "reinforce": sampled, "value": value,
}


def setup_reward(rs: ClassifierRewardSettings, device: Any = None, load_models: bool = True) -> CombinedReward:
    """Built-ins: indicator, cost_matrix (reward.cost_matrix); or rm:FOLDER (run on `device`), module:fn, a callable.
    `load_models=False`: checked only (before the run folder exists; see `build_rewards`)."""
    registry = {"indicator": lambda: indicator, "cost_matrix": lambda: cost_matrix(parse_cost_matrix(rs.cost_matrix))}
    return build_rewards(rs.functions, rs.weights, registry, on_error=rs.on_error, device=device,
                         load_models=load_models)


def penalties(logits: torch.Tensor, ref_logprobs: torch.Tensor | None, rl: RLSettings,
              gold: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """β·KL(π || π_0) (exact over the label set) − c·H(π) + λ·CE(gold), each averaged over the batch.
    logits (b, A), the reference's log-probs (b, A) or None (no KL term), gold label indices (b,) (read when
    rl.ce_coef > 0: the mixed objective, where the labels' cross-entropy keeps teaching the examples that an
    indicator reward's gradient, p(y|x)·∇log p(y|x), all but ignores once p(y|x) is small)."""
    # log π before the entropy even without a KL term: autograd adds the terms' gradients in an order set by when
    # each was made, and another order changes the weights in their last bits.
    logp = policy.label_logprobs(logits)  # (b, A)
    ent = policy.entropy(logits).mean()
    out = -rl.entropy_coef * ent
    stats: dict[str, Any] = {"entropy": ent.detach()}
    if ref_logprobs is not None:
        kl = policy.kl(logp, ref_logprobs).mean()
        out = out + rl.kl_coef * kl
        stats["kl"] = kl.detach()
    if rl.ce_coef:
        ce = -logp.gather(-1, gold[:, None]).mean()  # mean over the batch of −log π(gold | x)
        out = out + rl.ce_coef * ce
        stats["ce"] = ce.detach()
    return out, stats


@dataclass
class Training:
    """What a run trains with, built by `setup_training` (the model, optimiser and scheduler prepared)."""

    model: Any
    tok: Any
    reward: CombinedReward
    reference: Callable[[], Any]  # a context factory: see common.setup_reference
    ema: EMABaseline
    optim: Any
    sched: Any
    total: int  # optimiser steps
    encoded: list[list[int]]  # the training texts' token ids
    gather: Callable[[torch.Tensor], list[torch.Tensor]] | None  # None with one process


def setup_run_reward(rs: ClassifierRewardSettings, run: RunContext) -> CombinedReward:
    """The run's reward, on the accelerator's device; under several processes a reward failing on one stops them
    all, at the same step (else the others would wait forever in the next collective)."""
    reward = setup_reward(rs, run.accelerator.device)
    if run.accelerator.num_processes > 1:
        reward.failed_on = failed_ranks(run.accelerator)
    return reward


def total_steps(n: int, opt: OptimSettings) -> int:
    """Optimiser steps of the whole run: every epoch's batches, capped by `max_steps`."""
    total = steps_per_epoch(n, opt) * opt.epochs
    return min(total, opt.max_steps) if opt.max_steps else total


def setup_training(cfg: RLClassifierConfig, run: RunContext, data: ClassifierData) -> Training:
    """Policy, reward, reference, baseline and optimiser, in this order (the model's random head is drawn first,
    and the reference copy is made before `prepare` moves the policy)."""
    opt, acc = cfg.train, run.accelerator
    model, tok = setup_model(cfg.model, data.label_names, opt)
    reward = setup_run_reward(cfg.reward, run)
    reference = setup_reference(model, cfg.rl, acc.device)
    ema, total = EMABaseline(decay=cfg.rl.ema_decay), total_steps(len(data.train), opt)
    optim, sched = setup_optimizer(model, opt, total)
    model, optim, sched = acc.prepare(model, optim, sched)
    gather = gather_rows(acc) if acc.num_processes > 1 else None
    return Training(model, tok, reward, reference, ema, optim, sched, total, encode_examples(tok, data.train, opt),
                    gather)


def batch_loss_fn(cfg: RLClassifierConfig, run: RunContext, data: ClassifierData,
                  t: Training) -> Callable[[Any], tuple[torch.Tensor, int, dict[str, Any], Any]]:
    """One batch: the policy's logits → the estimator's loss (rollout, score, advantages) → penalties → backward."""
    estimator, acc = ESTIMATORS[cfg.rl.estimator], run.accelerator

    def batch_loss(batch: Any) -> tuple[torch.Tensor, int, dict[str, Any], Any]:
        batch = batch.to(acc.device)
        logits = policy.label_logits(t.model, batch.model_inputs())  # (b, A)
        idx = batch.index.tolist()
        s = Step(logits, [data.train.texts[i] for i in idx], [data.label_names[data.train.labels[i]] for i in idx],
                 data.label_names, t.reward, cfg.rl, t.ema, batch.weight == 0, t.gather, acc.process_index)
        loss, stats = estimator(s)
        # After the estimator, not before: with LoRA the reference pass is the same model in training mode, and its
        # dropout masks come from the random stream the estimator samples from.
        ref_logprobs = policy.reference_logprobs(t.model, t.reference, batch.model_inputs()) if cfg.rl.kl_coef else None
        extra, pstats = penalties(logits, ref_logprobs, cfg.rl, batch.labels)
        acc.backward((loss + extra) * batch.weight)
        return loss, len(idx) * acc.num_processes, {**stats, **pstats}, idx
    return batch_loss


def finish(run: RunContext, data: ClassifierData, opt: OptimSettings, res: LoopResult) -> dict[str, Any]:
    """The summary row and the best checkpoint's test report; a stopped run only says where it stopped."""
    if res.stopped:
        return {"stopped": True, "signal": res.signal, "run_dir": str(run.dir), "steps": res.step, "best": res.best}
    step, best, train_s = res.step, res.best, res.train_s
    run.log(step, split="summary", train_s=train_s, train_examples_per_s=res.seen / max(train_s, 1e-9), best=best)
    test = final_test(run, data, opt, step)
    return {"best": best, "run_dir": str(run.dir), "steps": step, "train_s": train_s,
            "test": test.metrics if test else None}


@discard_failed_start
@ends_trackers
def train_rl_classifier(cfg: RLClassifierConfig, show_progress: bool = True) -> dict[str, Any]:
    """Run RL on a classifier; returns the best validation score and the run folder."""
    data = setup_data(cfg.data)  # bad data, a bad best_metric, model or reward fail before the run folder exists
    check_best_metric(cfg.train, data)
    check_model(cfg.model.name)
    setup_reward(cfg.reward, load_models=False)
    run = start_run(cfg, cfg.name, cfg.runs_dir, cfg.seed, accelerator_kwargs(cfg.train))
    t, opt = setup_training(cfg, run, data), cfg.train
    meta = {"label_names": data.label_names, "max_length": opt.max_length, "truncation": opt.truncation,
            "trainer": f"rl-{cfg.rl.estimator}"}
    run.print(f"rl ({cfg.rl.estimator}): {len(data.train)} train / {len(data.val)} val, rewards {list(t.reward.fns)}, "
              f"{t.total} steps")
    def keep_best(step: int, epoch: int, best: float | None) -> float | None:
        return report_and_keep_best(run, t.model, t.tok, data, opt, step, epoch, best, meta)

    res = train_epochs(
        run, cfg.ckpt, t.model, t.optim, t.sched, epochs=opt.epochs, total=t.total, max_grad_norm=opt.max_grad_norm,
        log_every=opt.log_every, desc=f"rl-{cfg.rl.estimator}", show_progress=show_progress,
        batch_loss=batch_loss_fn(cfg, run, data, t),
        batches=lambda epoch, start: epoch_batches(t.encoded, data.train.labels, opt, cfg.seed, epoch, run,
                                                   t.tok.pad_token_id, start),
        end_of_epoch=keep_best, at_start=lambda: keep_best(0, 0, None),  # the start (often an sft model) can be best
        state={"ema": t.ema, "reward": t.reward})
    return finish(run, data, opt, res)
