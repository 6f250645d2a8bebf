"""Resumable training checkpoints: atomic, pickle-free, and exact.

A checkpoint folder `checkpoints/step-00000120/` holds
- `model.safetensors`: the trainable weights only (the adapter and head with LoRA),
- `optimizer.pt`, `scheduler.pt`: tensors and numbers, read back with `torch.load(weights_only=True)`,
- `rng.safetensors` + `state.json`: every RNG state (torch CPU and each device, NumPy, Python) and the
  trainer's state (step, data position, best score, algorithm state such as EMA baselines),
- `config.yaml`: the resolved config, and `COMPLETE`, written last.

It is written to `step-….tmp`, every file fsynced, then renamed: a crash leaves either the previous
complete checkpoint or the new one. Older ones are deleted only after the new one is complete.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .config import doc
from .stop import StopGuard

PREFIX = "step-"


@dataclass(frozen=True)
class CheckpointSettings:
    """When to write resumable checkpoints, how many to keep, and whether to resume."""

    every: int = doc(0, "optimiser steps between checkpoints (0 = only at the end and on a stop signal)")
    keep_last: int = doc(2, "complete step checkpoints kept (the best model is kept apart)")
    resume: str = doc("", "'' = new run; 'auto' = continue this run folder's newest checkpoint if any")
    stop_after: int = doc(0, "pause: checkpoint and exit after this many steps (0 = run to the end)")
    max_bad_steps: int = doc(3, "consecutive NaN/inf losses or gradients tolerated (each skipped) before stopping")


# ---------------------------------------------------------------- RNG
def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON) describing every RNG a training step may draw from."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(keys.astype(np.int64))
    py = random.getstate()
    return tensors, {"numpy": [kind, int(pos), int(has_gauss), float(gauss)], "python": [py[0], list(py[1]), py[2]]}


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda")), key=lambda k: int(k[4:]))]  # cuda2 < cuda10
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    v, internal, g = meta["python"]
    random.setstate((v, tuple(internal), g))


# ---------------------------------------------------------------- save / load
def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights that training changes: with LoRA, the adapter (and the new head); else every trainable one."""
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_rng(folder: Path, rank: int = 0) -> None:
    """This process's RNG states (each process of a multi-process run draws its own)."""
    from safetensors.torch import save_file

    tensors, meta = rng_state()
    save_file(tensors, str(folder / f"rng-{rank}.safetensors"))
    _fsync_write(folder / f"rng-{rank}.json", json.dumps(meta).encode())


def load_rng(folder: Path, rank: int = 0) -> None:
    from safetensors.torch import load_file

    r = rank if (folder / f"rng-{rank}.json").exists() else 0  # fewer processes saved than load: reuse rank 0
    set_rng_state(load_file(str(folder / f"rng-{r}.safetensors")), json.loads((folder / f"rng-{r}.json").read_text()))


def tmp_folder(root: Path, step: int) -> Path:
    return root / f"{PREFIX}{step:08d}.tmp"


