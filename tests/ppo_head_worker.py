"""PPO's value head under a real 2-process gloo group; tests/test_distributed.py launches it.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ppo_head_worker.py OUT.json MODEL_DIR RUNS_DIR

Each process samples its own rollout and takes one PPO step (`ppo.ppo_step`), then the same again with
the value head's gradient averaging switched off. The main process writes whether the two processes' value
heads are equal after each to OUT.json: DDP does not wrap the head, so only the averaging keeps them equal.
"""
from __future__ import annotations

import gc
import json
import sys
from unittest import mock

import torch

from rewardtune.config import load_config
from rewardtune.policies.causal_lm import sample
from rewardtune.run import start_run
from rewardtune.train import ppo as ppo_module
from rewardtune.train.gen_config import GenRLConfig
from rewardtune.train.gen_setup import ddp_settings, setup_policy, update_plan
from rewardtune.train.ppo import ppo_step

PROMPTS = ["the film was", "i really loved the", "this movie is a very", "the acting"]


def heads_equal_after_a_step(out_dir: str, model_dir: str, name: str) -> tuple[bool, float]:
    cfg = load_config(GenRLConfig, None, [
        f"model.name={model_dir}", "model.lora.r=4", "data.path=demo-prompts", "rl.algorithm=ppo",
        "rl.samples_per_prompt=2", "rl.kl_coef=0", "gen.max_new_tokens=4", "ppo.epochs=1", "ppo.minibatches=1",
        f"runs_dir={out_dir}", f"name={name}"])
    run = start_run(cfg, cfg.name, cfg.runs_dir, cfg.seed, {"kwargs_handlers": [ddp_settings()]})
    model, tok, head, params, optim, ref = setup_policy(cfg, run)
    acc, rank = run.accelerator, run.accelerator.process_index
    torch.manual_seed(100 + rank)  # a different rollout and different scores on each process
    ro = sample(acc.unwrap_model(model), tok, PROMPTS[2 * rank:2 * rank + 2], 2, cfg.gen, 100)
    ppo_step(run, model, head, optim, params, ref, ro, torch.randn(4), update_plan(cfg.rl, cfg.gen, cfg.runtime, cfg.ppo), cfg.ppo, 0.0,
             lambda loss, norm: True)
    w = torch.cat([p.detach().flatten() for p in head.parameters()])[None]  # (1, n)
    both = acc.gather(w)  # (2, n)
    return bool(torch.equal(both[0], both[1])), float(w.abs().max())


def main(out: str, model_dir: str, runs_dir: str) -> None:
    averaged = heads_equal_after_a_step(runs_dir, model_dir, "averaged")
    with mock.patch.object(ppo_module, "average_gradients", lambda params, mean: None):
        alone = heads_equal_after_a_step(runs_dir, model_dir, "alone")
    if torch.distributed.get_rank() == 0:
        with open(out, "w", encoding="utf-8") as fh:
            json.dump({"world": torch.distributed.get_world_size(), "averaged": averaged, "alone": alone}, fh)
    torch.distributed.barrier()
    gc.collect()  # as the CLI does: DDP models and accelerators in reference cycles would free gloo work at exit
    torch.distributed.destroy_process_group()  # left to interpreter shutdown, gloo can abort the process


if __name__ == "__main__":
    main(*sys.argv[1:4])
