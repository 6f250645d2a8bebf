"""Reward-driven fine-tuning of a causal LM: rollout → score → advantages → update.

One step: P prompts × K samples = B completions are sampled with the KV cache, scored by the
reward functions, turned into advantages by the chosen estimator, and used for one policy-
gradient update (REINFORCE / RLOO / GRPO / Dr. GRPO; the update itself is in `pg_update.py`),
or PPO's epochs (`ppo.py`).
"""
from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal

import torch
from tqdm.auto import tqdm

from ..algorithms import EMABaseline, get_advantage_fn, get_kl_controller
from ..config import DataSettings, ModelSettings, doc, nested
from ..data import load_examples
from ..models import apply_lora, enable_checkpointing, load_causal_lm
from ..prepack import prepack_policy
from ..policies.causal_lm import GenSettings, Rollout, format_prompts, sample, without_dropout
from ..rewards import CombinedReward, RewardError, build_rewards
from ..rewards import text as text_rewards
from ..checkpoint import Checkpointer, CheckpointSettings, StopGuard, rng_state
from ..run import RunContext, start_run
from .common import setup_reference
from .lm_report import EVAL_METRICS, evaluate, log_samples, log_train_step, save_policy
from .pg_update import grouped, kl_in_reward, no_grad_rows, reference_logprobs, update
from .ppo import PPOSettings, ValueHead, average_gradients, ppo_update


@dataclass(frozen=True)
class GenRLSettings:
    """Algorithm, batch and KL settings for generative RL."""

    algorithm: Literal["reinforce", "rloo", "grpo", "dr_grpo", "ppo"] = doc("grpo", "estimator (ppo: value head + GAE)")
    prompts_per_step: int = doc(4, "P: prompts per step")
    samples_per_prompt: int = doc(4, "K: completions per prompt (B = P·K per step)")
    micro_batch_size: int = doc(0, "rows per forward/backward (0 = B; PPO: its minibatch); never changes the update")
    inference_batch_size: int = doc(0, "rows per pass without gradient: sampling, reference and PPO value passes, "
                                       "held-out evaluation (0 = all at once; whole prompt groups); memory only")
    steps: int = doc(20, "optimiser steps")
    lr: float = doc(1e-4, "AdamW learning rate (constant)")
    max_grad_norm: float = doc(1.0, "gradient clipping (0 = off)")
    aggregation: Literal["auto", "token_mean", "seq_mean_token_mean", "seq_mean_token_sum"] = doc(
        "auto", "how token losses become one number (auto: seq_mean_token_sum for dr_grpo, else seq_mean_token_mean)")
    baseline: Literal["none", "mean", "ema"] = doc("mean", "reinforce: baseline")
    kl_coef: float = doc(0.04, "β of the KL to the reference policy (0 = no reference)")
    kl_estimator: Literal["k1", "k2", "k3"] = doc("k3", "per-token KL estimator")
    kl_mode: Literal["auto", "loss", "reward"] = doc(
        "auto", "KL as a loss term or a penalty in the reward (auto: reward for ppo, else loss)")
    kl_target: float = doc(0.0, "adaptive β (Ziegler et al. 2019): the per-token KL to hold; 0 = fixed β")
    kl_horizon: int = doc(10000, "adaptive β: samples over which β may change by ±20%")
    rewards: tuple = doc(("length",), "reward functions (built-ins or module:function)")
    reward_weights: tuple = doc((), "one weight per reward")
    reward_normalize: Literal["none", "running", "rank"] = doc("none", "per-reward normalisation before weighting")
    on_reward_error: Literal["raise", "skip"] = doc(
        "raise", "a reward that raises or gives NaN: stop showing the sample, or drop that sample (counted)")
    regex: str = doc("", "pattern for the `regex` reward (1 if the completion matches)")
    target_length: int = doc(20, "target words for the `length_penalty` reward")
    eval_every: int = doc(10, "steps between held-out evaluations (0 = only at the end)")
    eval_prompts: int = doc(16, "held-out prompts evaluated")
    eval_samples: int = doc(0, "held-out completions per prompt: 0 = one greedy; K = K sampled at gen.temperature "
                               "(the same draws at every evaluation)")
    best_metric: str = doc("reward", "held-out metric that picks checkpoints/best: reward, kl (sampled) or kl_greedy, "
                                     "ref_perplexity, distinct_1, distinct_2, length_words")
    best_mode: Literal["max", "min"] = doc("max", "whether a larger or a smaller best_metric is better")
    sample_every: int = doc(5, "steps between samples.jsonl rows")
    log_every: int = doc(1, "steps between metrics.jsonl rows")
    mixed_precision: Literal["no", "bf16"] = doc("no", "bf16 autocast for sampling and updates (CPUs with AVX512-BF16/AMX, GPUs)")
    gradient_checkpointing: bool = doc(False, "keep only each layer's input for the backward pass and recompute the rest "
                                       "(less memory, one more forward's compute)")

    def resolved(self) -> GenRLSettings:
        """These settings with `auto` made the algorithm's own choice: Dr. GRPO's per-sequence token sum over a
        constant length (Liu et al. 2025), PPO's KL penalty in the reward (Ziegler et al. 2019), the others' KL
        as a loss term (GRPO). A run resolves them before its config.yaml is written, so the file says what ran."""
        agg = self.aggregation
        if agg == "auto":
            agg = "seq_mean_token_sum" if self.algorithm == "dr_grpo" else "seq_mean_token_mean"
        mode = self.kl_mode if self.kl_mode != "auto" else "reward" if self.algorithm == "ppo" else "loss"
        return replace(self, aggregation=agg, kl_mode=mode)


