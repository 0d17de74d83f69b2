"""The MC146818 CMOS real-time clock at ports 0x70/0x71: date and time, plus CMOS memory.

The clock runs from the host's UTC time (QEMU's default ``-rtc base=utc``);
when the guest sets the time, the difference is kept as an offset. The BIOS
memory-size bytes are filled in the way PC firmware leaves them; a board
that boots firmware also gives the boot order (0x3D/0x38) and the CPU count
(0x5F) as QEMU's pc does, which SeaBIOS reads. Periodic,
alarm and update interrupts are not generated.
"""

from __future__ import annotations

import calendar
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from kvmpy.devices.device import bytes_field, check_keys, float_field, int_field

INDEX_PORT = 0x70
DATA_PORT = 0x71

REG_SECONDS, REG_MINUTES, REG_HOURS = 0x00, 0x02, 0x04
REG_WEEKDAY, REG_DAY, REG_MONTH, REG_YEAR = 0x06, 0x07, 0x08, 0x09
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
REG_CENTURY = 0x32

B_SET = 0x80
B_PIE, B_AIE, B_UIE, B_SQWE = 0x40, 0x20, 0x10, 0x08
B_DM_BINARY = 0x04
B_24H = 0x02
D_VRT = 0x80

# The guest can set any date from year 0 to 9999 (about ±3e11 s from now); a wider offset
# would overflow time.gmtime on the guest's next read.
OFFSET_LIMIT = 1e12

TIME_REGS = (REG_SECONDS, REG_MINUTES, REG_HOURS, REG_WEEKDAY, REG_DAY, REG_MONTH, REG_YEAR, REG_CENTURY)


