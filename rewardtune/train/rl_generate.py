"""Reward-driven fine-tuning of a causal LM or a seq2seq model (`policies.families`): rollout → score → advantages → update → log → evaluate → checkpoint.

One step: P prompts × K samples = B completions are sampled with the KV cache, scored by the reward
functions, turned into advantages by the chosen estimator, and used for one policy-gradient update
(REINFORCE / RLOO / GRPO / Dr. GRPO: `pg_update.pg_step`) or PPO's epochs (`ppo.ppo_step`), picked once by
rl.algorithm. The objective both minimise is `algorithms.objectives.pg_objective`. What the run sets up before
its first step is in `gen_setup.py` (each step replaceable); its settings in `gen_config.py`; held-out
evaluation in `lm_eval.py`, the best policy's keeping in `heldout.py`; older checkpoints in `migrations.py`.
Reliability (checkpoints, rescue on a failing reward, NaN guard, stop signals) is `checkpoint.Checkpointer`'s,
reached through the named methods at the bottom of `GenRLRun`.
"""
from __future__ import annotations

import functools
import itertools
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

import torch
from tqdm.auto import tqdm

from ..algorithms import EMABaseline
from ..checkpoint import CheckpointError, Checkpointer, rng_state
from ..data import Examples, repeat_columns
from ..policies.causal_lm import Rollout
from ..policies.families import check_model_kind, family
from ..policies.engine import LocalEngine, RolloutEngine
from ..rewards import CombinedReward, RewardError
from ..models import check_model
from ..run import RunContext, discard_failed_start, ends_trackers, seed_this_process, start_run
from ..stop import StopGuard
from .gen_config import GenRLConfig
from .gen_setup import (check_limits, ddp_settings, long_reference_warnings, reference_columns, setup_kl_controller,
                        setup_policy, setup_prompts, setup_reward, update_plan)
from .heldout import HeldOut, save_policy
from .lm_eval import evaluate_lm
from .lm_report import TrainBatch, global_batch, log_samples, log_train_step
from .migrations import STATE_FORMAT, go_on_as_before
from .pg_update import UpdatePlan, pg_step
from .ppo import ppo_step


@discard_failed_start
@ends_trackers
def train_rl_generate(cfg: GenRLConfig, show_progress: bool = True) -> dict[str, Any]:
    """Run generative RL; returns the run folder, the first and last held-out evaluations and the best value of
    eval.best_metric."""
    return GenRLRun.setup(cfg).train(show_progress)