@dataclass(frozen=True)
class GenRLConfig:
    """`rewardtune rl` with `policy: causal-lm`."""

    model: ModelSettings = nested(lambda: ModelSettings(name="smollm2-135m-instruct"), "causal LM to fine-tune")
    data: DataSettings = nested(lambda: DataSettings(path="demo-prompts", label_column=""), "prompts")
    gen: GenSettings = nested(GenSettings, "sampling")
    rl: GenRLSettings = nested(GenRLSettings, "algorithm, batch, KL, rewards")
    ppo: PPOSettings = nested(PPOSettings, "PPO epochs, minibatches, clipping, GAE (rl.algorithm=ppo)")
    ckpt: CheckpointSettings = nested(CheckpointSettings, "resumable checkpoints, resumption, stop/NaN handling")
    policy: Literal["causal-lm"] = doc("causal-lm", "what the action is (a completion)")
    runs_dir: str = doc("runs", "folder holding run folders")
    name: str = doc("rl-lm", "run folder name")
    seed: int = doc(0, "global seed")


def length_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float | None]:
    """A toy reward for smoke tests: completion length in words, capped at 10, divided by 10."""
    return [min(len(c.split()), 10) / 10 for c in completions]


def setup_reward(rl: GenRLSettings, device: Any = None) -> CombinedReward:
    """Built-ins: length (toy), lexicon, regex (rl.regex), length_penalty (rl.target_length); or rm:FOLDER (run on
    `device`, the policy's), module:fn."""
    builtins: dict[str, Callable[[], Any]] = {
        "length": lambda: length_reward, "lexicon": text_rewards.lexicon,
        "regex": lambda: text_rewards.regex(rl.regex), "length_penalty": lambda: text_rewards.length_penalty(rl.target_length),
    }
    return build_rewards(rl.rewards, rl.reward_weights, builtins, rl.reward_normalize, rl.on_reward_error, device)


def setup_kl_controller(rl: GenRLSettings) -> Any:
    """β as a controller: fixed, or adaptive towards `kl_target` (its state is checkpointed)."""
    if rl.kl_target > 0:
        return get_kl_controller("adaptive", value=rl.kl_coef, target=rl.kl_target, horizon=rl.kl_horizon)
    return get_kl_controller("fixed", value=rl.kl_coef)


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


