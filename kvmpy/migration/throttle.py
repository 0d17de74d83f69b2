"""Auto-converge: slow the guest's vCPUs down so a guest that dirties memory faster than the link can migrate.

As QEMU does, each 10 ms of guest run time is followed by a stop of
``pct / (100 - pct)`` times as long. The stop goes through the lifecycle's
``hold_vcpus()``/``release_vcpus()``, so the vCPUs run again only if the
machine is still meant to be running (not one stopped meanwhile for switchover).
"""

from __future__ import annotations

import threading
from typing import Protocol

TIMESLICE = 0.010


class Throttleable(Protocol):
    """What throttling needs from a lifecycle."""

    def hold_vcpus(self) -> None: ...

    def release_vcpus(self) -> None: ...


class CpuThrottle:
    def __init__(self, lifecycle: Throttleable) -> None:
        self.lifecycle = lifecycle
        self.percentage = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set(self, pct: int) -> None:
        self.percentage = max(0, min(99, pct))
        if self.percentage and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="migration-throttle", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            pct = self.percentage / 100
            self.lifecycle.hold_vcpus()
            self._stop.wait(TIMESLICE * pct / (1 - pct))
            self.lifecycle.release_vcpus()
            self._stop.wait(TIMESLICE)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.percentage = 0