@dataclass
class GenRLRun:
    """One generative-RL run: what `setup` built, and the loop over its steps (`train`)."""

    cfg: GenRLConfig  # with `auto` resolved (config.yaml says what ran)
    run: RunContext
    model: Any
    tok: Any
    value_head: Any  # PPO's value head, or None
    params: list  # the trained parameters (the policy's and the value head's)
    optim: Any
    ref: Callable[[], Any]  # the reference policy, a context factory (see common.setup_reference)
    reward: CombinedReward
    train_prompts: Examples  # the prompt texts and their rows' other columns (the rewards see them)
    held_out: Examples
    max_prompt: int  # the longest prompt the context allows
    kl_ctl: Any  # β: fixed or adaptive
    ema: EMABaseline = field(default_factory=EMABaseline)
    guard: StopGuard = field(init=False)
    cp: Checkpointer = field(init=False)
    held: HeldOut = field(init=False)
    plan: UpdatePlan = field(init=False)

    def __post_init__(self) -> None:
        self.guard = StopGuard(self.cfg.ckpt.stop_after)
        modules = {"model": self.model, **({"value_head": self.value_head} if self.value_head else {})}
        self.cp = Checkpointer(self.run, self.cfg.ckpt, modules, self.optim, None, self.guard)
        self.held = HeldOut(self.run, self.model, self.tok, self.value_head, self.cfg.eval, self.cfg.rl.steps,
                            self.evaluate_at)
        self.plan = update_plan(self.cfg.rl, self.cfg.gen, self.cfg.runtime, self.cfg.ppo, self.cfg.policy)

    @classmethod
    def setup(cls, cfg: GenRLConfig) -> GenRLRun:
        """Prompts, run folder, policy, reward and the checks that fail before any step (`gen_setup.py`)."""
        cfg = replace(cfg, rl=cfg.rl.resolved(),  # `auto` settings made explicit, before config.yaml is written
                      runtime=cfg.runtime.resolved(torch.cuda.is_available()))  # (accelerate's device when there is one)
        train_prompts, held_out = setup_prompts(cfg)
        check_model(cfg.model.name)
        check_model_kind(family(cfg.policy), cfg.model.name)  # a causal LM given to policy=seq2seq, or the reverse
        run = start_run(cfg, cfg.name, cfg.runs_dir, cfg.seed, {"mixed_precision": cfg.runtime.mixed_precision,
                                                                "kwargs_handlers": [ddp_settings()]})
        model, tok, value_head, params, optim, ref = setup_policy(cfg, run)
        reward = setup_reward(cfg.reward, run.accelerator)
        max_prompt = check_limits(cfg, run, model, tok, train_prompts.texts + held_out.texts)
        return cls(cfg, run, model, tok, value_head, params, optim, ref, reward, train_prompts, held_out, max_prompt,
                   setup_kl_controller(cfg.rl))

    def train(self, show_progress: bool = True) -> dict[str, Any]:
        """From the newest checkpoint (or step 0) to rl.steps; a stop signal or ckpt.stop_after ends it early."""
        start = self.restore_or_start()
        rl = self.cfg.rl
        announce(self.run, self.cfg, self.reward, self.train_prompts is self.held_out)
        for warning in long_reference_warnings(self.tok, self.held_out.columns, reference_columns(self.reward),
                                               self.cfg.gen.max_new_tokens, "gen.max_new_tokens"):
            self.run.print(warning)  # a task reward that cannot reach its maximum: say so before the steps
        batches = self.prompt_batches(start)
        with self.guard:
            self.run.progress = tqdm(range(start + 1, rl.steps + 1), initial=start, total=rl.steps,  # shows reward, KL, loss
                                     disable=not (show_progress and self.run.is_main), desc=f"rl-{rl.algorithm}")
            for step in self.run.progress:
                self.step(step, next(batches))
                if step < rl.steps and self.cp.step_done(step, self.snapshot):
                    return {"stopped": True, "signal": self.guard.stop_signal, "run_dir": str(self.run.dir),
                            "steps": step}
            self.cp.save(rl.steps, self.snapshot())
        save_policy(self.run, self.model, self.tok, self.value_head)
        return {"run_dir": str(self.run.dir), "steps": rl.steps, "eval_start": self.held.first,
                "eval": self.held.last, "held_out_prompts": len(self.held_out),
                "best": {self.cfg.eval.best_metric: self.held.best}, "checkpoint_save_s": self.cp.save_s}

    def step(self, step: int, batch: Examples) -> None:
        """One step on the global batch of prompts: rollout → score → advantages → update → log → evaluate."""
        rl, ev, acc = self.cfg.rl, self.cfg.eval, self.run.accelerator
        local, began = rl.prompts_per_step // acc.num_processes, rng_state()
        mine = batch.subset(range(acc.process_index * local, (acc.process_index + 1) * local))  # whole prompt groups
        ro, scored, rewards, dropped, times = rollout(self.run, self.model, self.tok, self.reward, mine, self.cfg,
                                                      self.max_prompt, functools.partial(self.rescue, step, began))
        t2, beta = time.time(), self.kl_ctl.value
        stats = self.update(ro, scored.total, rewards, beta, functools.partial(self.ok_to_step, step, len(ro.prompts)))
        tb = TrainBatch.of(ro, scored, rewards, dropped)
        if acc.num_processes > 1:  # log and adapt β on the global batch, so every process keeps the same β
            tb, stats = global_batch(self.run, tb, stats)
        self.kl_ctl.update(stats.get("kl", 0.0), tb.rewards.numel())
        if step % ev.log_every == 0:
            log_train_step(self.run, step, tb, stats, beta=beta, **times, time_update=time.time() - t2)
        if ev.sample_every and step % ev.sample_every == 0:
            log_samples(self.run, step, ro, scored, rl.samples_per_prompt)
        if self.held.due(step):
            self.evaluate_or_rescue(step)

    def update(self, ro: Rollout, scores: torch.Tensor, rewards: torch.Tensor, beta: float,
               ok: Callable[[torch.Tensor, Any], bool]) -> dict[str, float]:
        """The step's update, picked by rl.algorithm: PPO's epochs on the scores, or one policy-gradient step on the
        (P, K) rewards."""
        rl = self.cfg.rl
        if rl.algorithm == "ppo":
            return ppo_step(self.run, self.model, self.value_head, self.optim, self.params, self.ref, ro, scores, self.plan,
                            self.cfg.ppo, beta, ok)
        return pg_step(self.run, self.model, self.optim, self.ref, ro, rewards, self.plan,
                       (rl.algorithm, rl.baseline, self.ema), beta, ok)

    def prompt_batches(self, start: int) -> Iterator[Examples]:
        """The global batch of each step from step `start` + 1 on: the same on every process, and on resumption."""
        P = self.cfg.rl.prompts_per_step
        cycle = itertools.islice(itertools.cycle(range(len(self.train_prompts))), start * P, None)
        while True:
            yield self.train_prompts.subset([next(cycle) for _ in range(P)])

    def evaluate_at(self, step: int) -> dict[str, float]:
        """The held-out evaluation of the policy now (`lm_eval.evaluate_lm`), against the reference when there is one."""
        cfg = self.cfg
        return evaluate_lm(self.run, self.model, self.tok, self.reward, self.held_out.texts, cfg.gen, step,
                           self.max_prompt, cfg.runtime.inference_batch_size, cfg.eval.samples,
                           self.ref if cfg.rl.kl_coef else None, self.held_out.columns, self.plan.family)

    # ---------------------------------------------------------------- reliability: state, restore, rescue
    def snapshot(self) -> dict[str, Any]:
        """What a checkpoint holds beside the weights: the held-out state, β, the EMA and the reward's state."""
        algo = {"ema": self.ema, "kl": self.kl_ctl, "reward": self.reward}
        return {**self.held.state_dict(), "algo": {k: obj.state_dict() for k, obj in algo.items()},
                "format": STATE_FORMAT}

    def restore_or_start(self) -> int:
        """The last step done: from the newest checkpoint (with the algorithm's and the held-out state; an older
        format goes on as it ran, see `migrations.py`), or step 0 after evaluating the starting policy."""
        saved = self.cp.restore()
        if not saved:
            self.held.evaluate(0)
            seed_this_process(self.run)  # else every process would sample the same completions
            return 0
        for k, obj in {"ema": self.ema, "kl": self.kl_ctl, "reward": self.reward}.items():
            obj.load_state_dict(saved["algo"][k])
        self.held.load_state_dict(saved)
        if saved.get("format", 1) < STATE_FORMAT:
            self.cfg = go_on_as_before(self.run, self.cfg, self.held)
            self.plan = update_plan(self.cfg.rl, self.cfg.gen, self.cfg.runtime, self.cfg.ppo, self.cfg.policy)  # the update follows the settings it goes on with
        if saved.get("eval_due") == saved["step"]:  # saved by evaluate_or_rescue: that evaluation first
            self.held.evaluate(saved["step"])
        return saved["step"]

    def ok_to_step(self, step: int, rows: int, loss: torch.Tensor, grad_norm: Any) -> bool:
        """Whether the optimiser may step (the loss and gradient are finite; see `Checkpointer.ok_to_step`)."""
        return self.cp.ok_to_step(step, loss, grad_norm, list(range(rows)))

    def rescue(self, step: int, began: Any) -> str:
        """A reward failed while scoring `step`: the steps before it are checkpointed (`save_before_failure`); the
        sentence that says how goes into the error."""
        return f"while scoring step {step}; {self.cp.save_before_failure(step - 1, self.snapshot, began)}"

    def evaluate_or_rescue(self, step: int) -> None:
        """The held-out evaluation after step `step`; if its reward fails, the state after the step is checkpointed
        first, marked so that a resumed run evaluates it before going on (every process: see save_before_failure)."""
        cp = self.cp
        try:
            self.held.evaluate(step)
        except RewardError as e:
            try:
                cp.save(step, {**self.snapshot(), "eval_due": step})
            except CheckpointError as c:  # the reward's error stays the one raised
                raise RewardError(f"{e}; while evaluating after step {step}; the state could not be checkpointed: "
                                  f"{c}") from e
            raise RewardError(f"{e}; while evaluating after step {step}; the state after step {step} is checkpointed "
                              f"in {cp.run.checkpoints / f'step-{step:08d}'} and a resumed run evaluates it first: "
                              f"fix the cause and resume with --resume {cp.run.dir} (ckpt.resume=auto)") from e


