"""Configs: small frozen dataclasses, loaded from YAML plus `a.b=value` overrides.

Every field carries a one-line doc (`metadata["doc"]`) so `--help-config` can print them.
Unknown keys are errors that list the valid ones: a typo must never silently fall back
to a default, because a run with the wrong setting looks exactly like a right one.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")
log = logging.getLogger(__name__)
# The configs that ship with the package (`rewardtune configs list`); `--config NAME` takes one by name.
SHIPPED_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config file or override that cannot be turned into the config dataclass."""


# The doc of every trainer config's `report_to` field (tracking.py)
REPORT_TO_DOC = "experiment trackers sent every metrics.jsonl row: tensorboard, wandb, mlflow, trackio (docs/report-and-tracking.md)"

def doc(default: Any, text: str) -> Any:
    """A dataclass field with a default and a one-line doc."""
    if isinstance(default, (list, dict)):
        raise TypeError("use a tuple for sequence defaults (configs are frozen)")
    return field(default=default, metadata={"doc": text})


def nested(cls: type, text: str) -> Any:
    """A dataclass field holding another config section."""
    return field(default_factory=cls, metadata={"doc": text})


# ---------------------------------------------------------------- shared sections
@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter settings (peft). `r = 0` means full fine-tuning."""

    r: int = doc(0, "adapter rank; 0 disables LoRA (full fine-tuning)")
    alpha: float = doc(16.0, "LoRA scaling numerator (scale = alpha / r)")
    dropout: float = doc(0.0, "dropout on the adapter input")
    target_modules: str = doc("all-linear", "'all-linear' or comma-separated module names")
    base_dtype: Literal["float32", "bfloat16"] = doc(
        "float32", "dtype of the frozen base weights (causal LMs; the adapter stays float32)")
    prepack: bool = doc(True, "generative RL on CPU: pack each frozen float32 weight once for oneDNN (faster "
                              "matmuls, a second copy of those weights; skipped if over 1/4 of free memory)")


@dataclass(frozen=True)
class ModelSettings:
    """Which model to start from."""

    name: str = doc("minilm-l6", "alias (see `rewardtune models list`), local folder or hub id")
    lora: LoraSettings = nested(LoraSettings, "LoRA adapter; r=0 trains all weights")
    add_tokens: tuple = doc((), "classifiers: texts made whole vocabulary entries (e.g. <e1>,</e1>,<e2>,</e2>), "
                                "the embeddings resized")


@dataclass(frozen=True)
class DataSettings:
    """Where examples come from and which columns mean what."""

    path: str = doc("demo", "file (jsonl, json, csv, tsv, parquet), save_to_disk or aclImdb-style folder, hub "
                            "dataset name, or 'demo'")
    text_column: str = doc("text", "column holding the input text")
    label_column: str = doc("label", "column holding the label ('' for none)")
    prompt_column: str = doc("prompt", "column holding prompts (generation tasks)")
    labels: tuple = doc((), "the label set in order; empty = inferred from the data")
    split: str = doc("train", "split for folder / hub sources")
    config: str = doc("", "hub dataset config name (e.g. sst2 of glue); empty = the dataset's default")
    skip_invalid: bool = doc(False, "skip bad rows (counted and logged) instead of failing")
    val_path: str = doc("", "validation file; empty = carve val_fraction from `path`")
    val_fraction: float = doc(0.1, "fraction held out when val_path is empty")
    test_path: str = doc("", "optional test file, evaluated once at the end")
    seed: int = doc(0, "seed of the train/validation split")
    stratify: bool = doc(True, "keep label proportions in the split")
    max_examples: int = doc(0, "use at most this many training examples (0 = all)")
    subset: Literal["random", "first"] = doc(
        "random", "which max_examples: a seeded random sample (stratified like the split), or the file's first rows")


# ---------------------------------------------------------------- loading
def from_dict(cls: type[T], data: dict[str, Any], where: str = "config", base: Any = None) -> T:
    """Build dataclass `cls` from a nested dict, checking keys and types.

    Keys not given keep `base`'s values (the enclosing field's default), not the class defaults:
    `model.lora.r=8` must not reset a section default such as `model.name`.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)  # YAML keys may be ints, None, ...
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys are: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            default = getattr(base, name) if base is not None else _field_default(fields[name])
            kwargs[name] = from_dict(tp, value if value is not None else {}, f"{where}.{name}", default)
        else:
            kwargs[name] = _coerce(tp, value, f"{where}.{name}")
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


