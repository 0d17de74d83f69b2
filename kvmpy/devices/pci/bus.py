"""PciBus: bus 0's 32 slots × 8 functions, PCI configuration mechanism #1, and INTx delivery.

``PciHost`` is the port device behind 0xCF8-0xCFF. CONFIG_ADDRESS (0xCF8)
takes only dword writes and reads back whole (as QEMU's host does); bit 31
enables CONFIG_DATA (0xCFC-0xCFF), whose byte, word and dword accesses reach
bus/device/function/register decoded from CONFIG_ADDRESS plus the low two
port bits. Functions that are absent, on another bus, or reached with the
enable bit clear read as all-ones and ignore writes. An access that is not
naturally aligned is split into aligned pieces as QEMU's memory core does, and
a piece beyond 0xCFF reads as all-ones. ``PciBus`` plugs
functions into slots and hands each one its BAR space and an INTx sink that
forwards (slot, pin, level) to the bus's router (the PIIX3's PIRQ logic on a PC).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Iterator

from kvmpy.devices.device import check_keys, int_field
from kvmpy.devices.pci.device import CONFIG_SIZE, BarSpace, NoBarSpace, PciDevice

log = logging.getLogger(__name__)

CONFIG_ADDRESS, CONFIG_DATA = 0, 4  # offsets inside the host's 8-port window at 0xCF8
CONFIG_PORT = 0xCF8
WINDOW = 8  # 0xCF8-0xCFF; bytes past it are unassigned ports (all-ones)
ENABLE = 1 << 31
MAX_DEVFN = 256

IntxRouter = Callable[[int, int, bool], None]  # (slot, pin 0..3, level)


def devfn(slot: int, function: int) -> int:
    return (slot << 3) | function


class PciBus:
    """Bus 0: functions by devfn; ``space`` is where their BARs appear."""

    def __init__(self, space: BarSpace | None = None) -> None:
        self.space: BarSpace = space if space is not None else NoBarSpace()
        self.functions: dict[int, PciDevice] = {}
        self.router: IntxRouter | None = None

    def plug(self, fn: PciDevice, slot: int, function: int = 0) -> PciDevice:
        if not (0 <= slot < 32 and 0 <= function < 8):
            raise ValueError(f"PCI address {slot:02x}.{function} is outside bus 0")
        d = devfn(slot, function)
        if d in self.functions:
            raise ValueError(f"PCI slot {slot:02x}.{function} is taken by {self.functions[d].name}")
        self.functions[d] = fn
        fn.plug(d, self.space, lambda pin, level: self._intx(slot, pin, level))
        return fn

    def _intx(self, slot: int, pin: int, level: bool) -> None:
        if self.router is not None:
            self.router(slot, pin, level)

    def __iter__(self) -> Iterator[PciDevice]:
        return iter(self.functions[d] for d in sorted(self.functions))

    def config_read(self, bus: int, dfn: int, reg: int, size: int) -> int:
        fn = self.functions.get(dfn) if bus == 0 else None
        if fn is None:
            return (1 << (8 * size)) - 1
        return fn.config_read(reg, size)

    def config_write(self, bus: int, dfn: int, reg: int, size: int, value: int) -> None:
        fn = self.functions.get(dfn) if bus == 0 else None
        if fn is not None:
            fn.config_write(reg, size, value)


class PciHost:
    """Configuration mechanism #1 at 0xCF8 (CONFIG_ADDRESS) and 0xCFC (CONFIG_DATA), as one 8-port device."""

    def __init__(self, bus: PciBus) -> None:
        self.bus = bus
        self._lock = threading.Lock()
        self.config_address = 0

    def _target(self, port_offset: int) -> tuple[int, int, int]:
        addr = self.config_address | (port_offset & 3)
        return (addr >> 16) & 0xFF, (addr >> 8) & 0xFF, addr & (CONFIG_SIZE - 1)

    @staticmethod
    def _pieces(offset: int, size: int) -> Iterator[tuple[int, int, int]]:
        """(offset, size, shift) of the naturally aligned pieces QEMU's memory core splits an access into."""
        pos, shift = offset, 0
        while shift < 8 * size:
            port = CONFIG_PORT + pos
            n = min(4, port & -port, size - shift // 8)
            n = 1 << (n.bit_length() - 1)
            yield pos, n, shift
            pos += n
            shift += 8 * n

    def read(self, offset: int, size: int) -> int:
        if not 0 < size <= 8:
            return 0xFFFFFFFF
        ones = (1 << (8 * size)) - 1
        try:
            if (CONFIG_PORT + offset) % size == 0 and offset + size <= WINDOW:
                return self._read(offset, size)
            value = 0
            for pos, n, shift in self._pieces(offset, size):
                value |= (self._read(pos, n) if pos < WINDOW else (1 << (8 * n)) - 1) << shift
            return value
        except Exception:  # no guest access may take the vCPU loop down
            log.exception("PCI config read at %#x failed", CONFIG_PORT + offset)
        return ones

    def write(self, offset: int, size: int, value: int) -> None:
        if not 0 < size <= 8:
            return
        try:
            if (CONFIG_PORT + offset) % size == 0 and offset + size <= WINDOW:
                self._write(offset, size, value)
                return
            for pos, n, shift in self._pieces(offset, size):
                if pos < WINDOW:
                    self._write(pos, n, (value >> shift) & ((1 << (8 * n)) - 1))
        except Exception:
            log.exception("PCI config write at %#x failed", CONFIG_PORT + offset)

    def _read(self, offset: int, size: int) -> int:
        ones = (1 << (8 * size)) - 1
        if CONFIG_ADDRESS <= offset < CONFIG_DATA:  # QEMU answers any of the four ports with the register
            return self.config_address & ones
        with self._lock:
            if not self.config_address & ENABLE:
                return ones
            bus, dfn, reg = self._target(offset)
            n = min(size, CONFIG_SIZE - reg)
            return self.bus.config_read(bus, dfn, reg, n)  # past 0xFF: the missing bytes read 0

    def _write(self, offset: int, size: int, value: int) -> None:
        if CONFIG_ADDRESS <= offset < CONFIG_DATA:
            if offset == CONFIG_ADDRESS and size == 4:  # byte and word writes to 0xCF8 are not config cycles
                self.config_address = value & 0xFFFFFFFF
            return
        with self._lock:
            if self.config_address & ENABLE:
                bus, dfn, reg = self._target(offset)
                n = min(size, CONFIG_SIZE - reg)
                self.bus.config_write(bus, dfn, reg, n, value & ((1 << (8 * n)) - 1))

    # ---- device protocol (the functions save their own config spaces) ----------------
    def reset(self) -> None:
        self.config_address = 0

    def save(self) -> dict[str, Any]:
        return {"config_address": self.config_address}

    def validate(self, state: dict[str, Any]) -> int:
        check_keys(state, {"config_address"})
        return int_field(state, "config_address", 0, 0xFFFFFFFF)

    def restore(self, state: dict[str, Any]) -> None:
        self.config_address = self.validate(state)
