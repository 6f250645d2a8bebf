"""Reward-driven fine-tuning of a token tagger (`rewardtune rl policy=tagger`): the action is a tag sequence.

One loop for both estimators: batch → per-word logits → estimator loss (from a dict) → KL to the initial policy
and entropy bonus → update. `expected` maximises the exact expectation of a per-word reward under the factorised
policy (nothing sampled); `reinforce` samples K tag sequences per sentence (left to right under the BIO
constraints when `constrained`), scores each with sequence rewards (entity-level span F1 by default) and weighs
its log-prob by an RLOO or self-critical (greedy) advantage. The loop, the set-up and the evaluation are
the classifier's and the supervised tagger's (loop.py, common.py, tagger.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch

from ..algorithms import pg_loss, rloo
from ..algorithms.tagging import Transitions, expected_token_reward, self_critical, token_match_rewards
from ..checkpoint import CheckpointSettings
from ..collectives import failed_ranks
from ..config import REPORT_TO_DOC, ModelSettings, doc, nested
from ..eval_tagger import transitions
from ..policies import tagger as policy
from ..rewards import CombinedReward, build_rewards
from ..rewards.spans import span_f1_reward, token_accuracy_reward
from ..run import RunContext, discard_failed_start, ends_trackers, start_run
from ..tagging import encode_tagged
from .common import OptimSettings, accelerator_kwargs, setup_optimizer, setup_reference
from .loop import train_epochs
from .tagger import (TaggedData, TaggerDataSettings, check_tagger_metric, finish, report_and_keep_best, setup_tagged_data,
                     setup_tagger_model, tag_batches, tagger_meta, tagger_optim, token_cross_entropy, total_steps)

# Sequence rewards by name: `(prompts, completions, tags, tokens) -> list[float]`, a completion being the
# predicted tags joined by spaces, `tags` the gold tags of the same words (rewards/spans.py).
REWARDS: dict[str, Callable[[], Callable[..., list[float | None]]]] = {
    "span_f1": lambda: span_f1_reward, "token_accuracy": lambda: token_accuracy_reward}
# Per-word rewards r_w(a) of the `expected` estimator: gold (b, W), number of tags → (b, W, A).
TOKEN_REWARDS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {"match": token_match_rewards}


@dataclass(frozen=True)
class TaggerRLSettings:
    """The estimator, its reward and the penalties that keep the policy near its start."""

    estimator: Literal["reinforce", "expected"] = doc("reinforce", "reinforce: K sampled sequences, sequence "
                                                      "rewards; expected: exact E_π of a per-word reward")
    samples: int = doc(4, "tag sequences sampled per sentence (reinforce)")
    baseline: Literal["rloo", "greedy", "none"] = doc("rloo", "reinforce: leave-one-out mean of the other samples, "
                                                      "or the greedy (Viterbi) sequence's reward (self-critical)")
    token_reward: Literal["match"] = doc("match", "expected: per-word reward (match: 1 for the gold tag)")
    kl_coef: float = doc(0.0, "β of the exact per-word KL(π || π_initial), averaged over words")
    entropy_coef: float = doc(0.0, "weight of the per-word entropy bonus")
    ce_coef: float = doc(0.0, "weight of the gold tags' cross-entropy (sft's loss) added to the RL loss (a mixed "
                              "objective); 0 = rewards only")


@dataclass(frozen=True)
class TaggerRewardSettings:
    """What scores a sampled tag sequence (reinforce)."""

    functions: tuple = doc(("span_f1",), "sequence rewards: span_f1, token_accuracy, module:function (called with "
                                         "the gold `tags` and the `tokens`), or Python callables (API)")
    weights: tuple = doc((), "one weight per reward function (default 1 each)")
    on_error: Literal["raise", "skip"] = doc("raise", "a reward that raises or gives NaN: stop, or drop the sentence")


@dataclass(frozen=True)
class TaggerRLConfig:
    """`rewardtune rl policy=tagger`."""

    model: ModelSettings = nested(ModelSettings, "encoder or tagger checkpoint (`sft policy=tagger`) to start from")
    data: TaggerDataSettings = nested(TaggerDataSettings, "tagged training / validation / test sentences")
    train: OptimSettings = nested(tagger_optim, "optimiser, schedule, batching (best_metric: f1, macro_f1, ...)")
    rl: TaggerRLSettings = nested(TaggerRLSettings, "estimator, samples, baseline, penalties")
    reward: TaggerRewardSettings = nested(TaggerRewardSettings, "sequence rewards, weights, failures")
    ckpt: CheckpointSettings = nested(CheckpointSettings, "resumable checkpoints, resumption, stop/NaN handling")
    policy: Literal["tagger"] = doc("tagger", "what the action is (tagger: one BIO tag per word)")
    constrained: bool = doc(True, "BIO-consistent sampling (left to right) and decoding (Viterbi)")
    runs_dir: str = doc("runs", "folder holding run folders")
    name: str = doc("rl-tagger", "run folder name")
    report_to: tuple = doc((), REPORT_TO_DOC)
    seed: int = doc(0, "global seed")


@dataclass
class Step:
    """What an estimator sees: per-word logits (b, W, A), the real words (b, W), gold tags (b, W), the sentences'
    aligned words, and what scores and constrains the samples."""

    logits: torch.Tensor
    mask: torch.Tensor
    gold: torch.Tensor
    words: list[list[str]]
    tag_names: list[str]
    reward: CombinedReward
    rl: TaggerRLSettings
    tr: Transitions | None
    filler: bool = False  # a weight-0 share standing in for an empty one (common.epoch_batches)


def score(s: Step, tags: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Rewards (b, K) of tag sequences (b, K, W), each reward's mean, and the sentences kept (b,) (on_error=skip
    drops a sentence with a failed reward: zero rewards, keep 0)."""
    b, k, _ = tags.shape
    gold = [[s.tag_names[t] for t in row[:n]] for row, n in zip(s.gold.tolist(), s.mask.sum(-1).tolist())]
    res = s.reward([" ".join(w) for w in s.words for _ in range(k)], policy.action_texts(tags.cpu(), s.mask.cpu(),
                   s.tag_names), tags=[g for g in gold for _ in range(k)], tokens=[w for w in s.words for _ in range(k)])
    keep = torch.ones(b, dtype=torch.bool) if res.dropped is None else ~res.dropped.reshape(b, k).any(-1)
    keep &= not s.filler
    comps = {f"reward/{n}": torch.nanmean(v) for n, v in res.components.items()}
    comps["reward_dropped"] = torch.tensor(0.0 if s.filler else float((~keep).sum()))
    rewards = res.total.reshape(b, k) * keep[:, None]
    return rewards.to(s.logits.device), comps, keep.float().to(s.logits.device)


