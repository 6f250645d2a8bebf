"""Reward-driven fine-tuning of a causal LM: rollout → score → advantages → update.

One step: P prompts × K samples = B completions are sampled with the KV cache, scored by the
reward functions, turned into advantages by the chosen estimator, and used for one policy-
gradient update (REINFORCE / RLOO / GRPO / Dr. GRPO; the update itself is in `pg_update.py`),
or PPO's epochs (`ppo.py`). What the run sets up before its first step is in `gen_setup.py`.
"""
from __future__ import annotations

import itertools
import json
import time
from dataclasses import replace
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..algorithms import EMABaseline, get_advantage_fn
from ..checkpoint import CheckpointError, Checkpointer, StopGuard, rng_state
from ..config import dump_config
from ..policies.causal_lm import Rollout, sample
from ..rewards import CombinedReward, RewardError
from ..collectives import gather_to_cpu, over_processes
from ..run import RunContext, seed_this_process, start_run
from .common import setup_reference  # noqa: F401  (re-exported: the reference is a setup step)
from .gen_setup import (GenRLConfig, GenRLSettings, check_limits, check_prompt_lengths, check_settings,  # noqa: F401
                        ddp_settings, length_reward, setup_kl_controller, setup_policy, setup_prompts, setup_reward)
from .lm_report import HeldOut, TrainBatch, evaluate, log_samples, log_train_step, save_policy
from .pg_update import grouped, kl_in_reward, no_grad_rows, reference_logprobs, update
from .ppo import average_gradients, ppo_update


def advantages(rewards: torch.Tensor, rl: GenRLSettings, ema: EMABaseline,
               gather: Callable[[torch.Tensor], torch.Tensor] | None = None, rank: int = 0) -> torch.Tensor:
    """(P, K) rewards of this process → (P·K,) advantages with the configured estimator.

    With several processes, `gather` returns every process's rewards (P·world, K) in rank order: the
    estimator then sees the global batch, as one process would, so REINFORCE's batch-mean and EMA
    baselines are the global batch's (and the EMA's state is the same on every process); this
    process keeps its own rows. Group estimators (GRPO, RLOO) give the same either way.
    """
    full = gather(rewards) if gather is not None else rewards  # (P·world, K)
    fn = get_advantage_fn(rl.algorithm)
    adv = fn(full, baseline=rl.baseline, ema=ema) if rl.algorithm == "reinforce" else fn(full)
    P = rewards.shape[0]
    return adv.reshape(full.shape)[rank * P:(rank + 1) * P].reshape(-1)  # (P·K,)


def drop_failed(ro: Rollout, scored: Any, rl: GenRLSettings) -> tuple[torch.Tensor, int]:
    """(P, K) rewards; samples whose reward failed (on_reward_error=skip) get no gradient: their completion
    mask is cleared, and their reward is set to the mean of their group's others, so that group-relative
    baselines are computed from the samples that were scored."""
    rewards = scored.total.reshape(rl.prompts_per_step, rl.samples_per_prompt).clone()  # (P, K)
    if scored.dropped is None or not scored.dropped.any():
        return rewards, 0
    bad = scored.dropped.reshape(rewards.shape)  # (P, K)
    kept = (~bad).float()
    group_mean = (rewards * kept).sum(-1, keepdim=True) / kept.sum(-1, keepdim=True).clamp(min=1)  # (P, 1)
    rewards = torch.where(bad, group_mean.expand_as(rewards), rewards)
    ro.completion_mask[scored.dropped.to(ro.completion_mask.device)] = 0
    return rewards, int(bad.sum())


def optimise(run: RunContext, model: Any, head: Any, optim: Any, params: list, ref: Callable[[], Any], ro: Rollout,
             scores: torch.Tensor, rewards: torch.Tensor, cfg: GenRLConfig, ema: EMABaseline, beta: float,
             ok: Callable[[torch.Tensor, Any], bool]) -> dict[str, float]:
    """The update of one step: PPO's epochs, or advantages → one policy-gradient step (KL in loss or reward)."""
    rl, gen = cfg.rl.resolved(), cfg.gen
    if head is not None:
        return ppo_step(run, model, head, optim, params, ref, ro, scores, cfg, ok, beta)
    shaped, kl_tok, acc = rewards, None, run.accelerator
    if rl.kl_mode == "reward" and beta:  # the penalty goes into the reward, not the loss
        with acc.autocast():  # the LM head runs outside the prepared forward (policies/head.py)
            shaped, kl_tok = kl_in_reward(model, ref, ro, rewards, beta, rl, gen)
    step_rl = replace(rl, kl_coef=0.0 if kl_tok is not None else beta)
    gather = gather_to_cpu(acc) if acc.num_processes > 1 else None
    adv = advantages(shaped, rl, ema, gather, acc.process_index)
    stats = update(run, model, optim, ref, ro, adv.to(ro.logprobs.device), step_rl, gen, ok)
    stats = stats if kl_tok is None else {**stats, "kl": kl_tok}
    return token_mean_shares(acc, stats, ro.completion_mask) if acc.num_processes > 1 else stats


