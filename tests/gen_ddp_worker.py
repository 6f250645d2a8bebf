"""Generative RL's gradient under DDP; tests/test_distributed.py launches it with 1 and with 2 processes.

    python -m torch.distributed.run --standalone --nproc_per_node N tests/gen_ddp_worker.py OUT.json MODEL_DIR RUNS_DIR

Every process samples the same 4 prompts × 2 rollout from the same seed and keeps its own rows (rank r: rows
[8r/N, 8(r+1)/N)), with fixed advantages (PPO: fixed scores). For each case it takes one update and keeps the
gradients the optimiser would step with (after DDP's all-reduce, clipping off), without stepping. So N = 1 and
N = 2 must give the same gradients, whatever the micro-batches. A DDP communication hook counts the all-reduce
calls of each update. The main process writes both to OUT.json.
"""
from __future__ import annotations

import gc
import json
import sys
from typing import Any

import torch

from rewardtune.config import load_config
from rewardtune.policies.causal_lm import sample
from rewardtune.run import start_run
from rewardtune.train.pg_update import pg_update
from rewardtune.train.gen_config import GenRLConfig
from rewardtune.train.gen_setup import ddp_settings, setup_policy, update_plan
from rewardtune.train.ppo import ppo_step

PROMPTS = ["the film was", "i really loved the", "this movie is a very", "the acting"]
CASES = {  # name → overrides
    "token_mean": ["rl.aggregation=token_mean"],
    "token_mean_mb1": ["rl.aggregation=token_mean", "runtime.micro_batch_size=1"],
    "seq_mean_mb2": ["rl.aggregation=seq_mean_token_mean", "runtime.micro_batch_size=2"],
    "ppo_mb1": ["rl.algorithm=ppo", "ppo.epochs=1", "ppo.minibatches=1", "runtime.micro_batch_size=1"],
}


def one_update(model_dir: str, runs_dir: str, name: str, overrides: list[str]) -> tuple[dict[str, list], int]:
    cfg = load_config(GenRLConfig, None, [
        f"model.name={model_dir}", "model.lora.r=4", "data.path=demo-prompts", "rl.prompts_per_step=4",
        "rl.samples_per_prompt=2", "rl.kl_coef=0.1", "rl.max_grad_norm=0", "gen.max_new_tokens=5",
        f"runs_dir={runs_dir}", f"name={name}", *overrides])
    run = start_run(cfg, cfg.name, cfg.runs_dir, cfg.seed, {"kwargs_handlers": [ddp_settings()]})
    model, tok, head, params, optim, ref = setup_policy(cfg, run)
    acc, rank, world = run.accelerator, run.accelerator.process_index, run.accelerator.num_processes
    calls = [0]
    if world > 1:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        def counted(state, bucket):  # (no annotations: DDP checks them against its own types)
            calls[0] += 1
            return allreduce_hook(state, bucket)
        model.register_comm_hook(None, counted)
    net = acc.unwrap_model(model)
    torch.manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter, so that every LoRA matrix gets a gradient
        for n, p in net.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    ro = sample(net, tok, PROMPTS, 2, cfg.gen, 100)  # the same 8 rows on every process
    rows = slice(8 * rank // world, 8 * (rank + 1) // world)
    grads: dict[str, list] = {}

    def keep(loss: torch.Tensor, norm: Any) -> bool:
        for n, p in [*net.named_parameters(), *((f"value_head.{k}", v) for k, v in (head.named_parameters() if head else ()))]:
            if p.grad is not None:
                grads[n] = p.grad.flatten().tolist()
        return False  # no optimiser step: the gradient is what is compared
    if head is None:
        adv = torch.tensor([1.0, -1.0, 0.5, -0.25, 2.0, -2.0, 0.3, 0.0])[rows]
        pg_update(run, model, optim, ref, ro.rows(rows), adv, update_plan(cfg.rl, cfg.gen, cfg.runtime, cfg.ppo), cfg.rl.kl_coef, keep)
    else:
        scores = torch.tensor([1.0, -1.0, 0.5, -0.25, 2.0, -2.0, 0.3, 0.0])[rows]
        ppo_step(run, model, head, optim, params, ref, ro.rows(rows), scores, update_plan(cfg.rl, cfg.gen, cfg.runtime, cfg.ppo), cfg.ppo, cfg.rl.kl_coef, keep)
    return grads, calls[0]


def main(out: str, model_dir: str, runs_dir: str) -> None:
    res = {name: one_update(model_dir, runs_dir, name, overrides) for name, overrides in CASES.items()}
    dist = torch.distributed if torch.distributed.is_initialized() else None  # (one process: maybe no group)
    if dist is None or dist.get_rank() == 0:
        with open(out, "w", encoding="utf-8") as fh:
            json.dump({"world": dist.get_world_size() if dist else 1,
                       "cases": {k: {"grads": g, "allreduce_calls": c} for k, (g, c) in res.items()}}, fh)
    if dist is not None:
        dist.barrier()
        gc.collect()  # as the CLI does: DDP models and accelerators in reference cycles would free gloo work at exit
        dist.destroy_process_group()  # left to interpreter shutdown, gloo can abort the process


if __name__ == "__main__":
    main(*sys.argv[1:4])
