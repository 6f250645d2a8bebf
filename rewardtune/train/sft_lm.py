"""Supervised fine-tuning of a causal LM or a seq2seq model on completions (`rewardtune sft policy=causal-lm|seq2seq`).

The loop is the classifier trainers' (`loop.train_epochs`: clipping, NaN guard, checkpoints, exact resumption);
what differs is here: the rows (`sft_lm_data.py`: prompt/completion or chat turns, the targets marked), the loss
(token cross-entropy on target tokens only, the mean over the batch's target tokens), and the validation (loss and
perplexity on the validation rows; greedy completions of `eval.prompts` of their prompts scored by
`reward.functions`, as generative RL's held-out evaluation scores them). checkpoints/best and checkpoints/final
hold whole models (a LoRA adapter merged into its base), so `rewardtune rl policy=causal-lm model.name=<them>` starts
from them as from any model folder.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch

from ..config import ConfigError
from ..models import apply_lora, load_tokenizer
from ..policies.causal_lm import GenSettings
from ..policies.families import LMFamily, check_model_kind, family
from ..policies.seq2seq import decoder_prefix
from ..run import RunContext, discard_failed_start, ends_trackers, start_run
from ..batching import batch_order
from .common import setup_optimizer, shares
from .gen_setup import (check_prompt_lengths, check_reward_columns, long_reference_warnings, reference_columns,
                        setup_reward)
from .lm_eval import evaluate_lm
from .loop import train_epochs
from .sft_lm_config import SFTLMConfig
from .sft_lm_data import (LMRows, check_seq2seq_rows, collate, read_rows, seq2seq_collate, split_rows, target_nll,
                          token_nll)

GENERATED_METRICS = ("reward", "length_words", "distinct_1", "distinct_2")


@dataclass(frozen=True)
class Batching:
    """How a policy kind's rows become model inputs and a loss: collate(ids, target, pad_id) → inputs with `labels`;
    nll(logits, labels) → (summed cross-entropy of the targets, their number)."""

    collate: Callable[..., dict[str, torch.Tensor]]
    nll: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


# By `policy`, from the loaded model: a causal LM predicts token t + 1 at position t over prompt ‖ completion; a
# seq2seq model reads the prompt in its encoder and predicts the completion from [decoder prefix] + its tokens.
BATCHINGS: dict[str, Callable[[Any], Batching]] = {
    "causal-lm": lambda model: Batching(collate, token_nll),
    "seq2seq": lambda model: Batching(partial(seq2seq_collate, prefix=decoder_prefix(model)), target_nll),
}


@discard_failed_start
@ends_trackers
def train_sft_lm(cfg: SFTLMConfig, show_progress: bool = True) -> dict[str, Any]:
    """Run LM SFT; returns the run folder, the steps, the last validation metrics and the best eval.best_metric."""
    fam, tok = family(cfg.policy), load_tokenizer(cfg.model.name)
    train, val = setup_rows(cfg, tok)  # bad rows and settings fail before the run folder exists
    check_model_kind(fam, cfg.model.name)
    run = start_run(cfg, cfg.name, cfg.runs_dir, cfg.seed, {"mixed_precision": cfg.train.mixed_precision})
    model, tok = fam.load(cfg.model.name, getattr(torch, cfg.model.lora.base_dtype) if cfg.model.lora.r > 0 else None)
    model, bat = apply_lora(model, cfg.model.lora), BATCHINGS[cfg.policy](model)
    opt = cfg.train
    total = math.ceil(len(train) / opt.batch_size) * opt.epochs
    total = min(total, opt.max_steps) if opt.max_steps else total
    optim, sched = setup_optimizer(model, opt, total)  # AdamW without decay on biases/norms, warm-up + linear decay
    model, optim, sched = run.accelerator.prepare(model, optim, sched)
    reward = setup_reward(cfg.reward, run.accelerator) if generates(cfg) else None
    checker = Validation(run, model, tok, val, reward, cfg, total, fam, bat)
    run.print(f"sft ({cfg.policy}): {len(train)} train / {len(val)} val rows, {total} steps, "
              f"{'LoRA r=' + str(cfg.model.lora.r) if cfg.model.lora.r > 0 else 'all weights'}, best by "
              f"{cfg.eval.best_metric} ({cfg.eval.best_mode})")
    every = cfg.eval.every
    res = train_epochs(
        run, cfg.ckpt, model, optim, sched, epochs=opt.epochs, total=total, max_grad_norm=opt.max_grad_norm,
        log_every=opt.log_every, desc="sft-lm", show_progress=show_progress,
        batch_loss=lambda batch: lm_batch_loss(run, model, batch, bat.nll),
        batches=lambda epoch, start: lm_batches(run, train, opt, cfg.seed, epoch, tok.pad_token_id, start, bat.collate),
        end_of_epoch=lambda step, epoch, best: best if every else checker(step, epoch, best),
        after_step=lambda step, epoch, best: checker(step, epoch, best) if every and (step % every == 0 or step == total) else best)
    if res.stopped:
        return {"stopped": True, "signal": res.signal, "run_dir": str(run.dir), "steps": res.step, "best": res.best}
    save_lm(run, model, tok, "final")
    run.log(res.step, split="summary", train_s=res.train_s, train_examples_per_s=res.seen / max(res.train_s, 1e-9),
            best=res.best)
    return {"run_dir": str(run.dir), "steps": res.step, "train_s": res.train_s, "eval": checker.last,
            "best": {cfg.eval.best_metric: res.best}}


def generates(cfg: SFTLMConfig) -> bool:
    """Whether validation generates completions (and scores them): eval.prompts > 0 and reward functions given."""
    return cfg.eval.prompts > 0 and bool(cfg.reward.functions)


def setup_rows(cfg: SFTLMConfig, tok: Any) -> tuple[LMRows, LMRows]:
    """(training rows, validation rows), read and checked, with the settings that cannot run refused."""
    d, t = cfg.data, cfg.train
    if not d.path:
        raise ConfigError("data.path is empty: give a file of prompt/completion (or messages) rows")
    if t.batch_size < 1 or t.max_length < 2:
        raise ConfigError(f"train.batch_size={t.batch_size} must be ≥ 1 and train.max_length={t.max_length} ≥ 2")
    check_best_metric(cfg)
    rows = read_rows(d.path, d, tok, t.max_length, t.truncate)
    if d.val_path:
        train, val = rows, read_rows(d.val_path, d, tok, t.max_length, t.truncate)
    else:
        train, val = split_rows(rows, d.val_fraction, d.seed)
    if cfg.policy == "seq2seq":
        check_seq2seq_rows(train), check_seq2seq_rows(val)
    if generates(cfg):
        columns = [c for c in train.columns if c in val.columns]
        check_reward_columns(cfg.reward, columns, " and ".join(filter(None, (d.path, d.val_path))))
    return train, val


def check_best_metric(cfg: SFTLMConfig) -> None:
    """eval.best_metric must be one the validation logs (before any training, not after an epoch)."""
    valid = ("loss", "perplexity") + (GENERATED_METRICS if generates(cfg) else ())
    if cfg.eval.best_metric not in valid:
        raise ConfigError(f"eval.best_metric={cfg.eval.best_metric!r} is not a validation metric of this run; valid: "
                          f"{', '.join(valid)}" + ("" if generates(cfg) else
                                                   " (the generated-output ones need eval.prompts > 0 and reward.functions)"))


@dataclass
class LMBatch:
    """This process's share of a global batch: model inputs with labels, its weight (0: a filler share) and rows."""

    tensors: dict[str, torch.Tensor]
    weight: float
    index: list[int]


