"""FwCfg: QEMU's firmware configuration device (fw_cfg) on x86 port I/O, with its DMA interface.

The firmware (SeaBIOS) reads the machine's configuration from it: numbered
items (signature, ID, CPU count, RAM size, ...) and named files listed in the
file directory (``etc/e820``, ``bootorder``, the ACPI tables and the
table-loader script). Layout facts follow QEMU's docs/specs/fw_cfg.rst:

* selector register: 16 bits at window offset 0 (port 0x510); selecting rewinds
  the item to offset 0;
* data register: window offset 1 (port 0x511), read one byte (or more, in
  memory order) at a time; past an item's end, and for an item that does not
  exist, it reads 0; writes to it are ignored, as in QEMU since 2.4;
* DMA address: window offsets 4..11 (ports 0x514..0x51b), big-endian, written as
  two 32-bit halves (writing the low half starts the transfer) or as one 64-bit
  write; reading them gives the signature ``"QEMU CFG"``.

A DMA descriptor is ``be32 control, be32 length, be64 address`` in guest RAM.
Every guest range is checked against RAM first (``GuestMemoryError``); a
descriptor that cannot be read is ignored, and any bad transfer sets the
ERROR bit in the control word the device writes back. Nothing the guest
writes can raise out of the device or make it copy more than an item holds
(beyond an item's end a read zero-fills, in bounded pieces).
"""

from __future__ import annotations

import logging
import struct
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from kvmpy.devices.device import DeviceStateError, check_keys, int_field
from kvmpy.memory.guest_memory import GuestMemoryError

log = logging.getLogger(__name__)

# Item numbers (docs/specs/fw_cfg.rst, include/standard-headers/linux/qemu_fw_cfg.h).
FW_CFG_SIGNATURE = 0x00
FW_CFG_ID = 0x01
FW_CFG_UUID = 0x02
FW_CFG_RAM_SIZE = 0x03
FW_CFG_NOGRAPHIC = 0x04
FW_CFG_NB_CPUS = 0x05
FW_CFG_MACHINE_ID = 0x06
FW_CFG_BOOT_DEVICE = 0x0C
FW_CFG_NUMA = 0x0D
FW_CFG_BOOT_MENU = 0x0E
FW_CFG_MAX_CPUS = 0x0F
FW_CFG_FILE_DIR = 0x19
FW_CFG_FILE_FIRST = 0x20
FW_CFG_FILE_SLOTS = 0x1000 - FW_CFG_FILE_FIRST  # QEMU's default file slot count
FW_CFG_WRITE_CHANNEL = 0x4000
FW_CFG_ARCH_LOCAL = 0x8000
FW_CFG_IRQ0_OVERRIDE = FW_CFG_ARCH_LOCAL + 2
FW_CFG_ENTRY_MASK = ~(FW_CFG_WRITE_CHANNEL | FW_CFG_ARCH_LOCAL) & 0xFFFF

SIGNATURE = b"QEMU"
DMA_SIGNATURE = b"QEMU CFG"
ID_TRADITIONAL = 1 << 0
ID_DMA = 1 << 1
FILE_NAME_MAX = 56

# DMA control bits.
DMA_CTL_ERROR = 0x01
DMA_CTL_READ = 0x02
DMA_CTL_SKIP = 0x04
DMA_CTL_SELECT = 0x08
DMA_CTL_WRITE = 0x10
DESCRIPTOR_SIZE = 16

# Window offsets (the board maps 0x510-0x511 at 0 and 0x514-0x51b at 4).
SELECTOR, DATA, DMA_HIGH, DMA_LOW = 0, 1, 4, 8
PORT_BASE, DMA_PORT = 0x510, 0x514

ZERO_CHUNK = 1 << 20  # zero-fill past an item's end in pieces this large
MAX_ITEM = 1 << 30  # no item (the ACPI tables, a kernel) is anywhere near this


class GuestRam(Protocol):
    """What DMA needs of guest memory; kvmpy.memory.guest_memory.GuestMemory satisfies it."""

    def read(self, gpa: int, length: int) -> bytes: ...

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None: ...

    def check(self, gpa: int, length: int, write: bool = False) -> None: ...


