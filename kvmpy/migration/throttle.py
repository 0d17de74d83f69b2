"""Auto-converge: slow the guest's vCPUs down so a guest that dirties memory faster than the link can migrate.

As QEMU does, each 10 ms of guest run time is followed by a stop of
``pct / (100 - pct)`` times as long. Stops go through the Machine's own
``vcpus_stopped()``, which never resumes a machine that is no longer running.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvmpy.machine import Machine

TIMESLICE = 0.010
MAX_STOP = 0.05  # hold the machine's lifecycle lock at most this long at a time


class CpuThrottle:
    def __init__(self, machine: "Machine") -> None:
        self.machine = machine
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
            stop_for = TIMESLICE * pct / (1 - pct)
            while stop_for > 0 and not self._stop.is_set():
                step = min(stop_for, MAX_STOP)
                with self.machine.vcpus_stopped():
                    self._stop.wait(step)
                stop_for -= step
            self._stop.wait(TIMESLICE)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.percentage = 0