def expected(s: Step) -> tuple[torch.Tensor, dict[str, Any]]:
    """Exact gradient of E_π[(1/n) Σ_w r_w(y_w)] under the factorised policy: every tag of every word is weighed
    by its probability, nothing is sampled (the BIO constraints play no part here; decoding still uses them)."""
    logp = policy.word_logprobs(s.logits)  # (b, W, A)
    rewards = TOKEN_REWARDS[s.rl.token_reward](s.gold, logp.shape[-1]).to(logp.device)  # (b, W, A)
    value = expected_token_reward(logp, rewards, s.mask)  # (b,)
    return -value.mean(), {"reward": value.mean().detach()}


def _rloo(s: Step, rewards: torch.Tensor) -> torch.Tensor:
    return rloo(rewards)


def _greedy(s: Step, rewards: torch.Tensor) -> torch.Tensor:
    best = policy.greedy(s.logits, s.mask, s.tr)[:, None]  # (b, 1, W)
    return self_critical(rewards, score(s, best)[0][:, 0])


# Advantages (b, K) of the rewards (b, K) by `rl.baseline`.
BASELINES: dict[str, Callable[[Step, torch.Tensor], torch.Tensor]] = {
    "rloo": _rloo, "greedy": _greedy, "none": lambda s, r: r}


def sampled(s: Step) -> tuple[torch.Tensor, dict[str, Any]]:
    """REINFORCE: K tag sequences per sentence, scored whole, weighed by their advantages."""
    tags, logp = policy.sample(s.logits, s.rl.samples, s.mask, s.tr)  # (b, K, W), (b, K)
    rewards, comps, keep = score(s, tags)  # (b, K)
    adv = BASELINES[s.rl.baseline](s, rewards) * keep[:, None]  # (b, K)
    mask = keep[:, None].expand_as(logp)  # (b, K): each sequence is one "token" of weight 1
    loss, _ = pg_loss(logp, adv, mask, "token_mean")
    agree = (tags == tags[:, :1]).flatten(2).all(-1).all(-1).float()  # (b,): all K samples the same sequence
    return loss, {"reward": rewards.mean(), "adv_abs": adv.abs().mean(), "samples_agree": agree.mean(), **comps}


ESTIMATORS: dict[str, Callable[[Step], tuple[torch.Tensor, dict[str, Any]]]] = {
    "expected": expected, "reinforce": sampled}


