"""Held-out evaluation under 1 or 2 processes; tests/test_distributed.py launches it.

    python -m torch.distributed.run --standalone --nproc_per_node N tests/eval_worker.py OUT.json MODEL_DIR RUNS_DIR

A LoRA policy with a trained-looking adapter evaluates 5 prompts (2 processes: shares of 2 and 3) greedily and
with 2 sampled completions each (`lm_eval.evaluate_lm`); the main process writes the metrics and the number of
completions each process decoded to OUT.json. N = 1 and N = 2 must give the same metrics.
"""
from __future__ import annotations

import gc
import json
import sys
from unittest import mock

import torch

from rewardtune.config import load_config
from rewardtune.run import start_run
from rewardtune.policies import causal_lm
from rewardtune.train.lm_eval import evaluate_lm
from rewardtune.train.gen_config import GenRLConfig
from rewardtune.train.gen_setup import ddp_settings, setup_policy, setup_reward

PROMPTS = ["the film was", "i really loved the", "this movie is a very", "the acting", "a story about"]


def main(out: str, model_dir: str, runs_dir: str) -> None:
    cfg = load_config(GenRLConfig, None, [f"model.name={model_dir}", "model.lora.r=4", "data.path=demo-prompts",
                                          "reward.functions=[length]", "gen.max_new_tokens=6", "gen.temperature=0.7",
                                          f"runs_dir={runs_dir}", "name=eval"])
    run = start_run(cfg, cfg.name, cfg.runs_dir, cfg.seed, {"kwargs_handlers": [ddp_settings()]})
    model, tok, _, _, _, _ = setup_policy(cfg, run)
    net = run.accelerator.unwrap_model(model)
    torch.manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter: the KL to the reference is not 0
        for n, p in net.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    reward = setup_reward(cfg.reward, run.accelerator)
    decoded, sample = [], causal_lm.sample

    def counted(*args, **kwargs):  # the completions this process decodes
        ro = sample(*args, **kwargs)
        decoded.append(len(ro.completions))
        return ro
    with mock.patch.object(causal_lm, "sample", counted):
        res = {f"samples{s}": evaluate_lm(run, model, tok, reward, PROMPTS, cfg.gen, 0, samples=s) for s in (0, 2)}
    acc = run.accelerator
    rows = acc.gather(torch.tensor(decoded)[None]).tolist() if acc.num_processes > 1 else [decoded]
    if run.is_main:
        with open(out, "w", encoding="utf-8") as fh:
            json.dump({"world": acc.num_processes, "metrics": res, "decoded": rows}, fh)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        gc.collect()  # as the CLI does: DDP models and accelerators in reference cycles would free gloo work at exit
        torch.distributed.destroy_process_group()  # left to interpreter shutdown, gloo can abort the process


if __name__ == "__main__":
    main(*sys.argv[1:4])
