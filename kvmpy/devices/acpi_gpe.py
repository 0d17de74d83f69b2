"""The ACPI GPE0 block (QEMU pc's at port 0xAFE0): general-purpose event status and enable bits that raise the SCI.

Four bytes, as the FADT describes them: GPE0_STS (two bytes, write 1 to
clear) then GPE0_EN (two bytes). A device reports an event with
``raise_event(bit)``; the SCI is asserted while any enabled status bit is set.
QEMU's pc numbers the events: 1 PCI hotplug, 2 CPU hotplug, 3 memory hotplug.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from kvmpy.devices.device import check_keys, int_field
from kvmpy.devices.irq import IrqLine, NullIrqLine

GPE0_BASE = 0xAFE0
GPE0_LEN = 4
HALF = GPE0_LEN // 2
GPE_MEMORY_HOTPLUG = 3


@dataclass
class AcpiGpe:
    sci: IrqLine = field(default_factory=NullIrqLine)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._level = False
        self.sts = 0
        self.en = 0

    def _update(self) -> None:
        level = bool(self.sts & self.en)
        if level != self._level:
            self._level = level
            self.sci.set_level(level)

    def raise_event(self, bit: int) -> None:
        with self._lock:
            self.sts |= 1 << bit
            self._update()

    def read(self, offset: int, size: int) -> int:
        with self._lock:
            regs = self.sts.to_bytes(HALF, "little") + self.en.to_bytes(HALF, "little")
        return int.from_bytes(regs[offset:offset + size].ljust(size, b"\xff"), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            for i in range(size):
                off, byte = offset + i, (value >> (8 * i)) & 0xFF
                if off < HALF:
                    self.sts &= ~(byte << (8 * off))
                elif off < GPE0_LEN:
                    shift = 8 * (off - HALF)
                    self.en = (self.en & ~(0xFF << shift)) | (byte << shift)
            self._update()

    def reset(self) -> None:
        with self._lock:
            self.sts = self.en = 0
            self._update()

    def save(self) -> dict[str, Any]:
        with self._lock:
            return {"sts": self.sts, "en": self.en}

    def validate(self, state: dict[str, Any]) -> tuple[int, int]:
        check_keys(state, {"sts", "en"})
        return int_field(state, "sts", 0, 0xFFFF), int_field(state, "en", 0, 0xFFFF)

    def restore(self, state: dict[str, Any]) -> None:
        sts, en = self.validate(state)
        with self._lock:
            self.sts, self.en = sts, en
            self._level = not bool(sts & en)  # force the line to the restored level
            self._update()
