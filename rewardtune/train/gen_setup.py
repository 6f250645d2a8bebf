"""What a generative-RL run is given and sets up before its first step: its settings, its prompts, the
policy with its reference and optimiser, the reward, and the checks that fail before any work is done.
Each step is a function a user can replace without copying the loop (`rl_generate.train_rl_generate`).
"""
from __future__ import annotations

import functools
import random
from typing import Any, Callable

import torch

from ..algorithms import get_kl_controller
from ..algorithms.objectives import Objective
from ..config import ConfigError
from ..data import DataError, Examples, read_table, to_examples
from ..models import apply_lora, enable_checkpointing
from ..policies.causal_lm import GenSettings, format_prompts, stop_check, without_dropout
from ..policies.families import family
from ..prepack import prepack_policy
from ..rewards import CombinedReward, build_rewards
from ..rewards import metrics
from ..rewards.signature import binding
from ..rewards import text as text_rewards
from ..collectives import failed_ranks, gather_to_cpu
from ..run import RunContext
from .common import setup_reference
from .gen_config import GenRLConfig, GenRLSettings, PPOSettings, RewardSettings, RuntimeSettings
from .lm_eval import EVAL_METRICS
from .pg_update import UpdatePlan, no_grad_rows
from .ppo import ValueHead


def length_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float | None]:
    """A toy reward for smoke tests: completion length in words, capped at 10, divided by 10."""
    return [min(len(c.split()), 10) / 10 for c in completions]


# The generative built-in rewards by name: each factory takes the reward settings (some read a field of them).
BUILTIN_REWARDS: dict[str, Callable[[RewardSettings], Any]] = {
    "length": lambda rs: length_reward, "lexicon": lambda rs: text_rewards.lexicon(),
    "regex": lambda rs: text_rewards.regex(rs.regex), "length_penalty": lambda rs: text_rewards.length_penalty(rs.target_length),
    # task metrics against a reference column (docs/rewards.md, "Task-metric rewards")
    "exact_match": lambda rs: metrics.exact_match(rs.reference_column),
    "token_f1": lambda rs: metrics.token_f1(rs.reference_column),
    "bleu": lambda rs: metrics.bleu(rs.reference_column), "chrf": lambda rs: metrics.chrf(rs.reference_column),
    "rouge": lambda rs: metrics.rouge(rs.reference_column, rs.rouge_type),
    "label_match": lambda rs: metrics.label_match(rs.gold_column, rs.labels),
    "length_ratio": lambda rs: metrics.length_ratio(rs.reference_column),
}


def setup_reward(rs: RewardSettings, accelerator: Any = None) -> CombinedReward:
    """Built-ins: length (toy), lexicon, regex (reward.regex), length_penalty (reward.target_length), the task metrics
    exact_match, token_f1, bleu, chrf, rouge, length_ratio (reward.reference_column, reward.rouge_type) and label_match
    (reward.gold_column, reward.labels); or rm:FOLDER (run on the accelerator's device, the policy's), module:fn, a
    callable. Under several processes, normalisation sees the global batch, and a reward that fails on one process
    fails on all, at the same call (they checkpoint and stop together)."""
    builtins = {name: functools.partial(make, rs) for name, make in BUILTIN_REWARDS.items()}
    device = None if accelerator is None else accelerator.device
    reward = build_rewards(rs.functions, rs.weights, builtins, rs.normalize, rs.on_error, device)
    if accelerator is not None and accelerator.num_processes > 1:
        reward.gather, reward.rank = gather_to_cpu(accelerator), accelerator.process_index
        reward.failed_on = failed_ranks(accelerator)  # a reward failing on one process stops them all
    return reward


def setup_kl_controller(rl: GenRLSettings) -> Any:
    """β as a controller: fixed, or adaptive towards `kl_target` (its state is checkpointed)."""
    if rl.kl_target > 0:
        return get_kl_controller("adaptive", value=rl.kl_coef, target=rl.kl_target, horizon=rl.kl_horizon)
    return get_kl_controller("fixed", value=rl.kl_coef)