@dataclass(frozen=True)
class _Typed:
    """A command-line value: what YAML made of it, and the text as typed (`name=no` names a run "no")."""

    value: Any
    text: str


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check `value` against annotation `tp`, converting the few safe cases (int→float, list→tuple)."""
    origin = typing.get_origin(tp)
    if isinstance(value, _Typed):  # YAML turned the typed word into a bool/number/None a str field cannot mean
        choices = typing.get_args(tp) if origin is Literal else ()
        meant_text = not isinstance(value.value, str) and (tp is str or value.text in choices)
        value = value.text if meant_text else value.value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, where)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _coerce(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[-1] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool):  # in a file, YAML 1.1 reads no/off/false as False: give back the word meant
            value = next((w for w in (("no", "off", "false") if not value else ("yes", "on", "true")) if w in choices), value)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if tp is tuple or origin is tuple:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [v.strip() for v in str(value).split(",") if v.strip()] if isinstance(value, str) else [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _looks_like_float(value):
        return float(value)  # YAML 1.1 reads `lr: 3e-5` in a file as a string
    if tp in (int, float, str, bool):
        if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `name: 123` in a file is still a name
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
        return value
    return value  # Any and other annotations: taken as given


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` → (['a', 'b'], value); the value is parsed as YAML (so 3 → int, true → bool), and a
    str field takes the text as typed instead (`name=no` is the name "no", `name=007` is "007")."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.lr=3e-5")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _looks_like_float(value):
        value = float(value)  # YAML 1.1 reads '3e-5' as a string
    scalar = value is None or isinstance(value, (bool, int, float))
    return key.strip().split("."), _Typed(value, raw.strip()) if scalar else value


def _looks_like_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return any(c.isdigit() for c in s)


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> T:
    """Load `cls` from an optional YAML file, then apply `key=value` overrides in order.

    An empty file means all defaults, like no file. The file is checked on its own first,
    so that a mistake in an override is never reported as one in the file.
    """
    data = renamed_keys(cls, _read_yaml(path), str(path)) if path else {}
    if not overrides:
        return from_dict(cls, data, str(path) if path else "config")
    if path:
        from_dict(cls, data, str(path))
    for item in overrides:
        _apply_override(data, item)
        data = renamed_keys(cls, data, f"override {item!r}")
    return from_dict(cls, data, "config")


def renamed_keys(cls: type, data: Any, where: str) -> Any:
    """`data` with the keys a config class renamed (its `RENAMED`: old dotted key → new) moved to their new place,
    each with a warning; both given is an error. Configs written before a rename (an older run's config.yaml, which
    --resume reads) load as they were meant."""
    for old, new in getattr(cls, "RENAMED", {}).items():
        *osec, okey = old.split(".")
        node = _section(data, osec)
        if not isinstance(node, dict) or okey not in node:
            continue
        *nsec, nkey = new.split(".")
        target = _section(data, nsec, create=True)
        if nkey in target:
            raise ConfigError(f"{where}: {old} and {new} are the same setting ({old} is its old name); give {new} only")
        target[nkey] = node.pop(okey)
        log.warning("%s: %s is now called %s (read as such; write %s)", where, old, new, new)
    return data


def _section(data: Any, keys: list[str], create: bool = False) -> Any:
    """The nested dict at `keys` (None where absent, or created empty when `create`)."""
    node = data
    for k in keys:
        if not isinstance(node, dict):
            return None
        if node.get(k) is None and create:
            node[k] = {}
        node = node.get(k)
    return node


def _read_yaml(path: str | Path) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:  # a folder, no permission, ...
        raise ConfigError(f"config file {path} cannot be read ({e.strerror})") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
    return loaded if loaded is not None else {}


def _apply_override(data: dict[str, Any], item: str) -> None:
    keys, value = parse_override(item)
    node = data
    for k in keys[:-1]:
        if node.get(k) is None:
            node[k] = {}  # an absent section, or an empty one (`train:` in the file)
        node = node[k]
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {k!r} is not a section")
    node[keys[-1]] = value


def to_dict(cfg: Any) -> dict[str, Any]:
    """Config → plain nested dict: tuples become lists so YAML stays readable, and a callable (a reward function
    given as one) becomes its `module:qualname` name, which YAML can hold and `load_function` imports back.
    Written without `dataclasses.asdict`, which deep-copies every value (a callable object may hold a model)."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return callable_spec(v) if callable(v) else v
    return plain(cfg)


