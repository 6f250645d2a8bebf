"""RunContext: the set-up every training command shares, in one place.

seed → Accelerator → run folder (`runs/<name>/`) with the resolved `config.yaml`,
`metrics.jsonl` (one JSON object per logged step, also sent to the `report_to` trackers: tracking.py),
`samples.jsonl` and `checkpoints/`. Only the main process writes files; every process gets the same seed so that
initialisation is identical before accelerate shards the data.
"""
from __future__ import annotations

import atexit
import functools
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from .config import dump_config
from .memory import cap_onednn_cache, return_freed_memory

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def _jsonable(v: Any) -> Any:
    """Tensors and numpy scalars → floats; NaN/inf → strings (JSON has no NaN)."""
    if hasattr(v, "item") and getattr(v, "numel", lambda: 1)() == 1:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


@dataclass
class RunContext:
    """Seed, Accelerator, run folder and loggers for one run."""

    dir: Path
    seed: int
    accelerator: Any = None
    started: float = field(default_factory=time.time)
    resume_from: Path | None = None  # the newest complete checkpoint when resuming
    trackers: tuple[str, ...] = ()  # report_to: where each metrics row also goes (tracking.py)
    progress: Any = None  # the tqdm bar whose postfix shows the train rows' reward, KL and loss

    @property
    def is_main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    def _append(self, name: str, obj: dict[str, Any]) -> None:
        if not self.is_main:
            return
        with open(self.dir / name, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(_jsonable(obj)) + "\n")
            fh.flush()  # a killed run keeps every line it logged

    def log(self, step: int, **metrics: Any) -> None:
        """Append one row to metrics.jsonl; send it to the trackers and show it on the progress bar."""
        row = _jsonable({"step": step, **metrics})
        self._append("metrics.jsonl", row)
        if not self.is_main:
            return
        from .tracking import bar_postfix, tracker_values

        if self.trackers:
            self.accelerator.log(tracker_values(row), step=step)
        postfix = bar_postfix(row) if self.progress is not None else None
        if postfix:
            self.progress.set_postfix(postfix, refresh=False)

    def end_trackers(self) -> None:
        """Close the trackers' runs (flush TensorBoard's events, finish the W&B/MLflow/trackio run); once."""
        open_ = [i for i, r in enumerate(_TRACKED) if r is self]
        if open_:
            del _TRACKED[open_[0]]
            self.accelerator.end_training()

    def log_sample(self, step: int, **sample: Any) -> None:
        """Append one row to samples.jsonl."""
        self._append("samples.jsonl", {"step": step, **sample})

    def print(self, *args: Any) -> None:
        if self.is_main:
            print(*args, flush=True)


def discard_failed_start(train: Callable[..., T]) -> Callable[..., T]:
    """Wrap a trainer `train(cfg, ...)`: when it fails before its run folder holds anything but what `start_run`
    wrote (config.yaml, an empty checkpoints/), the folder it created is removed, so that a failed start (a model
    that does not load, a reward that cannot be built) does not block the name. A folder that existed before (a
    resumption), or that holds metrics or checkpoints, is kept."""
    @functools.wraps(train)
    def wrapper(cfg: Any, *args: Any, **kwargs: Any) -> T:
        folder = Path(cfg.runs_dir) / cfg.name
        existed = folder.exists() and any(folder.iterdir())
        try:
            return train(cfg, *args, **kwargs)
        except BaseException:
            if not existed and _only_start(folder) and int(os.environ.get("RANK", "0")) == 0:
                shutil.rmtree(folder, ignore_errors=True)
            raise
    return wrapper


def _only_start(folder: Path) -> bool:
    """The folder holds only what start_run writes: config.yaml and an empty checkpoints/."""
    if not folder.is_dir():
        return False
    left = {p.name for p in folder.iterdir()} - {"config.yaml", ".write-test"}
    return left <= {"checkpoints"} and not any((folder / "checkpoints").iterdir()) if left else True
_TRACKED: list[RunContext] = []  # runs whose trackers are open, oldest first


@atexit.register
def _end_all_trackers() -> None:
    """A run left without its trainer's end (GenRLRun driven by hand, an interrupted notebook) ends at exit."""
    for run in list(_TRACKED):
        run.end_trackers()


def ends_trackers(fn: F) -> F:
    """Decorates a trainer: the trackers of the runs it started end when it returns, stops early or raises."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before = {id(r) for r in _TRACKED}
        try:
            return fn(*args, **kwargs)
        finally:
            for run in [r for r in _TRACKED if id(r) not in before]:
                run.end_trackers()
    return wrapper  # type: ignore[return-value]


def seed_this_process(run: RunContext) -> None:
    """Under several processes, a random stream of its own for each (otherwise every process would draw the same
    dropout masks, sampled actions and completions); one process keeps the run's seed. For a fresh start only: a
    resumed run restores each process's own saved stream."""
    acc = run.accelerator
    if acc.num_processes > 1:
        import torch

        torch.manual_seed(run.seed + 1_000_003 * acc.process_index)


def start_run(config: Any, name: str, root: str | Path = "runs", seed: int = 0,
              accelerator_kwargs: dict[str, Any] | None = None, exist_ok: bool = False) -> RunContext:
    """Seed everything, create the Accelerator and the run folder, write the resolved config.

    The folder is checked for writability before any training starts, so a read-only or full
    disk fails in the first second rather than after an hour of training. With `ckpt.resume=auto`
    an existing folder is continued from its newest complete checkpoint, once the config is
    checked against the one it was started with.
    """
    from accelerate.utils import set_seed

    from .config import to_dict
    from .tracking import accelerator_settings, check_report_to, start_trackers

    trackers = check_report_to(getattr(config, "report_to", ()))  # an unknown or absent one: before the folder
    set_seed(seed)
    return_freed_memory()  # before the first large tensor: see memory.py
    cap_onednn_cache()  # before the first bf16 matmul: see memory.py
    run_dir = Path(root) / name
    accelerator = _accelerator({**(accelerator_kwargs or {}), **accelerator_settings(trackers, run_dir)})
    resume_from = _resume_point(run_dir, config, accelerator, exist_ok)
    accelerator.wait_for_everyone()  # every process has looked before the main one writes there
    _write_config(run_dir, config, accelerator)
    run = RunContext(dir=run_dir, seed=seed, accelerator=accelerator, resume_from=resume_from, trackers=trackers)
    if trackers:
        start_trackers(accelerator, trackers, run_dir, to_dict(config))
        _TRACKED.append(run)
    return run