def train_rl_generate(cfg: GenRLConfig, show_progress: bool = True) -> dict[str, Any]:
    """Run generative RL; returns the run folder, the first and last held-out evaluations and the best value of
    rl.best_metric."""
    cfg = replace(cfg, rl=cfg.rl.resolved())  # `auto` settings made explicit, before config.yaml is written
    rl, gen = cfg.rl, cfg.gen
    train_prompts, held_out = setup_prompts(cfg)
    run = start_run(cfg, cfg.name, cfg.runs_dir, cfg.seed, {"mixed_precision": rl.mixed_precision,
                                                            "kwargs_handlers": [ddp_settings()]})
    model, tok, head, params, optim, ref = setup_policy(cfg, run)
    reward = setup_reward(rl, run.accelerator)
    max_prompt = check_limits(cfg, run, model, tok, train_prompts + held_out)
    rank, world = run.accelerator.process_index, run.accelerator.num_processes
    ema, kl_ctl = EMABaseline(), setup_kl_controller(rl)
    guard = StopGuard(cfg.ckpt.stop_after)
    cp = Checkpointer(run, cfg.ckpt, {"model": model, **({"value_head": head} if head else {})}, optim, None, guard)
    algo = {"ema": ema, "kl": kl_ctl, "reward": reward}
    held = HeldOut(run, model, tok, head, rl, lambda step: evaluate(
        run, model, tok, reward, held_out, gen, step, max_prompt, rl.inference_batch_size, rl.eval_samples,
        ref if rl.kl_coef else None))
    start, cfg = restore_or_start(cp, algo, held, cfg)
    announce(run, cfg.rl, reward, train_prompts is held_out)
    cycle = itertools.islice(itertools.cycle(train_prompts), start * rl.prompts_per_step, None)
    snapshot = lambda: {**held.state_dict(), "algo": {k: obj.state_dict() for k, obj in algo.items()},  # noqa: E731
                        "format": STATE_FORMAT}

    with guard:
        for step in tqdm(range(start + 1, rl.steps + 1), initial=start, total=rl.steps,
                         disable=not (show_progress and run.is_main), desc=f"rl-{rl.algorithm}"):
            batch = [next(cycle) for _ in range(rl.prompts_per_step)]  # the global batch, the same on every process
            local, began = rl.prompts_per_step // world, rng_state()
            ro, scored, rewards, dropped, times = rollout(  # this process's whole prompt groups
                run, model, tok, reward, batch[rank * local:(rank + 1) * local], cfg, max_prompt,
                lambda: f"while scoring step {step}; {cp.save_before_failure(step - 1, snapshot, began)}")
            t2 = time.time()
            ok = lambda loss, norm: cp.ok_to_step(step, loss, norm, list(range(len(ro.prompts))))  # noqa: E731
            beta = kl_ctl.value
            stats = optimise(run, model, head, optim, params, ref, ro, scored.total, rewards, cfg, ema, beta, ok)
            tb = TrainBatch.of(ro, scored, rewards, dropped)
            if world > 1:  # log and adapt β on the global batch, so every process keeps the same β
                tb, stats = global_batch(run, tb, stats)
            kl_ctl.update(stats.get("kl", 0.0), tb.rewards.numel())
            t3 = time.time()
            if step % rl.log_every == 0:
                log_train_step(run, step, tb, stats, beta=beta, **times, time_update=t3 - t2)
            if rl.sample_every and step % rl.sample_every == 0:
                log_samples(run, step, ro, scored, rl.samples_per_prompt)
            if held.due(step):
                evaluate_or_rescue(held, cp, step, snapshot)
            if step < rl.steps and cp.step_done(step, snapshot):
                return {"stopped": True, "signal": guard.stop_signal, "run_dir": str(run.dir), "steps": step}
        cp.save(rl.steps, snapshot())
    save_policy(run, model, tok, head)
    return {"run_dir": str(run.dir), "steps": rl.steps, "eval_start": held.first, "eval": held.last,
            "held_out_prompts": len(held_out), "best": {rl.best_metric: held.best}, "checkpoint_save_s": cp.save_s}


