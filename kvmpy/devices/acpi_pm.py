"""ACPI fixed hardware: the PM1 event/control block, the PM timer and the 0xCF9 reset register.

``AcpiPm`` is mapped as one 12-byte port block (PM1_STS, PM1_EN, PM1_CNT,
two unused bytes, PM_TMR), which is how kvmpy.loader.acpi describes it in the
FADT. Registers accept any access size at any offset, as ACPICA splits and
merges accesses freely. Writing SLP_EN with the S5 sleep type powers the
machine off; SCI_EN always reads as set because there is no legacy (SMM) mode
to leave. The PM timer is a 24-bit counter at 3.579545 MHz derived from the
host's monotonic clock. ``ResetControl`` is the reset control register the FADT
names as RESET_REG: a write with RST_CPU set resets the machine.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from kvmpy.devices.device import check_keys, int_field
from kvmpy.devices.irq import IrqLine, NullIrqLine

log = logging.getLogger(__name__)

BLOCK_SIZE = 12
PM1_STS, PM1_EN, PM1_CNT, PM_TMR = 0, 2, 4, 8
STS_TMR = 1 << 0
STS_PWRBTN = 1 << 8
STS_WAK = 1 << 15
CNT_SCI_EN = 1 << 0
CNT_SLP_TYP_SHIFT = 10
CNT_SLP_TYP_MASK = 7 << CNT_SLP_TYP_SHIFT
CNT_SLP_EN = 1 << 13
PM_TIMER_HZ = 3_579_545
TIMER_MASK = 0xFFFFFF
RST_CPU = 1 << 2


@dataclass
class AcpiPm:
    """``on_poweroff`` runs (in the vCPU thread) when the guest enters S5; ``sci`` is the SCI line."""

    on_poweroff: Callable[[], None]
    sci: IrqLine = field(default_factory=NullIrqLine)
    s5_type: int = 0
    clock_ns: Callable[[], int] = time.monotonic_ns

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._epoch_ns = self.clock_ns()
        self._sci_level = False
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.sts = 0
            self.en = 0
            self.cnt = CNT_SCI_EN
            self._last_overflow = self._ticks() >> 23
            self._update_sci()

    def _ticks(self) -> int:
        return (self.clock_ns() - self._epoch_ns) * PM_TIMER_HZ // 1_000_000_000

    def _register_bytes(self) -> bytes:
        ticks = self._ticks()
        if ticks >> 23 != self._last_overflow:  # bit 23 changed since the last look: TMR_STS
            self._last_overflow = ticks >> 23
            self.sts |= STS_TMR
        return (self.sts.to_bytes(2, "little") + self.en.to_bytes(2, "little")
                + (self.cnt | CNT_SCI_EN).to_bytes(2, "little") + b"\0\0"
                + (ticks & TIMER_MASK).to_bytes(4, "little"))

    # ---- bus interface -------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        with self._lock:
            regs = self._register_bytes()
            self._update_sci()
        return int.from_bytes(regs[offset:offset + size].ljust(size, b"\xff"), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        poweroff = False
        with self._lock:
            for i in range(size):
                poweroff |= self._write_byte(offset + i, (value >> (8 * i)) & 0xFF)
            self._update_sci()
        if poweroff:
            log.info("ACPI: guest entered S5 (soft off)")
            self.on_poweroff()

    def _write_byte(self, off: int, byte: int) -> bool:
        if off in (PM1_STS, PM1_STS + 1):  # write 1 to clear
            self.sts &= ~(byte << (8 * (off - PM1_STS)))
        elif off in (PM1_EN, PM1_EN + 1):
            shift = 8 * (off - PM1_EN)
            self.en = (self.en & ~(0xFF << shift)) | (byte << shift)
        elif off in (PM1_CNT, PM1_CNT + 1):
            shift = 8 * (off - PM1_CNT)
            value = (self.cnt & ~(0xFF << shift)) | (byte << shift)
            self.cnt = value & ~CNT_SLP_EN  # SLP_EN is write-only and self-clearing
            if value & CNT_SLP_EN:
                slp_typ = (value & CNT_SLP_TYP_MASK) >> CNT_SLP_TYP_SHIFT
                if slp_typ == self.s5_type:
                    return True
                log.warning("ACPI: guest asked for sleep type %d, which kvmpy does not implement", slp_typ)
        return False  # the PM timer is read-only

    def press_power_button(self) -> None:
        """The fixed-feature power button (QMP system_powerdown): PWRBTN_STS, and SCI if enabled."""
        with self._lock:
            self.sts |= STS_PWRBTN
            self._update_sci()

    def _update_sci(self) -> None:
        level = bool(self.sts & self.en)
        if level != self._sci_level:
            self._sci_level = level
            self.sci.set_level(level)

    # ---- migration -----------------------------------------------------
    def save(self) -> dict[str, Any]:
        with self._lock:
            return {"sts": self.sts, "en": self.en, "cnt": self.cnt, "ticks": self._ticks()}

    def validate(self, state: dict[str, Any]) -> tuple[int, int, int, int]:
        """The checked fields of a saved state; DeviceStateError if any is unfit."""
        check_keys(state, {"sts", "en", "cnt", "ticks"})
        return (int_field(state, "sts", 0, 0xFFFF), int_field(state, "en", 0, 0xFFFF),
                int_field(state, "cnt", 0, 0xFFFF) & ~CNT_SLP_EN, int_field(state, "ticks", 0, (1 << 63) - 1))

    def restore(self, state: dict[str, Any]) -> None:
        """Checks every field first (DeviceStateError), then applies them all."""
        sts, en, cnt, ticks = self.validate(state)
        with self._lock:
            self.sts, self.en, self.cnt = sts, en, cnt
            # Keep the counter continuous across a migration.
            self._epoch_ns = self.clock_ns() - ticks * 1_000_000_000 // PM_TIMER_HZ
            self._last_overflow = self._ticks() >> 23
            self._sci_level = not self._sci_level
            self._update_sci()


@dataclass
class ResetControl:
    """The reset control register (port 0xCF9): RST_CPU set in a write resets the machine."""

    on_reset: Callable[[], None]

    def __post_init__(self) -> None:
        self.value = 0

    def read(self, offset: int, size: int) -> int:
        return self.value if size == 1 else (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        self.value = value & 0x0E
        if value & RST_CPU:
            self.value = 0
            self.on_reset()

    def reset(self) -> None:
        self.value = 0

    def save(self) -> dict[str, Any]:
        return {"value": self.value}

    def validate(self, state: dict[str, Any]) -> int:
        check_keys(state, {"value"})
        return int_field(state, "value", 0, 0xFF) & 0x0E

    def restore(self, state: dict[str, Any]) -> None:
        self.value = self.validate(state)
