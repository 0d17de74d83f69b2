"""PciDevice: one PCI function's type-0 configuration space, its BARs and its INTx pin.

The 256-byte config space carries three masks, as QEMU's PCI core does:
``wmask`` (bits a guest write may change), ``w1cmask`` (bits a guest clears by
writing 1) and everything else read-only. The standard header is filled from a
``PciIdentity``; the device-specific area 0x40-0xFF is writable unless a
capability claims it. A BAR's writable bits are ~(size-1), so writing
all-ones and reading back yields its size mask (the sizing protocol). When the
command register's I/O or memory enable bit or a BAR address changes, the
function asks its ``BarSpace`` (the board's port and memory buses) to unmap
the old window and map the new one; addresses that wrap, are zero or do not
fit the space stay unmapped. Every guest write is bounded to the config space,
so a hostile guest can only change the bits the masks allow.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Protocol

from kvmpy.devices.bus import Device
from kvmpy.devices.device import DeviceStateError, bytes_field, check_keys

if TYPE_CHECKING:
    from kvmpy.memory.ramblock import RAMBlock

log = logging.getLogger(__name__)

CONFIG_SIZE = 256
HEADER_SIZE = 0x40
VENDOR_ID, DEVICE_ID, COMMAND, STATUS = 0x00, 0x02, 0x04, 0x06
REVISION_ID, CLASS_PROG, CLASS_DEVICE = 0x08, 0x09, 0x0A
CACHE_LINE_SIZE, LATENCY_TIMER, HEADER_TYPE = 0x0C, 0x0D, 0x0E
BAR0, NUM_BARS = 0x10, 6
SUBSYSTEM_VENDOR_ID, SUBSYSTEM_ID = 0x2C, 0x2E
CAPABILITY_LIST, INTERRUPT_LINE, INTERRUPT_PIN = 0x34, 0x3C, 0x3D

CMD_IO, CMD_MEMORY, CMD_MASTER = 1 << 0, 1 << 1, 1 << 2
CMD_SERR, CMD_INTX_DISABLE = 1 << 8, 1 << 10
STATUS_INTERRUPT, STATUS_CAP_LIST = 1 << 3, 1 << 4
# Error bits a guest clears by writing 1 (master data parity, signalled/received aborts, SERR, parity).
STATUS_W1C = 0x0100 | 0x0800 | 0x1000 | 0x2000 | 0x4000 | 0x8000
HEADER_MULTIFUNCTION = 0x80

BAR_IO, BAR_MEM_64, BAR_MEM_PREFETCH = 0x1, 0x4, 0x8
IO_SPACE_END = 0x10000
MEM_SPACE_END = 1 << 52  # the board's physical address space
QEMU_SUBSYSTEM = (0x1AF4, 0x1100)  # what QEMU gives every device that names no subsystem


class BarKind(Enum):
    IO = "io"
    MEM32 = "mem32"
    MEM64 = "mem64"


@dataclass(frozen=True)
class PciIdentity:
    """The read-only identity of a function (the header fields lspci shows)."""

    vendor: int
    device: int
    class_code: int  # base class << 8 | subclass, as QMP's class_info.class shows it
    prog_if: int = 0
    revision: int = 0
    subsystem_vendor: int = QEMU_SUBSYSTEM[0]
    subsystem: int = QEMU_SUBSYSTEM[1]
    multifunction: bool = False
    interrupt_pin: int = 0  # 0 none, 1..4 INTA..INTD


@dataclass(frozen=True)
class Bar:
    """A BAR the function decodes: ``size`` is a power of two; ``device`` answers its accesses.

    A BAR with ``ram`` (a framebuffer) is that RAM block mapped straight into the guest
    (a KVM memory slot); ``device`` then sees no accesses."""

    index: int
    kind: BarKind
    size: int
    device: Device
    prefetchable: bool = False
    ram: "RAMBlock | None" = None

    def __post_init__(self) -> None:
        if self.size <= 0 or self.size & (self.size - 1):
            raise ValueError(f"BAR{self.index} size {self.size:#x} is not a power of two")
        last = self.index + (1 if self.kind is BarKind.MEM64 else 0)
        if not 0 <= self.index <= last < NUM_BARS:
            raise ValueError(f"BAR{self.index} does not fit the six BAR registers")
        if self.kind is BarKind.IO and not 4 <= self.size <= 256:
            raise ValueError("an I/O BAR spans 4 to 256 ports")
        if self.kind is not BarKind.IO and self.size < 16:
            raise ValueError("a memory BAR spans at least 16 bytes")

    @property
    def type_bits(self) -> int:
        if self.kind is BarKind.IO:
            return BAR_IO
        return (BAR_MEM_64 if self.kind is BarKind.MEM64 else 0) | (BAR_MEM_PREFETCH if self.prefetchable else 0)


class BarSpace(Protocol):
    """Where BARs appear: the board's port-I/O bus and physical memory (RAM BARs: ``ram``)."""

    def map_bar(self, kind: BarKind, base: int, size: int, device: Device, name: str,
                ram: "RAMBlock | None" = None) -> bool: ...

    def unmap_bar(self, kind: BarKind, base: int) -> None: ...


