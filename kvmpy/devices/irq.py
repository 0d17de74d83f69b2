"""Interrupt lines: the one interface a device uses to raise and lower its IRQ.

Devices hold an ``IrqLine`` and never know which interrupt controller is behind
it: KVM's in-kernel irqchip (``KvmIrqLine``, through KVM_IRQ_LINE) on x86, or a
software PLIC under the TCG fallback.
"""

from __future__ import annotations

from typing import Protocol


class IrqLine(Protocol):
    def set_level(self, level: bool) -> None: ...


class NullIrqLine:
    """A line wired to nothing, for devices configured without an interrupt."""

    def set_level(self, level: bool) -> None:
        pass


class SharedIrq:
    """One interrupt line several devices drive (the SCI): asserted while any source asserts it.

    ``source()`` gives each device its own IrqLine; the output follows the OR of them.
    """

    def __init__(self, line: IrqLine) -> None:
        import threading

        self.line = line
        self._levels: list[bool] = []
        self._lock = threading.Lock()
        self._out = False

    def source(self) -> IrqLine:
        with self._lock:
            self._levels.append(False)
            index = len(self._levels) - 1
        return _SharedSource(self, index)

    def set_source(self, index: int, level: bool) -> None:
        with self._lock:
            self._levels[index] = level
            out = any(self._levels)
            if out != self._out:
                self._out = out
                self.line.set_level(out)


class _SharedSource:
    def __init__(self, shared: SharedIrq, index: int) -> None:
        self.shared, self.index = shared, index

    def set_level(self, level: bool) -> None:
        self.shared.set_source(self.index, level)
