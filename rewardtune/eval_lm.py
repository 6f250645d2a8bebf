"""`rewardtune eval-lm`: a causal LM's completions of a prompts file, scored by the rewards a generative-RL run takes,
with corpus BLEU/chrF, ROUGE, length and distinct-n.

The numbers are those a run logs for its held-out prompts (`train/lm_eval.evaluate_lm`): the same sampler, the same
raw (unnormalised) weighted reward, the same length and distinct-n, and the same draws: sampling is seeded with
`seed + EVAL_SEED_OFFSET` (`lm_eval.eval_draws`), so `--seed` is the run's `seed`, and a run's checkpoint on its
held-out prompts with its rewards and sampling settings gives the mean reward of its last `split=eval` row.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from .config import ConfigError, from_dict, load_config, nested
from .data import DataError, Examples, repeat_columns
from .models import ModelError, load_causal_lm, load_trained_causal_lm
from .policies.causal_lm import GenSettings, Rollout, stop_check
from .policies.families import family_of
from .policies.seq2seq import is_encoder_decoder, load_seq2seq_lm, load_trained_seq2seq
from .rewards.metrics import require, rouge, texts_of
from .train.gen_config import RewardSettings
from .train.gen_setup import check_prompt_lengths, check_reward_columns, load_prompts, setup_reward
from .train.lm_eval import eval_metrics, eval_draws  # the trainer's own definitions: the same figures

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")
SCALES = {"bleu": "sacrebleu corpus_bleu, 0-100", "chrf": "sacrebleu corpus_chrf, 0-100",
          **{k: "mean F-measure over completions (rouge-score, stemmed), 0-1" for k in ROUGE_KEYS},
          "reward": "mean raw weighted reward (no normalisation), as a run's split=eval rows"}


@dataclass(frozen=True)
class EvalLMConfig:
    """The sections of a generative-RL config that eval-lm reads: `reward.*` and `gen.*` overrides name their keys."""

    reward: RewardSettings = nested(RewardSettings, "reward functions, weights and their parameters")
    gen: GenSettings = nested(GenSettings, "sampling")


@dataclass(frozen=True)
class EvalLMJob:
    """One evaluation: the model, the prompts file and how to decode and score."""

    checkpoint: str  # alias, model folder, or a run's checkpoints/best|final (full weights or a LoRA adapter)
    data: str
    reward: RewardSettings = field(default_factory=RewardSettings)
    gen: GenSettings = field(default_factory=GenSettings)
    samples: int = 0  # 0: one greedy completion per prompt; K: K sampled at gen.temperature
    seed: int = 0  # the run's seed: the draws come from seed + EVAL_SEED_OFFSET, as a run's held-out evaluation
    prompt_column: str = "prompt"
    reference_column: str = ""  # corpus metrics against it; "": reward.reference_column when the data has it
    rows: int = 0  # rows decoded at once (0 = all): memory only, the draws are fixed beforehand
    out: str = ""  # folder for completions.jsonl and metrics.json ("" = print only)


@dataclass
class EvalLMResult:
    metrics: dict[str, float]
    records: list[dict[str, Any]]  # one per completion, prompt-major
    info: dict[str, Any]  # what was evaluated and how (metrics.json beside the metrics)


def eval_lm_config(overrides: Sequence[str] = (), flags: dict[str, dict[str, Any]] | None = None) -> EvalLMConfig:
    """`reward.*` / `gen.*` overrides (as `rewardtune rl` takes them), then the command's flags (section → key →
    value; None = not given), checked and typed as a config file's values are."""
    cfg = load_config(EvalLMConfig, None, overrides)
    given = {sec: {k: v for k, v in keys.items() if v is not None} for sec, keys in (flags or {}).items()}
    return EvalLMConfig(**{sec: from_dict(type(getattr(cfg, sec)), given.get(sec, {}), sec, getattr(cfg, sec))
                           for sec in ("reward", "gen")})