def announce(run: RunContext, cfg: GenRLConfig, reward: CombinedReward, no_held_out: bool) -> None:
    """The run's batch, rewards, KL and choice of best, once at the start (and a warning without held-out prompts)."""
    rl = cfg.rl
    if no_held_out:  # setup_prompts had none left to train on
        run.print(f"warning: data.path has no more than eval.prompts={cfg.eval.prompts} prompts, so training uses the "
                  "held-out prompts too and held-out rewards measure training prompts; give data.val_path or more prompts")
    run.print(f"rl ({rl.algorithm}, {cfg.policy}): {rl.prompts_per_step} prompts × {rl.samples_per_prompt} samples "
              f"= {rl.prompts_per_step * rl.samples_per_prompt} completions/step, {rl.steps} steps, "
              f"rewards {list(reward.fns)}, KL β={rl.kl_coef} ({rl.kl_estimator}, in the {rl.kl_mode}), "
              f"aggregation {rl.aggregation}, best by {cfg.eval.best_metric}")


def rollout(run: RunContext, model: Any, tok: Any, reward: CombinedReward, prompts: Examples, cfg: GenRLConfig,
            max_prompt: int, rescue: Callable[[], str] = lambda: "",
            engine: RolloutEngine | None = None) -> tuple[Rollout, Any, torch.Tensor, int, dict[str, float]]:
    """Sample K completions per prompt with `engine` (default: the policy itself, `LocalEngine`) and score them, each
    with its prompt row's other columns: (rollout, scores, (P, K) rewards, dropped, timings). A reward that fails
    (RewardError) fails before this step changed anything: `rescue` keeps the steps before it (see
    `Checkpointer.save_before_failure`) and says how, in the error."""
    t0, K = time.time(), cfg.rl.samples_per_prompt
    engine = engine or LocalEngine(run.accelerator.unwrap_model(model), tok, family(cfg.policy).sample)
    with run.accelerator.autocast():  # generate() bypasses the prepared forward, so autocast here
        ro = engine.sample(prompts.texts, K, cfg.gen, max_prompt, rows=cfg.runtime.inference_batch_size)
    t1 = time.time()
    try:
        scored = reward(ro.prompts, ro.completions, **repeat_columns(prompts.columns, K))
    except RewardError as e:
        raise RewardError(f"{e}; {rescue()}") from e
    rewards, dropped = drop_failed(ro, scored, len(prompts), K)  # (P/world, K), count
    return ro, scored, rewards, dropped, {"time_generate": t1 - t0, "time_score": time.time() - t1}


def drop_failed(ro: Rollout, scored: Any, prompts: int, samples: int) -> tuple[torch.Tensor, int]:
    """(P, K) rewards; samples whose reward failed (on_reward_error=skip) get no gradient: their completion
    mask is cleared, and their reward is set to the mean of their group's others, so that group-relative
    baselines are computed from the samples that were scored."""
    rewards = scored.total.reshape(prompts, samples).clone()  # (P, K)
    if scored.dropped is None or not scored.dropped.any():
        return rewards, 0
    bad = scored.dropped.reshape(rewards.shape)  # (P, K)
    kept = (~bad).float()
    group_mean = (rewards * kept).sum(-1, keepdim=True) / kept.sum(-1, keepdim=True).clamp(min=1)  # (P, 1)
    rewards = torch.where(bad, group_mean.expand_as(rewards), rewards)
    ro.completion_mask[scored.dropped.to(ro.completion_mask.device)] = 0
    return rewards, int(bad.sum())
