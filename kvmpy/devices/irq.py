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