def load_policy(name: str, device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """(model in eval mode on `device`, tokenizer padded as sampling needs) of a causal LM or a seq2seq model (its config
    says which): an alias, a model folder, or a folder that holds a LoRA adapter only (`heldout.save_policy` with model.lora.r > 0): its base model, named in adapter_config.json,
    with the adapter on top, unmerged as the run evaluated it."""
    adapter = Path(name).expanduser() / "adapter_config.json"
    try:  # an encoder-decoder (its config, or its adapter's base model's, says so) loads as a seq2seq policy
        base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path") if adapter.is_file() else name
        s2s = bool(base) and is_encoder_decoder(base)
        trained, plain = (load_trained_seq2seq, load_seq2seq_lm) if s2s else (load_trained_causal_lm, load_causal_lm)
        model, tok = trained(adapter.parent) if adapter.is_file() else plain(name)
    except (OSError, ValueError, KeyError) as e:  # transformers' way of saying "not a causal LM folder"
        raise ModelError(f"{name}: cannot be loaded as a causal LM or a seq2seq model ({type(e).__name__}: {e})") from None
    model.to(device).eval()
    if torch.device(device).type == "cpu" and hasattr(model, "disable_adapter"):
        from .prepack import prepack_frozen_linears

        prepack_frozen_linears(model, max_share=0.25)  # as the run did (model.lora.prepack): its numbers and speed
    return model, tok


def check_input(job: EvalLMJob) -> tuple[Examples, str]:
    """The prompts with their columns, and the column corpus metrics use ("" = none), checked before any model
    loads: a missing file or column, an empty prompt, a reward needing a column the file lacks."""
    if job.samples < 0:
        raise ConfigError(f"--samples {job.samples}: must be ≥ 0 (0 = one greedy completion per prompt)")
    prompts = load_prompts(job.data, job.prompt_column)  # DataError: missing file, column, empty or non-text prompt
    check_reward_columns(job.reward, list(prompts.columns), prompts.source)
    ref = job.reference_column or (job.reward.reference_column if job.reward.reference_column in prompts.columns else "")
    if ref and ref not in prompts.columns:
        raise DataError(f"{prompts.source}: no reference column {ref!r}; the columns are: "
                        f"{', '.join([job.prompt_column, *prompts.columns])}")
    return prompts, ref


def decode(model: Any, tok: Any, prompts: list[str], job: EvalLMJob) -> Rollout:
    """The completions, greedy or `samples` per prompt, with a run's held-out draws for its seed."""
    try:
        stop_check(tok, job.gen)
        fam = family_of(model)  # a causal LM or a seq2seq model, as the checkpoint is
        max_prompt = fam.max_prompt_tokens(model.config, job.gen.max_new_tokens)
        check_prompt_lengths(tok, prompts, max_prompt, job.gen.chat_template)
    except ValueError as e:  # the settings or the file, not a bug: said as such
        raise DataError(f"{job.data}: {e}") from None
    device, k = next(model.parameters()).device, job.samples or 1
    with eval_draws(job.seed, device):
        return fam.sample(model, tok, prompts, k, job.gen, max_prompt, greedy=job.samples == 0,
                      rows=max(k, job.rows // k * k) if job.rows else 0)  # whole prompt groups per pass


def run_eval_lm(job: EvalLMJob, device: str | None = None) -> EvalLMResult:
    """Decode, score and measure; write completions.jsonl and metrics.json to `job.out` when given."""
    prompts, ref_column = check_input(job)
    reward = setup_reward(job.reward)
    model, tok = load_policy(job.checkpoint, device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ro = decode(model, tok, prompts.texts, job)
    k = job.samples or 1
    columns = repeat_columns(prompts.columns, k)
    scored = reward.unnormalized(ro.prompts, ro.completions, **columns)
    records = completion_records(ro, scored, columns, k)
    metrics = eval_metrics({"completions": ro.completions, "rewards": scored.total.tolist()}, job.samples == 0)
    metrics |= component_means(scored)
    if ref_column:
        metrics |= corpus_metrics(ro.completions, columns[ref_column], ref_column)
    info = {"checkpoint": job.checkpoint, "data": prompts.source, "prompts": len(prompts), "completions": len(records),
            "decoding": "greedy" if job.samples == 0 else f"sampled x{job.samples}", "seed": job.seed,
            "gen": asdict(job.gen), "rewards": list(reward.fns), "weights": reward.weights,
            "reference_column": ref_column or None, "scales": {m: s for m, s in SCALES.items() if m in metrics}}
    result = EvalLMResult(metrics, records, info)
    if job.out:
        write_outputs(Path(job.out), result)
    return result


def completion_records(ro: Rollout, scored: Any, columns: dict[str, list[Any]], k: int) -> list[dict[str, Any]]:
    """One JSON-able row per completion: its prompt, which sample it is, the total and each component (null: the
    function gave no value), and its row's other columns (apart, so that no column can hide a field)."""
    records = []
    for i, (p, c) in enumerate(zip(ro.prompts, ro.completions)):
        parts = {n: None if math.isnan(float(v[i])) else float(v[i]) for n, v in scored.components.items()}
        dropped = scored.dropped is not None and bool(scored.dropped[i])
        records.append({"prompt": p, "completion": c, "sample": i % k, "reward": float(scored.total[i]),
                        "rewards": parts, "dropped": dropped, "columns": {n: v[i] for n, v in columns.items()}})
    return records


def component_means(scored: Any) -> dict[str, float]:
    """`reward/<name>`: each component's mean over the completions it scored (its raw values); `dropped`: how many
    completions a failing reward dropped (reward.on_error=skip), when any."""
    out = {}
    for name, v in scored.components.items():
        present = v[~torch.isnan(v)]
        out[f"reward/{name}"] = float(present.mean()) if present.numel() else math.nan
    n_dropped = int(scored.dropped.sum()) if scored.dropped is not None else 0
    return out | ({"dropped": float(n_dropped)} if n_dropped else {})


def corpus_metrics(completions: list[str], references: list[Any], column: str) -> dict[str, float]:
    """Corpus BLEU and chrF as sacrebleu reports them (0-100: n-gram statistics summed over all completions, not a
    mean of sentence scores), and ROUGE-1/2/L F (0-1) averaged over completions, each the best over its row's
    references (the `rouge` reward's scores). Several references per row are multi-reference BLEU/chrF."""
    refs = [texts_of(v, "corpus metrics", column, i) for i, v in enumerate(references)]
    sacrebleu = require("sacrebleu", "bleu")
    width = max(map(len, refs))
    # sacrebleu takes one stream per reference position; a row with fewer references has None there (skipped)
    streams = [[r[j] if j < len(r) else None for r in refs] for j in range(width)]
    out = {"bleu": float(sacrebleu.corpus_bleu(completions, streams).score),
           "chrf": float(sacrebleu.corpus_chrf(completions, streams).score)}
    for key in ROUGE_KEYS:
        scores = rouge("refs", key)(completions, refs=refs)
        out[key] = sum(scores) / len(scores)
    return out


def write_outputs(out: Path, result: EvalLMResult) -> None:
    """completions.jsonl (one row per completion) and metrics.json (the metrics, their scales and what ran)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "completions.jsonl", "w", encoding="utf-8") as fh:
            for r in result.records:
                fh.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
        metrics = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.metrics.items()}
        (out / "metrics.json").write_text(json.dumps({**result.info, "metrics": metrics}, indent=2, default=str) + "\n",
                                          encoding="utf-8")
    except OSError as e:
        raise DataError(f"--out {out}: cannot write there ({e.strerror or e})") from None


def format_table(result: EvalLMResult) -> str:
    """The metrics as an aligned two-column table, each with its scale where it has one."""
    info, m = result.info, result.metrics
    head = (f"{info['checkpoint']} on {info['data']}: {info['prompts']} prompts, {info['completions']} completions "
            f"({info['decoding']}, seed {info['seed']})")
    width = max(map(len, m), default=0)
    lines = [f"{k:{width}}  {v:10.4f}  {SCALES.get(k, '')}".rstrip() for k, v in m.items()]
    return "\n".join([head, *lines])