def lm_batches(run: RunContext, rows: LMRows, opt: Any, seed: int, epoch: int, pad_id: int, start: int = 0,
               make: Callable[..., dict[str, torch.Tensor]] = collate):
    """The batches of an epoch from batch `start` on, in an order that depends only on (seed, epoch); each process
    takes rows rank::world of each global batch (see `common.epoch_batches`); `make`: the kind's `Batching.collate`."""
    order = batch_order([len(x) for x in rows.ids], opt.batch_size, seed, epoch, True, opt.group_by_length)
    acc = run.accelerator
    for _, shard, weight in shares(order[start:], acc.process_index, acc.num_processes):
        yield LMBatch(make([rows.ids[i] for i in shard], [rows.target[i] for i in shard], pad_id), weight, shard)


def lm_batch_loss(run: RunContext, model: Any, batch: LMBatch,
                  nll: Callable[..., tuple[torch.Tensor, torch.Tensor]] = token_nll) -> tuple[torch.Tensor, int, dict[str, Any], Any]:
    """Cross-entropy of the target tokens, the mean over the global batch's target tokens (a filler share counts
    none); backward is done here, scaled so that DDP's mean over processes gives that mean's gradient."""
    acc = run.accelerator
    inputs = {k: v.to(acc.device) for k, v in batch.tensors.items()}
    labels = inputs.pop("labels")
    total, n = nll(model(**inputs).logits, labels)
    real = 1.0 if batch.weight > 0 else 0.0
    count = (n * real).float()
    if acc.num_processes > 1:
        count = acc.reduce(count.detach().clone(), "sum")
    loss = total * real / count.clamp(min=1)
    acc.backward(loss * acc.num_processes)
    # The row logged is this share's own mean (over_processes weighs the shares by their rows).
    return (total / n.clamp(min=1)).detach(), len(batch.index), {"target_tokens": int(count)}, batch.index