def _bcd(v: int) -> int:
    return ((v // 10) << 4) | (v % 10)


def _unbcd(v: int) -> int:
    return (v >> 4) * 10 + (v & 0x0F)


@dataclass
class CmosRtc:
    ram_below_4g: int = 0
    ram_above_4g: int = 0
    clock: Callable[[], float] = time.time
    offset: float = 0.0  # guest time minus host time, in seconds
    boot_order: str = ""  # QEMU's -boot order letters (a/b floppy, c disk, d CD, n network); "" leaves 0
    nr_cpus: int = 0  # 0x5F holds nr_cpus - 1 when set
    boot_once: str = ""  # -boot once=: the boot bytes until the first reset, which restores boot_order

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.index = 0
        self.cmos = bytearray(128)
        self.cmos[REG_A] = 0x26
        self.cmos[REG_B] = B_24H
        self.cmos[REG_D] = D_VRT
        self._held: time.struct_time | None = None  # time frozen while B_SET is on
        self._fill_memory_sizes()
        self._fill_boot_bytes(self.boot_once or self.boot_order)

    def _fill_memory_sizes(self) -> None:
        kib = self.ram_below_4g // 1024
        ext = min(max(kib - 1024, 0), 0xFFFF)  # KiB above 1 MiB, capped at 64 MiB
        self.cmos[0x15], self.cmos[0x16] = 640 & 0xFF, 640 >> 8
        self.cmos[0x17], self.cmos[0x18] = ext & 0xFF, ext >> 8
        self.cmos[0x30], self.cmos[0x31] = ext & 0xFF, ext >> 8
        above16 = min(max(self.ram_below_4g - (16 << 20), 0) >> 16, 0xFFFF)  # 64 KiB units
        self.cmos[0x34], self.cmos[0x35] = above16 & 0xFF, above16 >> 8
        high = self.ram_above_4g >> 16
        self.cmos[0x5B], self.cmos[0x5C], self.cmos[0x5D] = high & 0xFF, (high >> 8) & 0xFF, (high >> 16) & 0xFF

    def _fill_boot_bytes(self, letters: str) -> None:
        nibble = {"a": 1, "b": 1, "c": 2, "d": 3, "n": 4}
        order = [nibble[c] for c in letters[:3] if c in nibble] + [0, 0, 0]
        if letters:
            self.cmos[0x3D] = order[1] << 4 | order[0]
            self.cmos[0x38] = order[2] << 4  # bit 0 clear: check the floppy boot signature
        if self.nr_cpus:
            self.cmos[0x5F] = min(self.nr_cpus - 1, 0xFF)

    # ---- time --------------------------------------------------------------
    def _now(self) -> time.struct_time:
        if self._held is not None:
            return self._held
        return time.gmtime(self.clock() + self.offset)

    def _encode(self, v: int) -> int:
        return v if self.cmos[REG_B] & B_DM_BINARY else _bcd(v)

    def _decode(self, v: int) -> int:
        return v if self.cmos[REG_B] & B_DM_BINARY else _unbcd(v)

    def _time_reg(self, reg: int) -> int:
        t = self._now()
        if reg == REG_SECONDS:
            return self._encode(t.tm_sec % 60)
        if reg == REG_MINUTES:
            return self._encode(t.tm_min)
        if reg == REG_HOURS:
            hour = t.tm_hour
            if self.cmos[REG_B] & B_24H:
                return self._encode(hour)
            pm = 0x80 if hour >= 12 else 0
            return self._encode(hour % 12 or 12) | pm
        if reg == REG_WEEKDAY:
            return self._encode((t.tm_wday + 1) % 7 + 1)  # 1 = Sunday
        if reg == REG_DAY:
            return self._encode(t.tm_mday)
        if reg == REG_MONTH:
            return self._encode(t.tm_mon)
        if reg == REG_YEAR:
            return self._encode(t.tm_year % 100)
        return self._encode(t.tm_year // 100)

    def _set_time_reg(self, reg: int, value: int) -> None:
        t = list(self._now()[:6])  # year, mon, mday, hour, min, sec
        v = self._decode(value & 0x7F if reg == REG_HOURS else value)
        if reg == REG_HOURS and not self.cmos[REG_B] & B_24H:
            v = v % 12 + (12 if value & 0x80 else 0)
        if reg == REG_SECONDS:
            t[5] = v
        elif reg == REG_MINUTES:
            t[4] = v
        elif reg == REG_HOURS:
            t[3] = v
        elif reg == REG_DAY:
            t[2] = v
        elif reg == REG_MONTH:
            t[1] = v
        elif reg == REG_YEAR:
            t[0] = (t[0] // 100) * 100 + v
        elif reg == REG_CENTURY:
            t[0] = v * 100 + t[0] % 100
        else:
            return
        try:
            stamp = calendar.timegm((t[0], t[1], t[2], t[3], t[4], t[5], 0, 0, 0))
            self._held = time.gmtime(stamp)
        except (ValueError, OverflowError):
            pass  # nonsense dates from the guest are ignored

    # ---- bus interface -----------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        with self._lock:
            if offset == 0:
                return 0xFF
            reg = self.index
            if reg in TIME_REGS:
                return self._time_reg(reg)
            if reg == REG_A:
                return self.cmos[REG_A] & 0x7F  # update-in-progress never set
            if reg == REG_C:
                value, self.cmos[REG_C] = self.cmos[REG_C], 0
                return value
            return self.cmos[reg]

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        with self._lock:
            if offset == 0:
                self.index = value & 0x7F  # bit 7 is the NMI mask
                return
            reg = self.index
            if reg in TIME_REGS:
                self._set_time_reg(reg, value)
                if not self.cmos[REG_B] & B_SET:
                    self._commit_held()
            elif reg == REG_B:
                was_set = self.cmos[REG_B] & B_SET
                if value & B_SET and not was_set:
                    self._held = self._now()
                self.cmos[REG_B] = value
                if was_set and not value & B_SET:
                    self._commit_held()
            elif reg in (REG_C, REG_D):
                pass  # read-only
            else:
                self.cmos[reg] = value

    def _commit_held(self) -> None:
        if self._held is not None:
            self.offset = calendar.timegm(self._held) - self.clock()
            self._held = None

    # ---- migration ---------------------------------------------------------
    def save(self) -> dict[str, Any]:
        with self._lock:
            # The offset is relative to wall time, which is shared by source and destination.
            return {"index": self.index, "cmos": bytes(self.cmos), "offset": self.offset}

    def validate(self, state: dict[str, Any]) -> tuple[bytes, int, float]:
        """The checked fields of a saved state; DeviceStateError if any is unfit."""
        check_keys(state, {"index", "cmos", "offset"})
        return (bytes_field(state, "cmos", 128, exact=True), int_field(state, "index", 0, 0x7F),
                float_field(state, "offset", OFFSET_LIMIT))

    def restore(self, state: dict[str, Any]) -> None:
        """Checks every field first (DeviceStateError), then applies them all."""
        raw, index, offset = self.validate(state)
        with self._lock:
            self.cmos[:] = raw
            self.index = index
            self.offset = offset
            self._held = None

    def reset(self) -> None:
        """A system reset, as on a PC: interrupt enables and flags clear; the time and CMOS memory stay."""
        with self._lock:
            self.index = 0
            self.cmos[REG_B] &= ~(B_PIE | B_AIE | B_UIE | B_SQWE)
            self.cmos[REG_C] = 0
            if self.boot_once:  # QEMU's restore_boot_order: once= lasts until the first reset
                self.boot_once = ""
                self._fill_boot_bytes(self.boot_order)