def check_settings(rl: GenRLSettings, n_prompts: int, lora: bool = True) -> None:
    if rl.algorithm in ("rloo", "grpo", "dr_grpo") and rl.samples_per_prompt < 2:  # ppo and reinforce do not
        raise ValueError(f"algorithm {rl.algorithm!r} compares samples within a group: "
                         f"samples_per_prompt must be ≥ 2, got {rl.samples_per_prompt}")
    negative = [n for n in ("micro_batch_size", "inference_batch_size", "eval_samples") if getattr(rl, n) < 0]
    if negative:
        raise ValueError(f"rl.{negative[0]}={getattr(rl, negative[0])} must be ≥ 0 (0 = all rows / greedy)")
    kl_name = "kl" if rl.eval_samples else "kl_greedy"  # the evaluation logs one of them
    if rl.best_metric not in EVAL_METRICS or rl.best_metric in ("kl", "kl_greedy") and rl.best_metric != kl_name:
        valid = [m for m in EVAL_METRICS if m not in ("kl", "kl_greedy")] + [kl_name]
        raise ValueError(f"rl.best_metric={rl.best_metric!r} is not a held-out metric of this evaluation "
                         f"(rl.eval_samples={rl.eval_samples}); valid: {', '.join(valid)}")
    if not lora and not rl.kl_coef and rl.best_metric in ("kl", "kl_greedy", "ref_perplexity"):
        raise ValueError(f"rl.best_metric={rl.best_metric!r} is measured against the reference policy, which exists "
                         "with LoRA (model.lora.r > 0: the adapter disabled) or with rl.kl_coef > 0 (a frozen copy)")
    if n_prompts == 0:
        raise ValueError("the prompt set is empty")


def check_prompt_lengths(tok: Any, prompts: list[str], max_tokens: int, chat_template: bool = False) -> None:
    """Every prompt as sampling will tokenise it (through the chat template when asked) fits in `max_tokens`."""
    texts = format_prompts(tok, prompts, chat_template)
    lengths = [len(ids) for ids in tok(texts, add_special_tokens=not chat_template)["input_ids"]]
    bad = [i for i, n in enumerate(lengths) if n > max_tokens]
    if bad:
        how = " with the chat template" if chat_template else ""
        raise ValueError(f"{len(bad)} prompt(s) longer than {max_tokens} tokens{how} (the context minus "
                         f"max_new_tokens); first: prompt {bad[0] + 1}, {lengths[bad[0]]} tokens: {prompts[bad[0]][:80]!r}")


def check_limits(cfg: GenRLConfig, run: RunContext, model: Any, tok: Any, prompts: list[str]) -> int:
    """The longest prompt the context allows (checked for every prompt before any step, not at the step
    that meets it); and P must split into whole prompt groups per process."""
    config = run.accelerator.unwrap_model(model).config
    max_prompt = getattr(config, "max_position_embeddings", 2048) - cfg.gen.max_new_tokens
    check_prompt_lengths(tok, prompts, max_prompt, cfg.gen.chat_template)
    world = run.accelerator.num_processes
    if cfg.rl.prompts_per_step % world:
        raise ValueError(f"rl.prompts_per_step={cfg.rl.prompts_per_step} must be a multiple of the {world} processes: "
                         "each process takes whole prompt groups")
    return max_prompt


def setup_prompts(cfg: GenRLConfig) -> tuple[list[str], list[str]]:
    """(training prompts in a seeded order, held-out prompts): `data.val_path`, else carved from `data.path`."""
    rl = cfg.rl
    prompts = load_examples(cfg.data.path, cfg.data.prompt_column, None).texts
    check_settings(rl, len(prompts), cfg.model.lora.r > 0)  # before the run folder exists: nothing is lost
    order = list(range(len(prompts)))
    random.Random(cfg.seed).shuffle(order)
    if cfg.data.val_path:  # a fixed held-out prompt set
        held_out = load_examples(cfg.data.val_path, cfg.data.prompt_column, None).texts[:rl.eval_prompts]
        return [prompts[i] for i in order], held_out
    held_out = [prompts[i] for i in order[:rl.eval_prompts]]
    return [prompts[i] for i in order[rl.eval_prompts:]] or held_out, held_out


