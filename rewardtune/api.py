"""The notebook API: `train_sft`, `train_rl`, `train_reward_model` take a model name, data (a path, in-memory rows or
a `datasets.Dataset`), rewards (names or Python callables) and keyword overrides, run the same trainers as the
command line, and return the trained model, its tokenizer and the run's summary (`TrainResult`).

    from rewardtune import train_rl
    result = train_rl("smollm2-135m-instruct", "demo-prompts", rewards=[myreward], rl={"steps": 8})

A run is named `<kind>-<date>-<time>` (a counter added on a clash), so running a cell again starts a new run; an
explicit `name` that exists is refused unless `overwrite=True`. In-memory rows are written once to
`<runs_dir>/.data/<hash of the rows>.jsonl`, so config.yaml names a file that a `--resume` or a rerun can read.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from .config import ConfigError, from_dict, load_config


@dataclass
class TrainResult:
    """What a notebook run gives back: the trained model (its `checkpoints/best`: the best by the validation or
    held-out metric), its tokenizer, the trainer's summary (what the command line prints) and the run folder."""

    model: Any
    tokenizer: Any
    summary: dict[str, Any]
    run_dir: Path


def _trainers(command: str) -> dict[str, tuple[type, Callable[..., dict[str, Any]]]]:
    """policy kind → (config class, trainer) of `command` (sft, rl, rm)."""
    if command == "rm":
        from .train.reward_model import RMConfig, train_reward_model as rm

        return {"classifier": (RMConfig, rm)}
    if command == "sft":
        from .train import sft, sft_lm, sft_lm_config

        return {"classifier": (sft.SFTConfig, sft.train_sft), "causal-lm": (sft_lm_config.SFTLMConfig, sft_lm.train_sft_lm)}
    from .train import gen_config, rl_classifier, rl_generate

    return {"classifier": (rl_classifier.RLClassifierConfig, rl_classifier.train_rl_classifier),
            "causal-lm": (gen_config.GenRLConfig, rl_generate.train_rl_generate)}


def policy_of(model: str) -> str:
    """causal-lm or classifier, from the model: a bundled alias's kind, or a folder's architecture (else classifier)."""
    from .models import ALIASES

    if model in ALIASES:
        return "causal-lm" if ALIASES[model].kind == "causal-lm" else "classifier"
    for name in ("config.json", "adapter_config.json"):
        path = Path(model).expanduser() / name
        if path.is_file():
            meta = json.loads(path.read_text(encoding="utf-8"))
            causal = meta.get("task_type") == "CAUSAL_LM" or any(a.endswith("ForCausalLM") for a in meta.get("architectures") or [])
            return "causal-lm" if causal else "classifier"
    return "classifier"


def data_path(data: Any, runs_dir: str | Path) -> str:
    """A path as given; rows (a list of dicts) or a `datasets.Dataset` written once as JSON Lines under
    `<runs_dir>/.data/`, named by a hash of their content (the same rows: the same file)."""
    if isinstance(data, (str, Path)):
        return str(data)
    rows = data.to_list() if hasattr(data, "to_list") else list(data)
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise ConfigError("data: expected a path, a non-empty list of dicts (one per row) or a datasets.Dataset")
    try:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    except TypeError as e:
        raise ConfigError(f"data: a row holds a value JSON cannot store ({e}); give plain text, numbers and lists") from None
    path = Path(runs_dir) / ".data" / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return str(path)


def run_name(kind: str, runs_dir: str | Path, name: str | None, overwrite: bool) -> str:
    """`name`, checked (an existing folder is refused unless `overwrite`, which removes it); else a new
    `<kind>-<date>-<time>[-N]` that no folder has."""
    root = Path(runs_dir)
    if name:
        folder = root / name
        if folder.exists() and any(folder.iterdir()):
            if not overwrite:
                raise FileExistsError(f"run folder {folder} already exists; pass overwrite=True to replace it, "
                                      "another name, or none (a new name is made)")
            shutil.rmtree(folder)
        return name
    stem = f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while (root / (stem if n == 1 else f"{stem}-{n}")).exists():
        n += 1
    return stem if n == 1 else f"{stem}-{n}"


def build_config(cls: type, config: str | Path | None, overrides: Sequence[str], sections: dict[str, Any],
                 where: str) -> Any:
    """The config a run gets: the class's defaults, then a YAML file, then `key=value` overrides, then the keyword
    sections (`rl={"steps": 8}`, `seed=1`), each checked as the command line checks them."""
    cfg = load_config(cls, config, list(overrides))
    return from_dict(cls, sections, where, base=cfg) if sections else cfg


def _merge(sections: dict[str, Any], key: str, values: dict[str, Any]) -> None:
    """`values` (those not None) into section `key` of the keyword overrides, the caller's own keys winning."""
    given = {k: v for k, v in values.items() if v is not None}
    if given:
        sections[key] = {**given, **(sections.get(key) or {})}