def save_lm(run: RunContext, model: Any, tok: Any, name: str) -> None:
    """The model as a plain causal-LM folder (safetensors + tokenizer): a LoRA adapter is merged into a copy of its
    base, so any command loads the folder as a model name (training goes on with the unmerged one)."""
    if not run.is_main:
        return
    net = run.accelerator.unwrap_model(model)
    if hasattr(net, "merge_and_unload"):
        net = copy.deepcopy(net).merge_and_unload()
    out = run.checkpoints / name
    net.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


class Validation:
    """The validation after an epoch (or every eval.every steps): loss and perplexity on the validation rows, the
    generated-output metrics of eval.prompts of their prompts; the best model by eval.best_metric saved."""

    def __init__(self, run: RunContext, model: Any, tok: Any, rows: LMRows, reward: Any, cfg: SFTLMConfig,
                 total: int, fam: LMFamily, bat: Batching) -> None:
        self.run, self.model, self.tok, self.rows, self.reward, self.cfg = run, model, tok, rows, reward, cfg
        self.fam, self.bat = fam, bat
        self.last: dict[str, float] = {}
        net = run.accelerator.unwrap_model(model)
        self.gen = GenSettings(max_new_tokens=cfg.eval.max_new_tokens)
        self.max_prompt = fam.max_prompt_tokens(net.config, cfg.eval.max_new_tokens)
        self.sample = rows.subset(list(range(min(cfg.eval.prompts, len(rows)))))
        if reward is not None:  # before step 1, not at the first validation
            check_prompt_lengths(tok, self.sample.prompts, self.max_prompt)
            for warning in long_reference_warnings(tok, self.sample.columns,
                                                   reference_columns(reward, cfg.data.completion_column),
                                                   cfg.eval.max_new_tokens, "eval.max_new_tokens"):
                run.print(warning)

    def __call__(self, step: int, epoch: int, best: float | None) -> float | None:
        """Validate after `step`; returns the best value so far (saving checkpoints/best when it improved)."""
        ev = self.cfg.eval
        net = self.run.accelerator.unwrap_model(self.model)
        was = net.training
        net.eval()
        try:
            m = self.loss(net)
            self.run.log(step, split="eval", epoch=epoch, **m)
            if self.reward is not None:
                m |= evaluate_lm(self.run, net, self.tok, self.reward, self.sample.prompts, self.gen, step,
                                 self.max_prompt, self.cfg.train.eval_batch_size, columns=self.sample.columns,
                                 fam=self.fam)
        finally:
            net.train(was)
        self.last = m
        value = m[ev.best_metric]
        if best is None or (value < best if ev.best_mode == "min" else value > best):
            save_lm(self.run, self.model, self.tok, "best")
            self.run.log(step, split="best", **{ev.best_metric: value})
            return value
        return best

    @torch.no_grad()
    def loss(self, net: Any) -> dict[str, float]:
        """Mean cross-entropy per target token of the validation rows and its exp (each process a share of them)."""
        acc, rows, size = self.run.accelerator, self.rows, self.cfg.train.eval_batch_size
        mine = list(range(acc.process_index, len(rows), acc.num_processes))
        sums = torch.zeros(2, device=acc.device, dtype=torch.float64)  # (summed NLL, target tokens)
        for s in range(0, len(mine), size):
            part = mine[s:s + size]
            batch = {k: v.to(acc.device) for k, v in self.bat.collate([rows.ids[i] for i in part], [rows.target[i] for i in part],
                                                             self.tok.pad_token_id).items()}
            labels = batch.pop("labels")
            with acc.autocast():
                total, n = self.bat.nll(net(**batch).logits, labels)
            sums += torch.stack([total.double(), n.double()])
        if acc.num_processes > 1:
            sums = acc.reduce(sums, "sum")
        loss = float(sums[0] / sums[1].clamp(min=1))
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "target_tokens": int(sums[1])}