def ddp_settings() -> Any:
    """DDP without buffer broadcasts. DDP broadcasts the model's buffers at every forward call, a collective, so
    processes whose number of forward calls differs (prompt sharing takes two calls, a rollout whose rows all
    ended after one token takes one) would wait on each other forever. A causal LM's buffers (rotary
    frequencies) are constants, the same on every process."""
    from accelerate.utils import DistributedDataParallelKwargs

    return DistributedDataParallelKwargs(broadcast_buffers=False)


def setup_policy(cfg: GenRLConfig, run: RunContext) -> tuple[Any, Any, Any, list, Any, Callable[[], Any]]:
    """(model, tokenizer, PPO value head or None, trained parameters, optimiser, reference context), prepared."""
    lora = cfg.model.lora  # frozen bf16 weights are loaded as such: no float32 copy on the way
    model, tok = load_causal_lm(cfg.model.name, getattr(torch, lora.base_dtype) if lora.r > 0 else None)
    if cfg.rl.gradient_checkpointing:
        enable_checkpointing(model)
    model = apply_lora(model, cfg.model.lora)
    if cfg.rl.gradient_checkpointing:  # transformers checkpoints only in training mode; without dropout that
        without_dropout(model).train()  # mode computes what eval mode does (rollouts must match the update)
    ref = setup_reference(model, cfg.rl, run.accelerator.device)
    # The value head stays outside DDP (it reads the LM head's inputs after the forward): placed on the device
    # here, its gradients averaged over processes in ppo_step.
    head = ValueHead(model.config.hidden_size).to(run.accelerator.device) if cfg.rl.algorithm == "ppo" else None
    params = [p for p in model.parameters() if p.requires_grad] + (list(head.parameters()) if head else [])
    optim = torch.optim.AdamW(params, lr=cfg.rl.lr)
    model, optim = run.accelerator.prepare(model, optim)
    # After prepare: only weights that stay on the CPU are packed. Not under bf16 autocast, whose matmuls do not
    # use them (held-out evaluation, run without autocast, would then pack copies only for itself).
    if lora.r > 0 and lora.prepack and cfg.rl.mixed_precision == "no":
        prepack_policy(run.accelerator.unwrap_model(model), run.print)
    return model, tok, head, params, optim, ref


def optimise(run: RunContext, model: Any, head: Any, optim: Any, params: list, ref: Callable[[], Any], ro: Rollout,
             scores: torch.Tensor, rewards: torch.Tensor, cfg: GenRLConfig, ema: EMABaseline, beta: float,
             ok: Callable[[torch.Tensor, Any], bool]) -> dict[str, float]:
    """The update of one step: PPO's epochs, or advantages → one policy-gradient step (KL in loss or reward)."""
    rl, gen = cfg.rl, cfg.gen
    if head is not None:
        return ppo_step(run, model, head, optim, params, ref, ro, scores, cfg, ok, beta)
    shaped, kl_tok, acc = rewards, None, run.accelerator
    if rl.kl_mode == "reward" and beta:  # the penalty goes into the reward, not the loss
        with acc.autocast():  # the LM head runs outside the prepared forward (policies/head.py)
            shaped, kl_tok = kl_in_reward(model, ref, ro, rewards, beta, rl, gen)
    step_rl = replace(rl, kl_coef=0.0 if kl_tok is not None else beta)
    gather = (lambda r: acc.gather(r.to(acc.device)).cpu()) if acc.num_processes > 1 else None
    adv = advantages(shaped, rl, ema, gather, acc.process_index)
    stats = update(run, model, optim, ref, ro, adv.to(ro.logprobs.device), step_rl, gen, ok)
    return stats if kl_tok is None else {**stats, "kl": kl_tok}