def save_checkpoint(root: Path, step: int, modules: dict[str, torch.nn.Module], optim: Any, sched: Any,
                    state: dict[str, Any], config_text: str, keep_last: int) -> Path:
    """Complete `root/step-XXXXXXXX.tmp` (its rng files already written), rename it, prune older ones.

    Main process only; see `Checkpointer.save` for the multi-process order.
    """
    from safetensors.torch import save_file

    tmp = tmp_folder(root, step)
    final = root / tmp.name[:-len(".tmp")]
    for name, module in modules.items():
        save_file(trainable_state(module), str(tmp / f"{name}.safetensors"))
    torch.save(optim.state_dict(), tmp / "optimizer.pt")
    if sched is not None:
        torch.save(sched.state_dict(), tmp / "scheduler.pt")
    _fsync_write(tmp / "state.json", json.dumps({"step": step, **state}).encode())
    _fsync_write(tmp / "config.yaml", config_text.encode())
    for f in tmp.iterdir():
        if f.suffix in (".safetensors", ".pt"):  # the JSON/YAML files were fsynced as they were written
            _fsync_file(f)
    _fsync_write(tmp / "COMPLETE", b"")
    if final.exists():  # a rerun of the same step: replace it only now that the new one is whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in complete_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def complete_checkpoints(root: Path) -> list[Path]:
    """Step checkpoints with their COMPLETE marker, oldest first (half-written `.tmp` folders are ignored)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and not p.name.endswith(".tmp")
             and (p / "COMPLETE").exists()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def load_checkpoint(folder: Path, modules: dict[str, torch.nn.Module], optim: Any, sched: Any,
                    rank: int = 0) -> dict[str, Any]:
    """Restore weights, optimiser, scheduler and this process's RNG from `folder`; returns the trainer state."""
    from safetensors.torch import load_file

    for name, module in modules.items():
        saved = load_file(str(folder / f"{name}.safetensors"))
        expected = set(trainable_state(module))
        if set(saved) != expected:
            diff = sorted(set(saved) ^ expected)[:5]
            raise ValueError(f"{folder / (name + '.safetensors')}: its weights do not match this model's "
                             f"trainable parameters (first differences: {diff}); was it written by this config?")
        module.load_state_dict(saved, strict=False)
    optim.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    if sched is not None:
        sched.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    load_rng(folder, rank)
    return json.loads((folder / "state.json").read_text())


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (the previous complete one is left as it was)."""


class NonFiniteError(RuntimeError):
    """Too many consecutive steps with a NaN or infinite loss or gradient."""


def _write_error(e: Exception) -> bool:
    """Whether `e` is a failed write (a full disk, a folder gone read-only): an OSError from Python's own writes, a
    SafetensorError from safetensors', a RuntimeError from torch.save's."""
    from safetensors import SafetensorError

    return isinstance(e, (OSError, SafetensorError, RuntimeError))


class Checkpointer:
    """What a training loop needs for exact resumption, in four calls.

        ckpt = Checkpointer(run, cfg.ckpt, {"model": model}, optim, sched, guard)
        state = ckpt.restore()               # None for a new run
        ...after each optimiser step:  if ckpt.step_done(step, state_fn): return ...
        ckpt.ok_to_step(step, loss, grad_norm, batch_ids)  # False: skip this update (NaN/inf)
    """

    def __init__(self, run: Any, settings: CheckpointSettings, modules: dict[str, Any], optim: Any, sched: Any,
                 guard: StopGuard) -> None:
        self.run, self.settings, self.optim, self.sched, self.guard = run, settings, optim, sched, guard
        self.modules = modules
        self.bad_steps = 0
        self.save_s: list[float] = []

    def _unwrapped(self) -> dict[str, torch.nn.Module]:
        return {k: self.run.accelerator.unwrap_model(m) for k, m in self.modules.items()}

    def restore(self) -> dict[str, Any] | None:
        """Load the run's newest complete checkpoint, if resuming; cut the logs back to that point."""
        run = self.run
        if run.resume_from is None:
            self._set_aside_logs()
            return None
        state = load_checkpoint(run.resume_from, self._unwrapped(), self.optim, self.sched,
                                run.accelerator.process_index)
        if run.is_main:
            for name, n in state.get("log_lines", {}).items():
                _truncate_lines(run.dir / name, n)
        run.print(f"resumed from {run.resume_from} (step {state['step']})")
        return state

    def _set_aside_logs(self) -> None:
        """A resumable run killed before its first checkpoint starts over; its logs are kept, renamed."""
        if self.settings.resume and self.run.is_main:
            for name in ("metrics.jsonl", "samples.jsonl"):
                f = self.run.dir / name
                if f.exists() and f.stat().st_size:
                    f.rename(f.with_name(f"{f.stem}.before-{int(time.time())}.jsonl"))

    def step_done(self, step: int, state: Any) -> bool:
        """Checkpoint when due or asked to stop; True means: stop now (the checkpoint is written). With several
        processes they agree first (one small all-reduce per step): a signal may reach them at different steps, and
        a process that saved while another went on to the next step's collectives would hang both."""
        guard, acc, own = self.guard, self.run.accelerator, self.guard.signal_name  # read once: a handler may set it
        stop = guard.should_stop(step)
        if acc.num_processes > 1:  # [asked to stop, got SIGTERM, got SIGINT], summed over processes
            flags = [float(stop)] + [float(own == name) for name in guard.SIGNALS]
            total = acc.reduce(torch.tensor(flags, device=acc.device), "sum").tolist()
            stop = total[0] > 0
            if stop:  # the first signal any process got, in SIGNALS' order: the same everywhere
                guard.agreed = next((n for n, c in zip(guard.SIGNALS, total[1:]) if c > 0), "")
        if stop or (self.settings.every and step % self.settings.every == 0):
            self.save(step, state() if callable(state) else state)
        if stop:
            why = (f"{own} received" if own else
                   f"another process received {guard.agreed}" if guard.agreed else
                   f"ckpt.stop_after={self.settings.stop_after}" if self.guard.should_stop(step) else
                   "another process was asked to stop")
            self.run.print(f"stopped after step {step} ({why}); resume with --resume {self.run.dir}")
        return stop

    def save(self, step: int, state: dict[str, Any]) -> None:
        """Write the checkpoint of `step` (every process calls this: each writes its random state, the main process
        the rest). A write that fails (disk full, read-only) leaves the previous checkpoint intact, and every
        process raises CheckpointError, at the same point: between the parts, the processes agree on whether all
        went well (`_all_wrote`), where a plain barrier would leave the others waiting for the one that failed."""
        run, root = self.run, self.run.checkpoints
        t, tmp = time.perf_counter(), tmp_folder(root, step)

        def prepare() -> None:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)

        def write() -> None:
            lines = {n: _count_lines(run.dir / n) for n in ("metrics.jsonl", "samples.jsonl")}
            config_text = (run.dir / "config.yaml").read_text(encoding="utf-8")
            save_checkpoint(root, step, self._unwrapped(), self.optim, self.sched, {**state, "log_lines": lines},
                            config_text, self.settings.keep_last)
        self._all_wrote(step, prepare if run.is_main else None)
        self._all_wrote(step, lambda: save_rng(tmp, run.accelerator.process_index))
        self._all_wrote(step, write if run.is_main else None)
        self.save_s.append(time.perf_counter() - t)

    def _all_wrote(self, step: int, part: Callable[[], None] | None) -> None:
        """Run this process's `part` of the save (None: nothing to do here); raise CheckpointError on every process if
        it failed on any (a collective under several processes)."""
        from .collectives import failed_ranks

        error: Exception | None = None
        try:
            if part is not None:
                part()
        except Exception as e:  # (any: the other processes must not wait for this one)
            error = e
        acc = self.run.accelerator
        failed = failed_ranks(acc)(error is not None) if acc.num_processes > 1 else [0] * (error is not None)
        if not failed:
            return
        root = self.run.checkpoints
        if self.run.is_main:
            shutil.rmtree(tmp_folder(root, step), ignore_errors=True)
        if error is not None and not _write_error(error):
            raise error  # a bug, not the disk: its own traceback (the other processes raise CheckpointError)
        kept = complete_checkpoints(root)
        why = f"{type(error).__name__}: {error}" if error else f"it failed on process {', '.join(map(str, failed))}"
        raise CheckpointError(f"could not write the checkpoint of step {step} in {root} ({why}); "
                              f"{'the previous one, ' + kept[-1].name + ', is intact' if kept else 'no earlier checkpoint exists'}"
                              "; if the disk is full, free space and resume with --resume") from error

    def save_before_failure(self, step: int, state: Callable[[], dict[str, Any]], rng: Any) -> str:
        """A step failed before it changed the model or wrote a log row (its reward raised while scoring): checkpoint
        the state after `step` with the random state `rng` (`rng_state()` taken when the failed step began), so a
        resumed run repeats the failed step exactly. Returns a sentence for the error message. With several
        processes every one must get here (the save has collectives): the trainers' rewards fail on every process
        together (`CombinedReward.failed_on`), and each process restores its own random state."""
        every, root = self.settings.every, self.run.checkpoints
        if step < 1:
            return "no step had completed"
        if not (every and step % every == 0):  # else step's checkpoint exists already
            set_rng_state(*rng)
            try:
                self.save(step, state())
            except CheckpointError as e:  # the caller's error stays the one raised; this says why nothing was kept
                return f"the state after step {step} could not be checkpointed: {e}"
        return (f"the state after step {step} is checkpointed in {root / f'step-{step:08d}'}; fix the cause and "
                f"resume with --resume {self.run.dir} (ckpt.resume=auto)")

    def ok_to_step(self, step: int, loss: torch.Tensor, grad_norm: Any, batch_ids: Any = None) -> bool:
        """False (and the gradient dropped) when the loss or gradient is NaN/inf; raise after too many in a row."""
        bad = not (torch.isfinite(loss.detach()).all() and torch.isfinite(torch.as_tensor(grad_norm)).all())
        if not bad:
            self.bad_steps = 0
            return True
        self.bad_steps += 1
        self.optim.zero_grad(set_to_none=True)
        ids = None if batch_ids is None else [int(i) for i in batch_ids][:16]
        self.run.log(step, split="skipped", loss=float(loss.detach().float().mean()), grad_norm=float(grad_norm),
                     batch_ids=ids, consecutive=self.bad_steps)
        self.run.print(f"step {step}: non-finite loss or gradient (loss {float(loss.detach().float().mean())}, "
                       f"grad norm {float(grad_norm)}), update skipped; batch rows {ids}")
        if self.bad_steps >= self.settings.max_bad_steps:
            kept = complete_checkpoints(self.run.checkpoints)
            where = (f"the newest checkpoint, {kept[-1]}, is from before them" if kept else
                     "no checkpoint was written before them (ckpt.every sets how often one is)")
            raise NonFiniteError(f"{self.bad_steps} consecutive steps with a non-finite loss or gradient (last: step "
                                 f"{step}); stopped: {where}. Lower the learning rate or check the data/rewards of "
                                 "those rows.")
        return False


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)


def _truncate_lines(path: Path, n: int) -> None:
    """Keep the first n lines; the rest (logged after the checkpoint) moves to `<name>.replaced.jsonl`."""
    if not path.exists():
        return
    lines = path.read_bytes().splitlines(keepends=True)
    if len(lines) <= n:
        return
    with open(path.with_name(f"{path.stem}.replaced.jsonl"), "ab") as fh:
        fh.writelines(lines[n:])
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"".join(lines[:n]))
    os.replace(tmp, path)