def announce(run: RunContext, rl: GenRLSettings, reward: CombinedReward, no_held_out: bool) -> None:
    """The run's batch, rewards, KL and choice of best, once at the start (and a warning without held-out prompts)."""
    if no_held_out:  # setup_prompts had none left to train on
        run.print(f"warning: data.path has no more than rl.eval_prompts={rl.eval_prompts} prompts, so training uses the "
                  "held-out prompts too and held-out rewards measure training prompts; give data.val_path or more prompts")
    run.print(f"rl ({rl.algorithm}, causal-lm): {rl.prompts_per_step} prompts × {rl.samples_per_prompt} samples "
              f"= {rl.prompts_per_step * rl.samples_per_prompt} completions/step, {rl.steps} steps, "
              f"rewards {list(reward.fns)}, KL β={rl.kl_coef} ({rl.kl_estimator}, in the {rl.kl_mode}), "
              f"aggregation {rl.aggregation}, best by {rl.best_metric}")


# 2: PPO follows rl.kl_mode and rl.kl_estimator; held-out rewards are raw. Checkpoints without "format" are 1.
STATE_FORMAT = 2


def restore_or_start(cp: Checkpointer, algo: dict[str, Any], held: HeldOut,
                     cfg: GenRLConfig) -> tuple[int, GenRLConfig]:
    """The last step done, and the config to go on with: from the newest checkpoint (with the algorithm's and the
    held-out state), or step 0 after evaluating the starting policy."""
    saved = cp.restore()
    if not saved:
        held.evaluate(0)
        seed_this_process(cp.run)  # else every process would sample the same completions
        return 0, cfg
    for k, obj in algo.items():
        obj.load_state_dict(saved["algo"][k])
    held.load_state_dict(saved)
    cfg = cfg if saved.get("format", 1) >= STATE_FORMAT else go_on_as_before(cp.run, cfg, held)
    if saved.get("eval_due") == saved["step"]:  # saved by evaluate_or_rescue: that evaluation first
        held.evaluate(saved["step"])
    return saved["step"], cfg


def evaluate_or_rescue(held: HeldOut, cp: Checkpointer, step: int, snapshot: Callable[[], dict[str, Any]]) -> None:
    """The held-out evaluation after step `step`; if its reward fails, the state after the step is checkpointed
    first, marked so that a resumed run evaluates it before going on (every process: see save_before_failure)."""
    try:
        held.evaluate(step)
    except RewardError as e:
        try:
            cp.save(step, {**snapshot(), "eval_due": step})
        except CheckpointError as c:  # the reward's error stays the one raised
            raise RewardError(f"{e}; while evaluating after step {step}; the state could not be checkpointed: {c}") from e
        raise RewardError(f"{e}; while evaluating after step {step}; the state after step {step} is checkpointed in "
                          f"{cp.run.checkpoints / f'step-{step:08d}'} and a resumed run evaluates it first: fix the "
                          f"cause and resume with --resume {cp.run.dir} (ckpt.resume=auto)") from e


def go_on_as_before(run: RunContext, cfg: GenRLConfig, held: HeldOut) -> GenRLConfig:
    """A checkpoint without a state format (written before this code) resumes as it ran.

    PPO whose config says rl.kl_mode=loss (the old default, which PPO ignored: it always put the k1 KL in the
    reward) goes on with k1 in the reward, and the run's config.yaml is rewritten to say so (the change recorded in
    config_changes.jsonl), so later checkpoints and resumptions keep it. Held-out rewards, normalised then and raw
    now, are not compared with a best kept on the old scale: that policy is moved aside, not lost."""
    rl = cfg.rl
    if rl.algorithm == "ppo" and rl.kl_mode == "loss":
        cfg = replace(cfg, rl=replace(rl, kl_mode="reward", kl_estimator="k1"))
        if run.is_main:
            (run.dir / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
            with open(run.dir / "config_changes.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"time": time.time(), "why": "PPO from before rl.kl_mode applied to it", "changed": {
                    "rl.kl_mode": [rl.kl_mode, "reward"], "rl.kl_estimator": [rl.kl_estimator, "k1"]}}) + "\n")
        run.print("note: this PPO run started when PPO always put the k1 KL in the reward; it goes on that way "
                  "(config.yaml now says rl.kl_mode=reward, rl.kl_estimator=k1)")
    if rl.reward_normalize != "none" and rl.best_metric == "reward":
        old, aside = run.checkpoints / "best", run.checkpoints / "best-normalised-reward"
        if run.is_main and old.is_dir() and not aside.exists():  # (exists: moved by an earlier, aborted resumption)
            old.rename(aside)
        held.best = float("-inf") if rl.best_mode == "max" else float("inf")
        run.print("note: held-out rewards were normalised when this run started and are raw now (its eval_start is on "
                  "the old scale); the best policy so far is in checkpoints/best-normalised-reward, and "
                  "checkpoints/best starts again")
    return cfg