def penalties(logits: torch.Tensor, mask: torch.Tensor, ref_logprobs: torch.Tensor | None,
              rl: TaggerRLSettings, gold: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """β·KL(π || π_0) − c·H(π), each a per-word mean, averaged over the batch, + λ·CE(gold tags) (sft's loss: the mean
    over the batch's real words; read when rl.ce_coef > 0, the mixed objective).  logits (b, W, A), gold (b, W)."""
    logp = policy.word_logprobs(logits)  # (b, W, A)
    ent = policy.entropy(logits, mask).mean()
    out, stats = -rl.entropy_coef * ent, {"entropy": ent.detach()}
    if ref_logprobs is not None:
        kl = policy.kl(logp, ref_logprobs, mask).mean()
        out, stats["kl"] = out + rl.kl_coef * kl, kl.detach()
    if rl.ce_coef:
        ce = token_cross_entropy(logits, gold, mask)
        out, stats["ce"] = out + rl.ce_coef * ce, ce.detach()
    return out, stats


def setup_tagger_reward(rs: TaggerRewardSettings, run: RunContext | None = None) -> CombinedReward:
    """Built-ins (REWARDS), rm:FOLDER, module:function or callables; several processes stop together on a failure."""
    reward = build_rewards(rs.functions, rs.weights, REWARDS, on_error=rs.on_error,
                           device=run.accelerator.device if run else None)
    if run is not None and run.accelerator.num_processes > 1:
        reward.failed_on = failed_ranks(run.accelerator)
    return reward


def batch_loss_fn(cfg: TaggerRLConfig, run: RunContext, data: TaggedData, model: Any, reward: CombinedReward,
                  reference: Callable[[], Any], encoded: list[Any]) -> Callable[[Any], tuple]:
    """One batch: per-word logits → the estimator's loss → penalties → backward."""
    estimator, acc, tr = ESTIMATORS[cfg.rl.estimator], run.accelerator, transitions(data.tag_names, cfg.constrained)

    def batch_loss(batch: Any) -> tuple[torch.Tensor, int, dict[str, Any], Any]:
        batch = batch.to(acc.device)
        logits = policy.word_logits(model, batch.model_inputs(), batch.first)  # (b, W, A)
        idx = batch.index.tolist()
        words = [[data.train.tokens[i][w] for w in encoded[i].words] for i in idx]
        s = Step(logits, batch.word_mask, batch.tags, words, data.tag_names, reward, cfg.rl, tr, batch.weight == 0)
        loss, stats = estimator(s)
        # After the estimator, as in rl_classifier: with LoRA the reference pass draws dropout masks too.
        ref = (policy.reference_logprobs(model, reference, batch.model_inputs(), batch.first)
               if cfg.rl.kl_coef else None)
        extra, pstats = penalties(logits, batch.word_mask, ref, cfg.rl, batch.tags)
        acc.backward((loss + extra) * batch.weight)
        return loss, len(idx) * acc.num_processes, {**stats, **pstats}, idx
    return batch_loss


@discard_failed_start
@ends_trackers
def train_rl_tagger(cfg: TaggerRLConfig, show_progress: bool = True) -> dict[str, Any]:
    """Run RL on a tagger; returns the best validation score, the run folder and the test metrics."""
    data = setup_tagged_data(cfg.data)  # bad data, a bad best_metric or reward fail before the run folder exists
    check_tagger_metric(cfg.train, data)
    setup_tagger_reward(cfg.reward).check_columns(("tags", "tokens"), data.train.source)
    run = start_run(cfg, cfg.name, cfg.runs_dir, cfg.seed, accelerator_kwargs(cfg.train))
    opt, acc = cfg.train, run.accelerator
    model, tok = setup_tagger_model(cfg.model, data.tag_names, opt)
    reward = setup_tagger_reward(cfg.reward, run)
    reference = setup_reference(model, cfg.rl, acc.device)
    total = total_steps(len(data.train), opt)
    optim, sched = setup_optimizer(model, opt, total)
    model, optim, sched = acc.prepare(model, optim, sched)
    encoded = encode_tagged(tok, data.train.tokens, opt.max_length)
    meta = tagger_meta(cfg, data, f"rl-{cfg.rl.estimator}")
    run.print(f"rl (tagger, {cfg.rl.estimator}): {len(data.train)} train / {len(data.val)} val sentences, rewards "
              f"{list(reward.fns) if cfg.rl.estimator == 'reinforce' else cfg.rl.token_reward}, {total} steps")
    def keep_best(step: int, epoch: int, best: float | None) -> float | None:
        return report_and_keep_best(run, model, tok, data, cfg, step, epoch, best, meta)

    res = train_epochs(
        run, cfg.ckpt, model, optim, sched, epochs=opt.epochs, total=total, max_grad_norm=opt.max_grad_norm,
        log_every=opt.log_every, desc=f"rl-tagger-{cfg.rl.estimator}", show_progress=show_progress,
        batch_loss=batch_loss_fn(cfg, run, data, model, reward, reference, encoded),
        batches=lambda epoch, start: tag_batches(encoded, data.train.tags, opt, cfg.seed, epoch, run,
                                                 tok.pad_token_id or 0, start),
        end_of_epoch=keep_best, at_start=lambda: keep_best(0, 0, None),  # the start (often an sft model) can be best
        state={"reward": reward})
    return finish(run, data, cfg, res)
