"""`rewardtune export`: a run's trained model as a folder that plain transformers (merged LoRA, full fine-tune) or
peft (adapter) loads with `from_pretrained`, with a model card, optionally pushed to the hub.

The run's checkpoints name their base model by the local folder it was loaded from (a bundled alias lives in
rewardtune's cache); an export names the hub id instead, which is what anyone else can load.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import hub
from .model_card import CardFacts, held_out_metrics, model_card
from .models import ALIASES, Alias, ModelError, alias_source, prepared_dir

# Checkpoint files an export leaves out: peft's empty card template (replaced), PPO's value head (not the policy).
LEFT_OUT = ("README.md", "value_head.safetensors")


class ExportError(ModelError):
    """A run folder that cannot be exported, or a push that cannot happen, with the fix."""


@dataclass(frozen=True)
class Trained:
    """A checkpoint to export: its folder, its run folder (None for a bare checkpoint), what it holds."""

    checkpoint: Path
    run_dir: Path | None
    kind: str  # causal-lm | classifier
    adapter: bool  # a LoRA adapter over a base model (else full weights)
    config: dict[str, Any]  # the run's config.yaml ({} without a run folder)
    config_text: str


def find_checkpoint(path: str | Path, which: str = "best") -> tuple[Path, Path | None]:
    """(checkpoint folder, run folder or None): a run folder's `checkpoints/<which>` (else best, else final: a
    classifier run keeps only best), or a checkpoint folder given directly."""
    p = Path(path)
    if (p / "config.yaml").exists() and (p / "checkpoints").is_dir():
        have = [n for n in (which, "best", "final") if (p / "checkpoints" / n).is_dir()]
        if not have:
            raise ExportError(f"{p}: no checkpoints/{which} (nor best/final); did the run finish? A stopped run "
                              f"continues with `--resume {p}`")
        return p / "checkpoints" / have[0], p
    if (p / "adapter_config.json").exists() or (p / "config.json").exists():
        run = p.parent.parent
        return p, run if (run / "config.yaml").exists() else None
    raise ExportError(f"{p}: neither a run folder (config.yaml and checkpoints/) nor a checkpoint folder "
                      "(adapter_config.json or config.json)")


def read_trained(path: str | Path, which: str = "best") -> Trained:
    """What the checkpoint at `path` (a run folder or a checkpoint) holds, and its run's config."""
    import yaml

    ckpt, run = find_checkpoint(path, which)
    adapter = (ckpt / "adapter_config.json").exists()
    if adapter:
        task = json.loads((ckpt / "adapter_config.json").read_text(encoding="utf-8")).get("task_type")
        kind = "causal-lm" if task == "CAUSAL_LM" else "classifier"
    else:
        archs = json.loads((ckpt / "config.json").read_text(encoding="utf-8")).get("architectures") or []
        kind = "causal-lm" if any(a.endswith("ForCausalLM") for a in archs) else "classifier"
    text = (run / "config.yaml").read_text(encoding="utf-8") if run else ""
    return Trained(ckpt, run, kind, adapter, (yaml.safe_load(text) or {}) if text else {}, text)


def base_alias(name: str) -> Alias | None:
    """The bundled alias `name` is (its alias name, or the local folder the alias resolves to), else None."""
    if name in ALIASES:
        return ALIASES[name]
    path = Path(name).expanduser().resolve()
    for alias in ALIASES.values():
        try:
            folder = prepared_dir(alias) if alias.needs_conversion else alias_source(alias)
        except ModelError:  # its package is not installed: `name` cannot be its folder
            continue
        if path == folder.resolve():
            return alias
    return None


def base_model(t: Trained) -> str:
    """The name the export gives its base model: the hub id of a bundled alias, else the name as the run had it."""
    name = ""
    if t.adapter:
        name = json.loads((t.checkpoint / "adapter_config.json").read_text(encoding="utf-8")).get(
            "base_model_name_or_path") or ""
    name = name or (t.config.get("model") or {}).get("name") or ""
    alias = base_alias(name) if name else None
    return alias.hub_id if alias else name


def check_push(repo_id: str) -> None:
    """Refuse a push at once, before any work, when the hub cannot be used (offline mode, no network)."""
    why = hub.unreachable()
    if why:
        raise ExportError(f"cannot push to the hub ({repo_id}): {why}. Fix: export without --push-to-hub now and "
                          f"push later where the hub is reachable (`hf upload {repo_id} OUT`)")


def export_run(path: str | Path, out: str | Path, merge: bool = False, which: str = "best",
               push_to_hub: str = "", private: bool = False) -> Path:
    """Write the trained model of run (or checkpoint) `path` to `out`: the adapter (base model named by its hub id),
    with `merge` the adapter merged into its base, or the full weights; the tokenizer; a model card. The folder
    appears complete or not at all; an existing non-empty `out` is refused. With `push_to_hub`, uploaded to that
    repo id (created if absent)."""
    if push_to_hub:
        check_push(push_to_hub)
    t, out = read_trained(path, which), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not empty; give another --out (nothing was written)")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        form = write_weights(t, tmp, merge)
        (tmp / "README.md").write_text(model_card(card_facts(t, form)), encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if push_to_hub:
        push(out, push_to_hub, private)
    return out


def write_weights(t: Trained, folder: Path, merge: bool) -> str:
    """The weights and tokenizer into `folder`; returns their form: adapter, merged or full."""
    if t.adapter and merge:
        write_merged(t, folder)
        return "merged"
    for f in t.checkpoint.iterdir():
        if f.is_file() and f.name not in LEFT_OUT:
            shutil.copy2(f, folder / f.name)
    if not t.adapter:
        return "full"
    cfg_file = folder / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    cfg["base_model_name_or_path"] = base_model(t)
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return "adapter"


def write_merged(t: Trained, folder: Path) -> None:
    """The adapter folded into its base weights (peft's merge_and_unload): a plain transformers model."""
    from .models import load_trained_causal_lm, load_trained_classifier

    loader = load_trained_causal_lm if t.kind == "causal-lm" else load_trained_classifier
    model, tok = loader(t.checkpoint)
    merged = model.merge_and_unload()
    merged.config.name_or_path = base_model(t)  # written into config.json as `_name_or_path`
    merged.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    if (t.checkpoint / "rewardtune.json").exists():  # label names: `rewardtune eval` reads the export too
        shutil.copy2(t.checkpoint / "rewardtune.json", folder / "rewardtune.json")


def card_facts(t: Trained, form: str) -> CardFacts:
    base = base_model(t)
    alias = next((a for a in ALIASES.values() if a.hub_id == base), None)
    note = (f"Note: trained on rewardtune's `{alias.name}` alias ({alias.description}); the weights on the hub "
            "differ slightly from those it was trained on." if alias and alias.needs_conversion and form == "adapter"
            else "")
    which = t.checkpoint.name if t.run_dir else str(t.checkpoint)
    return CardFacts(base, t.kind, form, which, t.config, t.config_text or "# (no run folder)",
                     held_out_metrics(t.run_dir), note)


def push(folder: Path, repo_id: str, private: bool = False) -> str:
    """Upload `folder` to hub repo `repo_id` (created if absent); its URL. A failure is one line with the cause."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id,
                                 commit_message="Upload model exported by rewardtune")
    except Exception as e:  # auth, permissions, network: the hub client's own words, on one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"push of {folder} to {repo_id} failed: {first}. Fix: `hf auth login` (a token "
                          f"with write access), then `hf upload {repo_id} {folder}`") from None
    return str(getattr(info, "commit_url", "") or f"https://huggingface.co/{repo_id}")