class DmaRefused(ValueError):
    """A DMA transfer the device refuses (a write to a read-only item): the guest sees ERROR."""


@dataclass
class Item:
    data: bytearray
    writable: bool = False


class FwCfg:
    """The device; ``memory`` is guest RAM for DMA (None: no DMA, and ID says so)."""

    def __init__(self, memory: GuestRam | None = None) -> None:
        self.memory = memory
        self.items: dict[int, Item] = {}
        self.files: list[tuple[str, int]] = []  # (name, selector) in the order they were added
        self._lock = threading.Lock()
        self.selector = 0
        self.offset = 0
        self.dma_high = 0
        self.warned: set[str] = set()
        self.add_item(FW_CFG_SIGNATURE, SIGNATURE)
        self.add_item(FW_CFG_ID, struct.pack("<I", ID_TRADITIONAL | (ID_DMA if memory is not None else 0)))
        self._update_dir()

    # ---- building the contents -------------------------------------------------
    def add_item(self, key: int, data: bytes, writable: bool = False) -> None:
        """Add (or replace) a numbered item (below FW_CFG_FILE_FIRST, or an arch-local one)."""
        if not 0 <= key <= 0xFFFF or key & FW_CFG_WRITE_CHANNEL or key == FW_CFG_FILE_DIR \
                or key & FW_CFG_ENTRY_MASK >= FW_CFG_FILE_FIRST:
            raise ValueError(f"fw_cfg item {key:#x} is not a numbered item")
        self._put(key, data, writable)

    def _put(self, key: int, data: bytes, writable: bool = False) -> None:
        if len(data) > MAX_ITEM:
            raise ValueError(f"fw_cfg item {key:#x} is too large ({len(data)} bytes)")
        self.items[key] = Item(bytearray(data), writable)

    def add_u16(self, key: int, value: int) -> None:
        self.add_item(key, struct.pack("<H", value))

    def add_u32(self, key: int, value: int) -> None:
        self.add_item(key, struct.pack("<I", value))

    def add_u64(self, key: int, value: int) -> None:
        self.add_item(key, struct.pack("<Q", value))

    def add_file(self, name: str, data: bytes, writable: bool = False) -> int:
        """Add (or replace) a named file; returns its selector."""
        raw = name.encode()
        if not raw or len(raw) >= FILE_NAME_MAX or b"\0" in raw:
            raise ValueError(f"fw_cfg file name {name!r} must be 1 to {FILE_NAME_MAX - 1} bytes")
        for existing, sel in self.files:
            if existing == name:
                self._put(sel, data, writable)
                self._update_dir()
                return sel
        if len(self.files) >= FW_CFG_FILE_SLOTS:
            raise ValueError("fw_cfg has no free file slot")
        sel = FW_CFG_FILE_FIRST + len(self.files)
        self._put(sel, data, writable)
        self.files.append((name, sel))
        self._update_dir()
        return sel

    def file_data(self, name: str) -> bytes | None:
        for existing, sel in self.files:
            if existing == name:
                return bytes(self.items[sel].data)
        return None

    def _update_dir(self) -> None:
        # Sorted by name, as QEMU keeps its directory (SeaBIOS does not care; Linux lists it).
        out = bytearray(struct.pack(">I", len(self.files)))
        for name, sel in sorted(self.files):
            out += struct.pack(">IHH56s", len(self.items[sel].data), sel, 0, name.encode())
        self.items[FW_CFG_FILE_DIR] = Item(out)

    # ---- the item currently selected ----------------------------------------------
    def _current(self) -> Item | None:
        return self.items.get(self.selector & ~FW_CFG_WRITE_CHANNEL)

    def _select(self, key: int) -> None:
        self.selector = key & 0xFFFF
        self.offset = 0

    # ---- bus interface ------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        with self._lock:
            if offset == DATA:
                item = self._current()
                out = 0
                for i in range(size):
                    byte = 0
                    if item is not None and self.offset < len(item.data):
                        byte = item.data[self.offset]
                        self.offset += 1
                    out |= byte << (8 * i)
                return out
            if DMA_HIGH <= offset < DMA_HIGH + 8 and self.memory is not None:
                start = offset - DMA_HIGH
                return int.from_bytes(DMA_SIGNATURE[start:start + size].ljust(size, b"\0"), "little")
            return 0

    def write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            if offset == SELECTOR and size == 2:
                self._select(value)
            elif offset == DMA_HIGH and self.memory is not None:
                # The register is big-endian: the guest stores the address's bytes in memory order.
                raw = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
                if size == 4:
                    self.dma_high = int.from_bytes(raw, "big")
                elif size == 8:
                    self.dma_high = 0
                    self._dma(int.from_bytes(raw, "big"))
            elif offset == DMA_LOW and size == 4 and self.memory is not None:
                low = int.from_bytes((value & 0xFFFFFFFF).to_bytes(4, "little"), "big")
                address, self.dma_high = (self.dma_high << 32) | low, 0
                self._dma(address)
            # Anything else (data writes, odd widths) is ignored, as QEMU ignores it.

    # ---- DMA ----------------------------------------------------------------------
    def _warn(self, what: str) -> None:
        if what not in self.warned and len(self.warned) < 64:
            self.warned.add(what)
            log.warning("fw_cfg DMA: %s", what)

    def _dma(self, address: int) -> None:
        memory = self.memory
        assert memory is not None
        try:
            control, length, target = struct.unpack(">IIQ", memory.read(address, DESCRIPTOR_SIZE))
        except GuestMemoryError as exc:
            self._warn(f"descriptor at {address:#x} is not in RAM ({exc})")
            return
        error = False
        try:
            self._transfer(memory, control, length, target)
        except (GuestMemoryError, DmaRefused) as exc:
            self._warn(str(exc))
            error = True
        try:
            memory.write(address, struct.pack(">I", DMA_CTL_ERROR if error else 0))
        except GuestMemoryError as exc:
            self._warn(f"cannot write the descriptor back at {address:#x} ({exc})")

    def _transfer(self, memory: GuestRam, control: int, length: int, target: int) -> None:
        if control & DMA_CTL_SELECT:
            self._select(control >> 16)
        if control & DMA_CTL_READ:
            op = DMA_CTL_READ
        elif control & DMA_CTL_WRITE:
            op = DMA_CTL_WRITE
        elif control & DMA_CTL_SKIP:
            op = DMA_CTL_SKIP
        else:
            return  # a select alone
        item = self._current()
        avail = max(len(item.data) - self.offset, 0) if item is not None else 0
        n = min(length, avail)
        if op == DMA_CTL_READ:
            memory.check(target, length, write=True)  # the whole range first: all or nothing
            if n:
                assert item is not None
                memory.write(target, bytes(item.data[self.offset:self.offset + n]))
            pos = n
            while pos < length:  # past the end: zeros
                piece = min(length - pos, ZERO_CHUNK)
                memory.write(target + pos, bytes(piece))
                pos += piece
        elif op == DMA_CTL_WRITE:
            if item is None or not item.writable or length > avail:
                raise DmaRefused(f"write of {length} bytes to fw_cfg item {self.selector:#x} refused")
            data = memory.read(target, n)
            item.data[self.offset:self.offset + n] = data
        self.offset += n

    # ---- device protocol ------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            self.selector = 0
            self.offset = 0
            self.dma_high = 0

    def save(self) -> dict[str, Any]:
        with self._lock:
            return {"selector": self.selector, "offset": self.offset, "dma_high": self.dma_high}

    def validate(self, state: dict[str, Any]) -> tuple[int, int, int]:
        check_keys(state, {"selector", "offset", "dma_high"})
        selector = int_field(state, "selector", 0, 0xFFFF)
        offset = int_field(state, "offset", 0, MAX_ITEM)
        item = self.items.get(selector & ~FW_CFG_WRITE_CHANNEL)
        if offset > (len(item.data) if item is not None else 0):
            raise DeviceStateError(f"fw_cfg offset {offset} is past the end of item {selector:#x}")
        return selector, offset, int_field(state, "dma_high", 0, 0xFFFFFFFF)

    def restore(self, state: dict[str, Any]) -> None:
        selector, offset, dma_high = self.validate(state)
        with self._lock:
            self.selector, self.offset, self.dma_high = selector, offset, dma_high