def _accelerator(accelerator_kwargs: dict[str, Any] | None) -> Any:
    """A fresh Accelerator that steps the scheduler once per global step, on the CPU under torchrun without a GPU."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # Steps are global (every process takes its share of each global batch), so the scheduler must
    # advance once per optimiser step, not num_processes times as accelerate does by default.
    kwargs = {"step_scheduler_with_optimizer": False, **(accelerator_kwargs or {})}
    if "cpu" not in kwargs and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _has_gpu():
        kwargs["cpu"] = True  # else, under torchrun without a GPU, every process silently trains alone
    # Several runs in one process (the quickstart, a notebook) may ask for different precisions;
    # accelerate keeps one global state and refuses a change, so forget it (the process group,
    # held by PartialState, is kept).
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(**kwargs)


def _resume_point(run_dir: Path, config: Any, accelerator: Any, exist_ok: bool) -> Path | None:
    """The checkpoint to continue from (`ckpt.resume=auto` on a started run), None for a fresh start; a non-empty
    folder without resumption is refused (by every process: none waits for the others)."""
    resume = getattr(getattr(config, "ckpt", None), "resume", "")
    if resume == "auto" and (run_dir / "config.yaml").exists():
        return _check_resume(run_dir, config, accelerator.is_main_process)
    if run_dir.exists() and any(run_dir.iterdir()) and not exist_ok:
        raise FileExistsError(f"run folder {run_dir} already exists and is not empty; pick another name, "
                              "or continue it with ckpt.resume=auto (`--resume RUN_DIR`)")
    return None


def _write_config(run_dir: Path, config: Any, accelerator: Any) -> None:
    """The main process checks the folder is writable and writes config.yaml; its failure is raised on every
    process (a barrier would leave the others waiting)."""
    error: OSError | None = None
    if accelerator.is_main_process:
        try:
            _check_writable(run_dir)
            (run_dir / "config.yaml").write_text(dump_config(config), encoding="utf-8")
        except OSError as e:
            error = e
    if accelerator.num_processes > 1:  # the main process's failure, told to all
        from accelerate.utils import broadcast_object_list

        problem = broadcast_object_list([str(error) if error else ""])[0]
        if problem and error is None:
            raise OSError(f"the main process could not write the run folder: {problem}")
    if error is not None:
        raise error


# Keys that may change between a run and its resumption: they do not change what is being trained.
HARMLESS = ("ckpt.", "runs_dir", "train.log_every", "train.eval_batch_size", "train.epochs", "train.max_steps",
            "report_to", "rl.steps", "eval.every", "eval.sample_every", "eval.log_every", "eval.prompts",
            "runtime.micro_batch_size", "runtime.inference_batch_size", "runtime.gradient_checkpointing",  # memory only
            "gen.fast_decode", "gen.check_every", "gen.cuda_graph")  # the same tokens as generate
# Keys added after runs existed, with the value that reproduces what those runs did without them.
ADDED = {"data.subset": "first", "data.config": "", "model.lora.base_dtype": "float32", "train.fast_dropout": False,
         "eval.samples": 0, "eval.best_metric": "reward", "eval.best_mode": "max",
         "ppo.clip_eps_high": 0.0, "ppo.dual_clip": 0.0, "reward.reference_column": "reference",
         "reward.rouge_type": "rougeL", "reward.gold_column": "label", "reward.labels": [],
         "policy": "classifier",  # SFTConfig's, added with `sft policy=causal-lm` (the other configs always had it)
         "report_to": []}


def _check_resume(run_dir: Path, config: Any, is_main: bool = True) -> Path | None:
    """Refuse a resumption whose config changes the run's meaning; return the newest complete checkpoint."""
    import yaml

    from .checkpoint import complete_checkpoints
    from .config import ConfigError, renamed_keys, to_dict

    def flat(d: dict, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
        return out
    saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    old = flat(renamed_keys(type(config), saved, str(run_dir / "config.yaml")))  # written before a key was renamed
    new = flat(to_dict(config))
    changed = {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)
               and not (k not in old and k in ADDED and new[k] == ADDED[k])}
    harmful = {k: v for k, v in changed.items() if not k.startswith(HARMLESS)}
    if harmful:
        diff = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, (a, b) in harmful.items())
        raise ConfigError(f"cannot resume {run_dir}: the config changes what is trained:\n{diff}\n"
                          f"Start a new run (another `name`) for a different experiment.")
    found = complete_checkpoints(run_dir / "checkpoints")
    if changed and is_main:  # one line per resumption, not one per process
        with open(run_dir / "config_changes.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"time": time.time(), "changed": {k: list(v) for k, v in changed.items()}}) + "\n")
    return found[-1] if found else None


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def _check_writable(folder: Path) -> None:
    probe = folder / ".write-test"
    try:
        (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as fh:
            fh.write(b"x" * 4096)
            os.fsync(fh.fileno())
        probe.unlink()
    except OSError as e:
        raise OSError(f"run folder {folder} is not writable ({e}); choose another `--runs-dir`") from None