def _run(command: str, model: str | dict[str, Any] | None, data: Any, policy: str | None, name: str | None, overwrite: bool,
         options: dict[str, Any], sections: dict[str, Any]) -> TrainResult:
    """Build the config of `command` under its policy, name the run, train, and load what it trained. `model` may be
    the model section as a dict (`{"name": ..., "lora": {"r": 16}}`), `data` the data section."""
    runs_dir = sections.get("runs_dir", "runs")
    if isinstance(model, dict):
        sections["model"], model = model, model.get("name")
    if isinstance(data, dict):  # the data section; its path (and val_path) may be rows or a Dataset too
        sections["data"] = {**data, **{k: data_path(data[k], runs_dir) for k in ("path", "val_path") if k in data}}
        data = None
    policy = policy or (policy_of(model) if model else "classifier")
    kinds = _trainers(command)
    if policy not in kinds:
        raise ConfigError(f"policy {policy!r} is not one of: {', '.join(kinds)}")
    cls, train = kinds[policy]
    _merge(sections, "model", {"name": model})
    _merge(sections, "data", {"path": None if data is None else data_path(data, runs_dir),
                              "val_path": None if options.get("val_data") is None else data_path(options["val_data"], runs_dir)})
    if options.get("rewards") is not None:
        rewards = options["rewards"]
        _merge(sections, "reward", {"functions": tuple(rewards) if isinstance(rewards, (list, tuple)) else (rewards,)})
    cfg = build_config(cls, options.get("config"), options.get("overrides", ()), sections, f"train_{command}(...)")
    cfg = replace(cfg, name=run_name(command if policy == "classifier" else f"{command}-lm", cfg.runs_dir, name,
                                     overwrite))
    summary = train(cfg, show_progress=options.get("show_progress", True))
    model_, tok = load_trained(Path(summary["run_dir"]), policy)
    return TrainResult(model_, tok, summary, Path(summary["run_dir"]))


def load_trained(run_dir: Path, policy: str) -> tuple[Any, Any]:
    """The model a run kept in checkpoints/best (final where there is no best), and its tokenizer."""
    from .models import load_causal_lm, load_trained_causal_lm, load_trained_classifier

    folder = next((run_dir / "checkpoints" / n for n in ("best", "final") if (run_dir / "checkpoints" / n).is_dir()),
                  None)
    if folder is None:  # a stopped run: nothing kept yet
        return None, None
    if policy == "classifier":
        return load_trained_classifier(folder)
    return load_trained_causal_lm(folder) if (folder / "adapter_config.json").exists() else load_causal_lm(str(folder))


def train_sft(model: str | dict[str, Any] | None = None, data: Any = None, *, policy: str | None = None, name: str | None = None,
              overwrite: bool = False, val_data: Any = None, config: str | Path | None = None,
              overrides: Sequence[str] = (), show_progress: bool = True, **sections: Any) -> TrainResult:
    """Supervised fine-tuning: a classifier on labelled texts, or (`policy="causal-lm"`, the default for a causal LM)
    a causal LM on prompt/completion rows. `model`: a name, or the model section as a dict (with LoRA:
    `{"name": "smollm2-135m-instruct", "lora": {"r": 16}}`); `data`: a path, rows, a Dataset, or the data section
    as a dict (`{"path": rows, "val_fraction": 0.2}`). `sections`: config sections as dicts (`train={"epochs": 1}`) or top-level
    keys (`seed=1`, `runs_dir="runs"`); `overrides`: `key=value` strings as on the command line."""
    return _run("sft", model, data, policy, name, overwrite, {"val_data": val_data, "config": config,
                "overrides": overrides, "show_progress": show_progress}, sections)


def train_rl(model: str | dict[str, Any] | None = None, data: Any = None, rewards: Any = None, *, policy: str | None = None,
             name: str | None = None, overwrite: bool = False, val_data: Any = None, config: str | Path | None = None,
             overrides: Sequence[str] = (), show_progress: bool = True, **sections: Any) -> TrainResult:
    """Reward-driven fine-tuning of a classifier, or (`policy="causal-lm"`, the default for a causal LM) of a causal
    LM. `rewards`: one or a list of built-in names, `rm:FOLDER`, `module:function` or Python callables
    `(prompts, completions, **columns) -> list[float | None]`; the rest as `train_sft`."""
    return _run("rl", model, data, policy, name, overwrite, {"rewards": rewards, "val_data": val_data,
                "config": config, "overrides": overrides, "show_progress": show_progress}, sections)


def train_reward_model(model: str | dict[str, Any] | None = None, data: Any = None, *, name: str | None = None,
                       overwrite: bool = False, val_data: Any = None, config: str | Path | None = None,
                       overrides: Sequence[str] = (), show_progress: bool = True, **sections: Any) -> TrainResult:
    """A reward model (`rewardtune rm train`): `rm={"mode": "pairwise"}` for chosen/rejected rows; the rest as
    `train_sft`. The result's run folder's checkpoints/best is what `rewards=["rm:<that folder>"]` takes."""
    return _run("rm", model, data, "classifier", name, overwrite, {"val_data": val_data, "config": config,
                "overrides": overrides, "show_progress": show_progress}, sections)
