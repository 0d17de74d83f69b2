"""Auto-converge: slow the guest's vCPUs down so a guest that dirties memory faster than the link can migrate.

As QEMU does, each 10 ms of guest run time is followed by a stop of
``pct / (100 - pct)`` times as long. The vCPUs are resumed, under the
Machine's lifecycle lock, only if the machine is still meant to be running.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvmpy.machine import Machine

TIMESLICE = 0.010


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
        m = self.machine
        while not self._stop.is_set():
            pct = self.percentage / 100
            for t in m.threads:
                t.pause(wait=False)
            self._stop.wait(TIMESLICE * pct / (1 - pct))
            # Resume only a machine that is still meant to run (not one stopped meanwhile for switchover).
            with m._lifecycle:
                if m.state.value == "running" and m.events.empty():
                    for t in m.threads:
                        t.resume()
            self._stop.wait(TIMESLICE)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.percentage = 0