def check_settings(cfg: GenRLConfig, n_prompts: int) -> None:
    """Settings that cannot run, refused before the run folder exists."""
    rl, ev, lora = cfg.rl, cfg.eval, cfg.model.lora.r > 0
    if rl.algorithm in ("rloo", "grpo", "dr_grpo") and rl.samples_per_prompt < 2:  # ppo and reinforce do not
        raise ValueError(f"algorithm {rl.algorithm!r} compares samples within a group: "
                         f"samples_per_prompt must be ≥ 2, got {rl.samples_per_prompt}")
    sizes = {"runtime.micro_batch_size": cfg.runtime.micro_batch_size,
             "runtime.inference_batch_size": cfg.runtime.inference_batch_size, "eval.samples": ev.samples}
    negative = [k for k, v in sizes.items() if v < 0]
    if negative:
        raise ValueError(f"{negative[0]}={sizes[negative[0]]} must be ≥ 0 (0 = all rows / greedy)")
    kl_name = "kl" if ev.samples else "kl_greedy"  # the evaluation logs one of them
    if ev.best_metric not in EVAL_METRICS or ev.best_metric in ("kl", "kl_greedy") and ev.best_metric != kl_name:
        valid = [m for m in EVAL_METRICS if m not in ("kl", "kl_greedy")] + [kl_name]
        raise ValueError(f"eval.best_metric={ev.best_metric!r} is not a held-out metric of this evaluation "
                         f"(eval.samples={ev.samples}); valid: {', '.join(valid)}")
    if not lora and not rl.kl_coef and ev.best_metric in ("kl", "kl_greedy", "ref_perplexity"):
        raise ValueError(f"eval.best_metric={ev.best_metric!r} is measured against the reference policy, which exists "
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
        raise DataError(f"{len(bad)} prompt(s) longer than {max_tokens} tokens{how} (the context minus "
                        f"max_new_tokens); first: prompt {bad[0] + 1}, {lengths[bad[0]]} tokens: {prompts[bad[0]][:80]!r}; "
                        "shorten or drop those prompts, lower gen.max_new_tokens, or use a model with a longer context")


def long_reference_warning(tok: Any, references: list[Any], max_new_tokens: int, setting: str,
                           column: str = "completion") -> str | None:
    """A warning when reference completions of the held-out rows are longer than the generation budget: generation
    cuts such a completion off, so its task reward is low whatever the model learnt (e.g. Banking77 intent names of
    up to 17 tokens under a budget of 8). A row with several references counts by its shortest (the others need
    not fit); None when every row's reference fits (non-text cells are not counted)."""
    rows = [[r] if isinstance(r, str) else [x for x in r if isinstance(x, str)] if isinstance(r, list) else []
            for r in references]
    rows = [r for r in rows if r]
    if not rows:
        return None
    ids = tok([x for r in rows for x in r], add_special_tokens=False)["input_ids"]
    lengths, i = [], 0
    for r in rows:  # each row's shortest reference, in tokens
        lengths.append(min(len(x) for x in ids[i:i + len(r)]))
        i += len(r)
    over = [n for n in lengths if n > max_new_tokens]
    if not over:
        return None
    return (f"warning: {len(over)} of {len(rows)} held-out reference completions ({column!r}) are longer than "
            f"{setting}={max_new_tokens} tokens (the longest: {max(lengths)}); generation cuts those off, so their "
            f"reward understates the model: raise {setting} to at least {max(lengths)}")


def reference_columns(reward: CombinedReward, completion_column: str = "completion") -> list[str]:
    """The data columns that say what a completion should be: the completion column and the columns the built-in
    task metrics read (`reward.reference_column`, `reward.gold_column`). A user's own reward function may read
    other columns (a context, say), which are not references, so only the built-ins count."""
    out = [completion_column]
    for name, fn in reward.fns.items():
        if name in BUILTIN_REWARDS:
            out += [c for c in binding(fn).required if c not in out]
    return out


def long_reference_warnings(tok: Any, columns: dict[str, list[Any]], names: list[str], max_new_tokens: int,
                            setting: str) -> list[str]:
    """`long_reference_warning` for each of the columns `names` that the held-out rows have, once per distinct
    content (a recipe's `completion` and `reference` columns hold the same texts)."""
    distinct: dict[str, list[Any]] = {}
    for c in names:
        if c in columns and columns[c] not in distinct.values():
            distinct[c] = columns[c]
    found = (long_reference_warning(tok, refs, max_new_tokens, setting, c) for c, refs in distinct.items())
    return [w for w in found if w]


def check_limits(cfg: GenRLConfig, run: RunContext, model: Any, tok: Any, prompts: list[str]) -> int:
    """The longest prompt the context allows (checked for every prompt before any step, not at the step
    that meets it); the stop strings' criterion can be built for this tokenizer; and P must split into whole
    prompt groups per process."""
    config = run.accelerator.unwrap_model(model).config
    max_prompt = family(cfg.policy).max_prompt_tokens(config, cfg.gen.max_new_tokens)
    check_prompt_lengths(tok, prompts, max_prompt, cfg.gen.chat_template)
    stop_check(tok, cfg.gen)  # stop strings this tokenizer cannot handle: the config's error, before any step
    world = run.accelerator.num_processes
    if cfg.rl.prompts_per_step % world:
        raise ConfigError(f"rl.prompts_per_step={cfg.rl.prompts_per_step} must be a multiple of the {world} processes: "
                         "each process takes whole prompt groups")
    return max_prompt


def load_prompts(path: str, prompt_column: str, split: str = "train", config: str = "") -> Examples:
    """The prompt rows of `path`: the prompt texts and every other column (what the rewards see beside them)."""
    table = read_table(path, split, config)
    return to_examples(table, prompt_column, None, keep_columns=[c for c in table.columns if c != prompt_column])


def setup_prompts(cfg: GenRLConfig) -> tuple[Examples, Examples]:
    """(training prompts in a seeded order, held-out prompts): `data.val_path`, else carved from `data.path`; each
    with its other columns. Checked before the run folder exists (nothing is lost): the settings, and that every
    reward's required parameters are columns of the data."""
    n = cfg.eval.prompts
    prompts = load_prompts(cfg.data.path, cfg.data.prompt_column, cfg.data.split, cfg.data.config)
    check_settings(cfg, len(prompts))
    order = list(range(len(prompts)))
    random.Random(cfg.seed).shuffle(order)
    if cfg.data.val_path:  # a fixed held-out prompt set
        held = load_prompts(cfg.data.val_path, cfg.data.prompt_column, cfg.data.split, cfg.data.config)
        train, held_out = prompts.subset(order), held.subset(range(min(n, len(held))))
    else:
        held_out, rest = prompts.subset(order[:n]), prompts.subset(order[n:])
        train = rest if len(rest) else held_out
    columns = [c for c in train.columns if c in held_out.columns]  # what every batch has
    check_reward_columns(cfg.reward, columns, " and ".join(filter(None, (cfg.data.path, cfg.data.val_path))))
    return train, held_out


def check_reward_columns(rs: RewardSettings, columns: list[str], source: str) -> None:
    """Every reward's required parameters are data columns, checked before any model loads (a reward model,
    `rm:FOLDER`, needs none and is not loaded here)."""
    specs = [f for f in rs.functions if not (isinstance(f, str) and f.startswith("rm:"))]
    if specs:
        builtins = {name: functools.partial(make, rs) for name, make in BUILTIN_REWARDS.items()}
        build_rewards(specs, (), builtins).check_columns(columns, source)


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
    model, tok = family(cfg.policy).load(cfg.model.name, getattr(torch, lora.base_dtype) if lora.r > 0 else None)
    checkpointed = cfg.runtime.resolved(run.accelerator.device.type == "cuda").gradient_checkpointing
    if checkpointed:
        enable_checkpointing(model)
    model = apply_lora(model, cfg.model.lora)
    if checkpointed:  # transformers checkpoints only in training mode; without dropout that
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
    if lora.r > 0 and lora.prepack and cfg.runtime.mixed_precision == "no":
        prepack_policy(run.accelerator.unwrap_model(model), run.print)
    return model, tok, head, params, optim, ref


def update_plan(rl: GenRLSettings, gen: GenSettings, runtime: RuntimeSettings | None = None,
                ppo: PPOSettings | None = None, policy: str = "causal-lm") -> UpdatePlan:
    """What every step's update uses, from the run's settings with `auto` resolved (once, here); `policy` picks the
    forward passes (`policies.families`)."""
    rl, runtime, ppo = rl.resolved(), runtime or RuntimeSettings(), ppo or PPOSettings()
    is_ppo = rl.algorithm == "ppo"  # PPO clips the ratio of its minibatch steps and always takes token means
    objective = Objective(aggregation="token_mean" if is_ppo else rl.aggregation, max_len=gen.max_new_tokens,
                          kl_estimator=rl.kl_estimator, clip_eps=ppo.clip_eps if is_ppo else None,
                          clip_eps_high=(ppo.clip_eps_high or None) if is_ppo else None,
                          dual_clip=(ppo.dual_clip or None) if is_ppo else None)
    return UpdatePlan(objective, kl_in_reward=rl.kl_mode == "reward", temperature=gen.temperature,
                      micro_batch_size=runtime.micro_batch_size,
                      no_grad_rows=no_grad_rows(rl.samples_per_prompt, runtime.inference_batch_size),
                      share_prompt=rl.samples_per_prompt > 1, max_grad_norm=rl.max_grad_norm, family=family(policy))