def train_rl_generate(cfg: GenRLConfig, show_progress: bool = True) -> dict[str, Any]:
    """Run generative RL; returns the run folder, the first and last held-out evaluations and the best value of
    rl.best_metric."""
    cfg = replace(cfg, rl=cfg.rl.resolved())  # `auto` settings made explicit, before config.yaml is written
    rl, gen = cfg.rl, cfg.gen
    train_prompts, held_out = setup_prompts(cfg)
    run = start_run(cfg, cfg.name, cfg.runs_dir, cfg.seed, {"mixed_precision": rl.mixed_precision,
                                                            "kwargs_handlers": [ddp_settings()]})
    if train_prompts is held_out:  # setup_prompts had none left to train on
        run.print(f"warning: data.path has no more than rl.eval_prompts={rl.eval_prompts} prompts, so training uses the "
                  "held-out prompts too and held-out rewards measure training prompts; give data.val_path or more prompts")
    model, tok, head, params, optim, ref = setup_policy(cfg, run)
    reward = setup_reward(rl, run.accelerator.device)
    max_prompt = check_limits(cfg, run, model, tok, train_prompts + held_out)
    rank, world = run.accelerator.process_index, run.accelerator.num_processes
    ema, kl_ctl = EMABaseline(), setup_kl_controller(rl)
    run.print(f"rl ({rl.algorithm}, causal-lm): {rl.prompts_per_step} prompts × {rl.samples_per_prompt} samples "
              f"= {rl.prompts_per_step * rl.samples_per_prompt} completions/step, {rl.steps} steps, "
              f"rewards {list(reward.fns)}, KL β={rl.kl_coef} ({rl.kl_estimator}), best by {rl.best_metric}")
    guard = StopGuard(cfg.ckpt.stop_after)
    cp = Checkpointer(run, cfg.ckpt, {"model": model, **({"value_head": head} if head else {})}, optim, None, guard)
    algo = {"ema": ema, "kl": kl_ctl, "reward": reward}
    held_out_eval = lambda step: evaluate(run, model, tok, reward, held_out, gen, step, max_prompt,  # noqa: E731
                                          rl.inference_batch_size, rl.eval_samples, ref if rl.kl_coef else None)
    start, best, first_eval, last_eval = restore_or_start(cp, algo, lambda: held_out_eval(0), rl.best_metric,
                                                          cfg.seed, rank, world)
    if start == 0:  # the starting policy is the first best: checkpoints/best exists even if nothing beats it
        keep_if_best(run, model, tok, head, rl, 0, first_eval, float("-inf") if rl.best_mode == "max" else float("inf"))
    cycle = itertools.islice(itertools.cycle(train_prompts), start * rl.prompts_per_step, None)

    def snapshot() -> dict[str, Any]:
        return {"best": best, "eval_start": first_eval, "eval": last_eval,
                "algo": {k: obj.state_dict() for k, obj in algo.items()}}

    with guard:
        for step in tqdm(range(start + 1, rl.steps + 1), initial=start, total=rl.steps,
                         disable=not (show_progress and run.is_main), desc=f"rl-{rl.algorithm}"):
            batch = [next(cycle) for _ in range(rl.prompts_per_step)]  # the global batch, the same on every process
            local, began = rl.prompts_per_step // world, rng_state()
            try:
                ro, scored, rewards, dropped, times = rollout(run, model, tok, reward,
                                                              batch[rank * local:(rank + 1) * local], cfg, max_prompt)
            except RewardError as e:  # nothing of this step is done yet: keep what the steps before it did
                raise RewardError(f"step {step}: {e}; {cp.save_before_failure(step - 1, snapshot, began)}") from e
            t2 = time.time()
            ok = lambda loss, norm: cp.ok_to_step(step, loss, norm, list(range(len(ro.prompts))))  # noqa: E731
            beta = kl_ctl.value
            stats = optimise(run, model, head, optim, params, ref, ro, scored.total, rewards, cfg, ema, beta, ok)
            if world > 1:  # log and adapt β on the global batch, so every process keeps the same β
                rewards, stats = global_batch(run, rewards, stats)
            kl_ctl.update(stats.get("kl", 0.0), rewards.numel())
            t3 = time.time()
            if step % rl.log_every == 0:
                log_train_step(run, step, ro, scored, rewards, stats, beta=beta, reward_dropped=dropped, **times,
                               time_update=t3 - t2)
            if rl.sample_every and step % rl.sample_every == 0:
                log_samples(run, step, ro, scored, rl.samples_per_prompt)
            if (rl.eval_every and step % rl.eval_every == 0) or step == rl.steps:
                last_eval = held_out_eval(step)
                best = keep_if_best(run, model, tok, head, rl, step, last_eval, best)
            if step < rl.steps and cp.step_done(step, snapshot):
                return {"stopped": True, "signal": guard.signal_name, "run_dir": str(run.dir), "steps": step}
        cp.save(rl.steps, snapshot())
    save_policy(run, model, tok, head)
    return {"run_dir": str(run.dir), "steps": rl.steps, "eval_start": first_eval, "eval": last_eval,
            "best": {rl.best_metric: best}, "checkpoint_save_s": cp.save_s}