def rollout(run: RunContext, model: Any, tok: Any, reward: CombinedReward, prompts: list[str], cfg: GenRLConfig,
            max_prompt: int, rescue: Callable[[], str] = lambda: "") -> tuple[Rollout, Any, torch.Tensor, int, dict[str, float]]:
    """Sample K completions per prompt and score them: (rollout, scores, (P, K) rewards, dropped, timings). A reward
    that fails (RewardError) fails before this step changed anything: `rescue` keeps the steps before it (see
    `Checkpointer.save_before_failure`) and says how, in the error."""
    t0 = time.time()
    with run.accelerator.autocast():  # generate() bypasses the prepared forward, so autocast here
        ro = sample(run.accelerator.unwrap_model(model), tok, prompts, cfg.rl.samples_per_prompt, cfg.gen, max_prompt,
                    rows=cfg.rl.inference_batch_size)
    t1 = time.time()
    try:
        scored = reward(ro.prompts, ro.completions)
    except RewardError as e:
        raise RewardError(f"{e}; {rescue()}") from e
    rewards, dropped = drop_failed(ro, scored, replace(cfg.rl, prompts_per_step=len(prompts)))  # (P/world, K), count
    return ro, scored, rewards, dropped, {"time_generate": t1 - t0, "time_score": time.time() - t1}


def global_batch(run: RunContext, tb: TrainBatch, stats: dict[str, float]) -> tuple[TrainBatch, dict[str, float]]:
    """Every process's rewards, lengths and reward components in rank order, their dropped samples summed, and each
    statistic's mean over processes (each is a share whose mean is the global value: see `token_mean_shares`)."""
    gather, row = gather_to_cpu(run.accelerator), over_processes(run, {**stats, "reward_dropped": float(tb.dropped)})
    dropped = int(row.pop("reward_dropped"))
    return TrainBatch(gather(tb.rewards), gather(tb.lengths), {k: gather(v) for k, v in tb.components.items()},
                      dropped), row


def token_mean_shares(acc: Any, stats: dict[str, float], mask: torch.Tensor,
                      keys: tuple[str, ...] = ("kl", "entropy")) -> dict[str, float]:
    """This process's token means (`keys`) as shares of the global token mean: × its tokens / (all tokens /
    processes), so that their plain mean over processes (`global_batch`) weighs every token alike (a collective)."""
    here = float(mask.sum())
    per_process = float(acc.reduce(torch.tensor(here, device=acc.device), "mean"))
    return {k: v * here / max(per_process, 1.0) if k in keys else v for k, v in stats.items()}


def ppo_step(run: RunContext, model: Any, head: Any, optim: Any, params: list, ref: Callable[[], Any], ro: Rollout,
             scores: torch.Tensor, cfg: GenRLConfig, ok: Callable[[torch.Tensor, Any], bool], beta: float) -> dict[str, float]:
    """Reference log-probs for the KL-in-reward, then PPO's epochs of minibatch updates."""
    acc = run.accelerator
    with acc.autocast():  # bf16 mixed precision: the chunked LM head runs outside the prepared forward
        ref_logp = reference_logprobs(model, ref, ro, cfg.gen.temperature, no_grad_rows(cfg.rl),
                                      grouped(cfg.rl)) if beta else None

    def step(loss: torch.Tensor) -> None:
        with torch.autocast(acc.device.type, enabled=False):  # the optimiser step is not a forward pass
            if acc.num_processes > 1:  # as DDP averages the policy's gradients
                average_gradients(list(head.parameters()), lambda g: acc.reduce(g, "mean"))
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.rl.max_grad_norm or float("inf"))
            if ok(loss, norm):
                optim.step()
            optim.zero_grad(set_to_none=True)
    all_sum = (lambda t: acc.reduce(t.to(acc.device), "sum").to(t.device)) if acc.num_processes > 1 else None
    with acc.autocast():
        rl = cfg.rl.resolved()  # "auto" → PPO's own choices, for callers that pass an unresolved config
        return ppo_update(acc.backward, step, model, head, ro, scores.to(ro.logprobs.device), ref_logp,
                          beta, cfg.ppo, cfg.gen, all_sum, rl.micro_batch_size, no_grad_rows(rl),
                          rl.kl_estimator, rl.kl_mode, lambda: acc.no_sync(model))