class NoBarSpace:
    """A function not (yet) plugged into a bus: BARs never appear anywhere."""

    def map_bar(self, kind: BarKind, base: int, size: int, device: Device, name: str,
                ram: "RAMBlock | None" = None) -> bool:
        return False

    def unmap_bar(self, kind: BarKind, base: int) -> None:
        pass


IntxSink = Callable[[int, bool], None]  # (pin 0..3, level), given by the bus on plug


class PciDevice:
    """A type-0 PCI function. Subclasses set ``defaults`` in ``init_config`` and react in ``config_written``."""

    def __init__(self, name: str, identity: PciIdentity, bars: tuple[Bar, ...] = ()) -> None:
        self.name = name
        self.identity = identity
        self.bars = {b.index: b for b in bars}
        self._lock = threading.RLock()
        self.config = bytearray(CONFIG_SIZE)
        self.wmask = bytearray(CONFIG_SIZE)
        self.w1cmask = bytearray(CONFIG_SIZE)
        self._volatile: int | None = None  # volatile_mask() over the whole space, computed on first use
        self.capabilities: list[tuple[int, int, int]] = []  # (id, offset, length)
        self.space: BarSpace = NoBarSpace()
        self.intx: IntxSink | None = None
        self.devfn = -1
        self.qdev_id = ""  # the -device id=, shown by query-pci
        self._mapped: dict[int, tuple[BarKind, int]] = {}  # BAR index -> (kind, base) currently mapped
        self._intx_level = False
        self._init_masks()
        self.init_config()
        self.defaults = bytes(self.config)

    # ---- layout ------------------------------------------------------------------
    def _put(self, buf: bytearray, off: int, size: int, value: int) -> None:
        buf[off:off + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def _get(self, buf: bytes | bytearray, off: int, size: int) -> int:
        return int.from_bytes(buf[off:off + size], "little")

    def _init_masks(self) -> None:
        ident, c = self.identity, self.config
        self._put(c, VENDOR_ID, 2, ident.vendor)
        self._put(c, DEVICE_ID, 2, ident.device)
        c[REVISION_ID] = ident.revision & 0xFF
        c[CLASS_PROG] = ident.prog_if & 0xFF
        self._put(c, CLASS_DEVICE, 2, ident.class_code)
        c[HEADER_TYPE] = HEADER_MULTIFUNCTION if ident.multifunction else 0
        self._put(c, SUBSYSTEM_VENDOR_ID, 2, ident.subsystem_vendor)
        self._put(c, SUBSYSTEM_ID, 2, ident.subsystem)
        c[INTERRUPT_PIN] = ident.interrupt_pin & 0xFF
        self._put(self.wmask, COMMAND, 2, CMD_IO | CMD_MEMORY | CMD_MASTER | CMD_SERR | CMD_INTX_DISABLE)
        self._put(self.w1cmask, STATUS, 2, STATUS_W1C)
        self.wmask[CACHE_LINE_SIZE] = 0xFF
        self.wmask[INTERRUPT_LINE] = 0xFF
        self.wmask[HEADER_SIZE:] = b"\xff" * (CONFIG_SIZE - HEADER_SIZE)
        for bar in self.bars.values():
            off = BAR0 + 4 * bar.index
            if bar.kind is BarKind.MEM64:
                self._put(c, off, 8, bar.type_bits)
                self._put(self.wmask, off, 8, ~(bar.size - 1))
            else:
                self._put(c, off, 4, bar.type_bits)
                self._put(self.wmask, off, 4, ~(bar.size - 1))

    def init_config(self) -> None:
        """Device-specific power-on values (subclasses)."""

    def add_capability(self, cap_id: int, offset: int, body: bytes, writable: bytes | None = None) -> None:
        """A capability at ``offset`` (past the header), linked at the list's head; read-only unless ``writable``."""
        length = 2 + len(body)
        if offset < HEADER_SIZE or offset & 3 or offset + length > CONFIG_SIZE:
            raise ValueError(f"capability at {offset:#x}+{length} does not fit the device-specific area")
        if any(o < offset + length and offset < o + n for _, o, n in self.capabilities):
            raise ValueError(f"capability at {offset:#x} overlaps another")
        self.config[offset] = cap_id
        self.config[offset + 1] = self.config[CAPABILITY_LIST]
        self.config[offset + 2:offset + length] = body
        self.wmask[offset:offset + length] = bytes(length) if writable is None else b"\0\0" + writable
        self.config[CAPABILITY_LIST] = offset
        self._put(self.config, STATUS, 2, self._get(self.config, STATUS, 2) | STATUS_CAP_LIST)
        self.capabilities.append((cap_id, offset, length))

    # ---- plugging ------------------------------------------------------------------
    def plug(self, devfn: int, space: BarSpace, intx: IntxSink) -> None:
        """Called by the bus: where BARs go and where INTx goes."""
        self.devfn, self.space, self.intx = devfn, space, intx

    # ---- config space accesses (also the Device protocol's read/write) ------------------
    def read(self, offset: int, size: int) -> int:
        return self.config_read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.config_write(offset, size, value)

    def config_read(self, addr: int, size: int) -> int:
        if not 0 <= addr < CONFIG_SIZE or size not in (1, 2, 4):
            return (1 << (8 * max(1, min(size, 8)))) - 1
        n = min(size, CONFIG_SIZE - addr)
        with self._lock:
            return self._get(self.config, addr, n)

    def config_write(self, addr: int, size: int, value: int) -> None:
        if not 0 <= addr < CONFIG_SIZE or size not in (1, 2, 4):
            return
        n = min(size, CONFIG_SIZE - addr)
        with self._lock:
            old = bytes(self.config)
            for i in range(n):
                b = (value >> (8 * i)) & 0xFF
                a = addr + i
                w, c1 = self.wmask[a], self.w1cmask[a]
                self.config[a] = ((self.config[a] & ~w) | (b & w)) & ~(b & c1) & 0xFF
            self._after_write(old, addr, n)

    def _after_write(self, old: bytes, addr: int, n: int) -> None:
        touches = lambda lo, hi: addr < hi and lo < addr + n  # noqa: E731
        if touches(COMMAND, COMMAND + 2) or touches(BAR0, BAR0 + 4 * NUM_BARS):
            self.update_mappings()
        intx_toggled = (old[COMMAND + 1] ^ self.config[COMMAND + 1]) & (CMD_INTX_DISABLE >> 8)
        if touches(COMMAND + 1, COMMAND + 2) and intx_toggled:
            self._drive_intx()
        try:
            self.config_written(old, addr, n)
        except Exception:  # a subclass bug must not reach the vCPU loop
            log.exception("%s: config write at %#x failed", self.name, addr)

    def config_written(self, old: bytes, addr: int, size: int) -> None:
        """Hook for subclasses: ``size`` bytes at ``addr`` changed from ``old``."""

    # ---- BARs ------------------------------------------------------------------------
    def bar_address(self, bar: Bar) -> int | None:
        """Where the BAR decodes now, or None (disabled, unassigned, wrapping, or outside the space)."""
        cmd = self._get(self.config, COMMAND, 2)
        off = BAR0 + 4 * bar.index
        if bar.kind is BarKind.IO:
            if not cmd & CMD_IO:
                return None
            base, end = self._get(self.config, off, 4) & ~(bar.size - 1) & 0xFFFFFFFF, IO_SPACE_END
        else:
            if not cmd & CMD_MEMORY:
                return None
            raw = self._get(self.config, off, 8 if bar.kind is BarKind.MEM64 else 4)
            base = raw & ~(bar.size - 1) & ~0xF
            end = MEM_SPACE_END if bar.kind is BarKind.MEM64 else 1 << 32
        if base == 0 or base + bar.size > end:
            return None
        return base

    def update_mappings(self) -> None:
        """Bring the BAR windows on the board's buses in line with the config space."""
        with self._lock:
            for index, bar in self.bars.items():
                want = self.bar_address(bar)
                have = self._mapped.get(index)
                if have is not None and have[1] == want:
                    continue
                if have is not None:
                    self.space.unmap_bar(have[0], have[1])
                    del self._mapped[index]
                if want is not None:
                    name = f"{self.name} BAR{index}"
                    mapped = self.space.map_bar(bar.kind, want, bar.size, bar.device, name) if bar.ram is None \
                        else self.space.map_bar(bar.kind, want, bar.size, bar.device, name, ram=bar.ram)
                    if mapped:
                        self._mapped[index] = (bar.kind, want)

    def mapped_bars(self) -> dict[int, int]:
        """BAR index -> address for the BARs that are on a bus now."""
        with self._lock:
            return {i: base for i, (_, base) in self._mapped.items()}

    def regions(self) -> list[tuple[Bar, int]]:
        """Each BAR with its programmed address (without the type bits), for query-pci."""
        with self._lock:
            out = []
            for index, bar in sorted(self.bars.items()):
                off = BAR0 + 4 * index
                raw = self._get(self.config, off, 8 if bar.kind is BarKind.MEM64 else 4)
                mask = ~0x3 if bar.kind is BarKind.IO else ~0xF
                out.append((bar, raw & mask))
            return out

    # ---- INTx --------------------------------------------------------------------------
    def set_irq(self, level: bool) -> None:
        """The device raises or lowers its INTx pin (masked by the command register's INTx disable)."""
        with self._lock:
            self._intx_level = bool(level)
            status = self._get(self.config, STATUS, 2)
            status = status | STATUS_INTERRUPT if level else status & ~STATUS_INTERRUPT
            self._put(self.config, STATUS, 2, status)
            self._drive_intx()

    def _drive_intx(self) -> None:
        pin = self.config[INTERRUPT_PIN]
        if self.intx is None or not 1 <= pin <= 4:
            return
        masked = self._get(self.config, COMMAND, 2) & CMD_INTX_DISABLE
        self.intx(pin - 1, self._intx_level and not masked)

    # ---- device protocol -----------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            if self._intx_level:
                self._intx_level = False
                self._drive_intx()
            self.config[:] = self.defaults
            self.update_mappings()

    def save(self) -> dict[str, Any]:
        with self._lock:
            return {"config": bytes(self.config), "intx": self._intx_level}

    def validate(self, state: dict[str, Any]) -> tuple[bytes, bool]:
        """The config bytes must differ from the defaults only in bits a guest could have changed."""
        check_keys(state, {"config", "intx"})
        config = bytes_field(state, "config", CONFIG_SIZE, exact=True)
        intx = state["intx"]
        if type(intx) is not bool:
            raise DeviceStateError("intx must be a boolean")
        # The whole space at once as big integers: a snapshot reset validates every PCI function each
        # time, and a per-byte Python loop cost ~150 us a function.
        volatile = int.from_bytes(bytes(self.volatile_mask(a) & 0xFF for a in range(CONFIG_SIZE)), "little") \
            if self._volatile is None else self._volatile
        self._volatile = volatile
        changeable = int.from_bytes(self.wmask, "little") | int.from_bytes(self.w1cmask, "little") | volatile
        bad = (int.from_bytes(config, "little") ^ int.from_bytes(self.defaults, "little")) & ~changeable
        if bad:
            a = ((bad & -bad).bit_length() - 1) // 8  # the lowest offending byte
            raise DeviceStateError(f"config byte {a:#x} = {config[a]:#04x} changes read-only bits")
        return config, intx

    def volatile_mask(self, addr: int) -> int:
        """Bits the device itself changes (beyond the guest's masks); the INTx status bit by default."""
        return STATUS_INTERRUPT if addr == STATUS else 0

    def restore(self, state: dict[str, Any]) -> None:
        config, intx = self.validate(state)
        self.restore_config(config, intx)

    def restore_config(self, config: bytes, intx: bool) -> None:
        """Apply a validated config space and INTx level (for subclasses whose state wraps it)."""
        with self._lock:
            self.config[:] = config
            self._intx_level = intx
            self.update_mappings()
            self._drive_intx()
        self.config_restored()

    def config_restored(self) -> None:
        """Hook for subclasses: re-derive side effects from the restored config space."""

    def close(self) -> None:
        """Release host resources (threads, fds) at VM teardown; nothing by default."""

