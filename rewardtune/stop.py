"""Graceful stops: SIGTERM/SIGINT (and ckpt.stop_after) end a run at the next step boundary, where the
Checkpointer writes a checkpoint; with several processes they agree on the step and the signal."""
from __future__ import annotations

import os
import signal
from typing import Any


class StopGuard:
    """SIGTERM/SIGINT ask for a graceful stop at the next step boundary; a second signal exits at once."""

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self, stop_after: int = 0) -> None:
        self.stop_after, self.signal_name = stop_after, ""
        # Several processes: the signal all of them stop with, agreed when they agree to stop ('' for none: a
        # pause); None before that, or with one process.
        self.agreed: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopGuard":
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread (a notebook worker): no signal handling, the rest works
            self._previous.clear()
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal_name:
            print(f"\nsecond {signal.Signals(signum).name}: exiting now, without a checkpoint", flush=True)
            os._exit(128 + signum)
        self.signal_name = signal.Signals(signum).name
        print(f"\n{self.signal_name} received: finishing this step, then writing a checkpoint "
              "(send it again to exit at once)", flush=True)

    def should_stop(self, step: int) -> bool:
        return bool(self.signal_name) or (self.stop_after > 0 and step >= self.stop_after)

    @property
    def stop_signal(self) -> str:
        """The signal that stops the run ('' if none). With several processes, the one they agreed on when they
        stopped, the same on every process (a signal arriving later, during the save, does not change it): all
        exit with the same code, and none waits at the command's closing barrier for one that has left."""
        return self.signal_name if self.agreed is None else self.agreed
