"""The VM's QMP events as a log that scripts can read or wait on (``vm.events``, ``vm.wait_event``).

Events arrive from other threads (the machine's run loop in-process, the QMP
reader for a child process); the log keeps all of them in order. Waiting has
a cursor, like ``console.expect``: each ``wait`` returns the first matching
event after the one the previous ``wait`` returned, so a loop of waits sees
every event once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kvmpy.api.errors import VMGone, WaitTimeout


@dataclass(frozen=True)
class Event:
    name: str  # QMP's event name: STOP, RESUME, RESET, SHUTDOWN, POWERDOWN, MIGRATION, ...
    data: dict[str, Any] = field(default_factory=dict)
    timestamp: float = 0.0  # seconds since the epoch, as QMP's timestamp

    @classmethod
    def from_qmp(cls, message: dict[str, Any]) -> "Event":
        ts = message.get("timestamp") or {}
        when = float(ts.get("seconds", 0)) + float(ts.get("microseconds", 0)) / 1e6 if ts else time.time()
        data = message.get("data")
        return cls(str(message.get("event")), dict(data) if isinstance(data, dict) else {}, when)


class EventLog:
    """Every event so far, plus ``wait(name)`` with a cursor. ``close()`` wakes waiters: no more will come."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._events: list[Event] = []
        self._cursor = 0
        self._closed = False

    def add(self, event: Event) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def all(self) -> list[Event]:
        with self._cond:
            return list(self._events)

    def wait(self, name: str, timeout: float | None = 30.0, **data: Any) -> Event:
        """The next ``name`` event whose data contains ``data``; WaitTimeout names what did arrive."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(self._cursor, len(self._events)):
                    ev = self._events[i]
                    if ev.name == name and all(ev.data.get(k) == v for k, v in data.items()):
                        self._cursor = i + 1
                        return ev
                seen = ", ".join(e.name for e in self._events[self._cursor:]) or "none"
                if self._closed:
                    raise VMGone(f"the VM is gone and sent no {name} event (events since the last wait: {seen})")
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    raise WaitTimeout(f"no {name} event within {timeout} s (events since the last wait: {seen})")
                self._cond.wait(left)