def keep_if_best(run: RunContext, model: Any, tok: Any, head: Any, rl: GenRLSettings, step: int,
                 metrics: dict[str, float], best: float) -> float:
    """The best rl.best_metric so far after this evaluation; when it improved, the policy is saved in
    checkpoints/best and the step logged as a `best` row."""
    value = metrics[rl.best_metric]
    if not (value > best if rl.best_mode == "max" else value < best):
        return best
    save_policy(run, model, tok, head, "best")
    run.log(step, split="best", **{rl.best_metric: value})
    return value


def restore_or_start(cp: Checkpointer, algo: dict[str, Any], evaluate_start: Callable[[], dict[str, float]], metric: str,
                     seed: int, rank: int, world: int) -> tuple[int, float, dict[str, float], dict[str, float]]:
    """(first step done, best held-out `metric` so far, first and last evaluation): from the newest checkpoint
    (with the algorithm state), or from step 0 after evaluating the starting policy."""
    saved = cp.restore()
    if saved:
        for k, obj in algo.items():
            obj.load_state_dict(saved["algo"][k])
        return saved["step"], saved["best"], saved["eval_start"], saved["eval"]
    first_eval = evaluate_start()
    if world > 1:  # the same seed everywhere would sample the same completions on every process
        torch.manual_seed(seed + 1_000_003 * rank)
    return 0, first_eval[metric], first_eval, first_eval


def rollout(run: RunContext, model: Any, tok: Any, reward: CombinedReward, prompts: list[str], cfg: GenRLConfig,
            max_prompt: int) -> tuple[Rollout, Any, torch.Tensor, int, dict[str, float]]:
    """Sample K completions per prompt and score them: (rollout, scores, (P, K) rewards, dropped, timings)."""
    t0 = time.time()
    with run.accelerator.autocast():  # generate() bypasses the prepared forward, so autocast here
        ro = sample(run.accelerator.unwrap_model(model), tok, prompts, cfg.rl.samples_per_prompt, cfg.gen, max_prompt,
                    rows=cfg.rl.inference_batch_size)
    t1 = time.time()
    scored = reward(ro.prompts, ro.completions)
    rewards, dropped = drop_failed(ro, scored, replace(cfg.rl, prompts_per_step=len(prompts)))  # (P/world, K), count
    return ro, scored, rewards, dropped, {"time_generate": t1 - t0, "time_score": time.time() - t1}


def global_batch(run: RunContext, rewards: torch.Tensor, stats: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    """Every process's rewards (P, K) and the mean of each statistic over processes (one collective each)."""
    acc = run.accelerator
    means = acc.reduce(torch.tensor(list(stats.values()), device=acc.device), "mean").tolist()
    return acc.gather(rewards.to(acc.device)).cpu(), dict(zip(stats, means))


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
        return ppo_update(acc.backward, step, model, head, ro, scores.to(ro.logprobs.device), ref_logp,
                          beta, cfg.ppo, cfg.gen, all_sum, cfg.rl.micro_batch_size, no_grad_rows(cfg.rl),
                          cfg.rl.kl_estimator, cfg.rl.kl_mode)