def callable_spec(fn: Any) -> str:
    """`module:qualname` of a callable (of the function inside a partial, of the class of a callable object).

    When that name does not import back to `fn` (a lambda, a local function, a partial, an object, or a function of
    `__main__`), it is still written, so config.yaml stays valid YAML and says what ran, and a warning says that a
    run restarted from the file (`--resume`, `--config`) will not find it."""
    target = fn
    while isinstance(target, functools.partial):
        target = target.func
    if not hasattr(target, "__qualname__"):
        target = type(target)
    module, qualname = getattr(target, "__module__", None) or "__main__", target.__qualname__
    spec = f"{module}:{qualname}"
    if module == "__main__" or getattr(sys.modules.get(module), qualname, None) is not fn:
        log.warning("config.yaml names the callable %r %r, which does not import back to it: a run restarted from "
                    "that file (--resume, --config) cannot load it; define it at the top level of an importable "
                    "module to make the run reloadable", fn, spec)
    return spec


def dump_config(cfg: Any) -> str:
    """The resolved config as YAML text; `load_config` of it gives back an equal config (a callable comes back as
    its `module:qualname` name, which the reward loader imports)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def describe(cls: type, prefix: str = "", defaults: Any = None, notes: typing.Mapping[str, str] | None = None) -> list[str]:
    """One line per field: dotted key, default and doc (for `--help-config`); a choice field adds its values, and a
    key in `notes` (dotted, e.g. `reward.functions`) adds its note in brackets (the names a free-text field takes).

    The defaults are read from `defaults` (an instance; default `cls()`), not from each section's class: a command
    may build a section with defaults of its own (`nested(lambda: ModelSettings(name=...))`), and its help must
    print those, the values a run of it uses."""
    defaults = cls() if defaults is None else defaults
    notes = notes or {}
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        value, tp = getattr(defaults, f.name), hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines += describe(tp, f"{prefix}{f.name}.", value, notes)
            continue
        line = f"{prefix}{f.name} = {value!r}  # {f.metadata.get('doc', '')}"
        if typing.get_origin(tp) is Literal:
            line += f" [one of: {', '.join(map(repr, typing.get_args(tp)))}]"
        if f"{prefix}{f.name}" in notes:
            line += f" [{notes[f'{prefix}{f.name}']}]"
        lines.append(line)
    return lines


def shipped_configs() -> dict[str, Path]:
    """Name → file of each config that ships with the package."""
    return {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.yaml"))}


def config_path(spec: str | Path) -> Path:
    """A `--config` value → its file: a file that exists wins, else a shipped config's name (with or without .yaml).

    Only a file wins over a name: a run of the shipped `grpo-smollm2-sentiment` with `runs_dir=.` leaves a folder of
    that name, and the next `--config grpo-smollm2-sentiment` must still mean the shipped file."""
    path = Path(spec)
    if path.is_file():
        return path
    shipped = shipped_configs()
    name = path.name[:-5] if path.name.endswith(".yaml") else path.name
    if path.name == str(spec) and name in shipped:  # a bare name, not a path into some folder
        return shipped[name]
    if path.exists():
        return path  # a folder: load_config says it cannot be read
    raise ConfigError(f"config file {spec} does not exist, and no shipped config is called {name!r}; give a path, "
                      f"or one of: {', '.join(shipped)} (`rewardtune configs list`)")
