"""MsiX: a PCI function's MSI-X capability, its vector table and pending-bit array (PBA).

The capability (ID 0x11) sits in the function's config space: Message Control
(table size N-1, read-only; Function Mask bit 14 and MSI-X Enable bit 15
writable), then the table's and the PBA's BAR indicator and offset. The table
(16 bytes a vector: message address low/high, data, vector control with its
mask bit) and the PBA live in memory BARs; ``MsiX`` itself is the ``Device``
that a BAR maps when both are in one BAR (QEMU's virtio-pci layout: a 4 KiB
BAR 1 with the table at 0 and the PBA at 0x800), and ``bar_device(i)`` serves
a BAR holding only one of them.

Each vector is sent through an ``MsiVector`` of the board's ``MsiRoutes``,
made when the vector is first needed. A vector is masked while MSI-X is
disabled, the function is masked, or its own mask bit is set; ``notify()`` on a
masked vector sets its PBA bit instead, and unmasking delivers that pending
message. The routes follow the table: a changed message re-routes the vector's
GSI, and enabling MSI-X programs every unmasked vector in one routing update.

Guest accesses of any size (1-8 bytes) at any offset are split into the
dwords they touch and bounded to the structures; reserved bits read as zero,
and the PBA and everything outside the structures is read-only.

The owning ``PciDevice`` calls ``attach()`` from its ``init_config()``,
``config_written()`` from its hook of the same name, ``config_changed()`` from
``config_restored()``, and ``reset()``/``save()``/``restore()`` with its own.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from kvmpy.devices.device import DeviceStateError, bytes_field, check_keys
from kvmpy.devices.msi import MsiRoutes, MsiRoutesFull, MsiVector
from kvmpy.devices.pci.device import NUM_BARS, PciDevice
from kvmpy.kvm.errors import KvmError

log = logging.getLogger(__name__)

CAP_ID_MSIX = 0x11
CAP_LENGTH = 12  # ID, next, Message Control, Table Offset/BIR, PBA Offset/BIR
MSGCTL, TABLE_REG, PBA_REG = 2, 4, 8  # offsets inside the capability
MSGCTL_ENABLE = 1 << 15
MSGCTL_FUNCTION_MASK = 1 << 14
MSGCTL_TABLE_SIZE = 0x7FF
MAX_VECTORS = 2048
ENTRY_SIZE = 16
ENTRY_ADDR_LO, ENTRY_ADDR_HI, ENTRY_DATA, ENTRY_CTRL = 0, 4, 8, 12
CTRL_MASKED = 1


class MsiX:
    """MSI-X for one function: ``nvectors`` vectors whose messages go through ``routes``."""

    def __init__(self, routes: MsiRoutes, nvectors: int, table_bar: int = 1, table_offset: int = 0,
                 pba_bar: int = 1, pba_offset: int = 0x800, bar_size: int = 0x1000, name: str = "msix") -> None:
        if not 1 <= nvectors <= MAX_VECTORS:
            raise ValueError(f"MSI-X has 1 to {MAX_VECTORS} vectors, not {nvectors}")
        for what, bar, offset in (("table", table_bar, table_offset), ("PBA", pba_bar, pba_offset)):
            if not 0 <= bar < NUM_BARS or offset & 7 or offset < 0:
                raise ValueError(f"MSI-X {what} BAR{bar} offset {offset:#x} is not a QWORD-aligned place in a BAR")
        self.routes = routes
        self.nvectors = nvectors
        self.name = name
        self.table_bar, self.table_offset = table_bar, table_offset
        self.pba_bar, self.pba_offset = pba_bar, pba_offset
        self.table_size = nvectors * ENTRY_SIZE
        self.pba_size = (nvectors + 63) // 64 * 8
        if table_offset + self.table_size > bar_size or pba_offset + self.pba_size > bar_size:
            raise ValueError(f"MSI-X structures do not fit a {bar_size:#x}-byte BAR")
        if table_bar == pba_bar and table_offset < pba_offset + self.pba_size \
                and pba_offset < table_offset + self.table_size:
            raise ValueError("the MSI-X table and PBA overlap")
        self._lock = threading.RLock()
        self._table = bytearray(self.table_size)
        self._pba = 0  # bit i: vector i is pending
        self._vectors: dict[int, MsiVector] = {}
        self._live: dict[int, tuple[int, int]] = {}  # unmasked vectors -> the message their route carries
        self._enabled = False
        self._function_masked = False
        self._warned = False
        self.fn: PciDevice | None = None
        self.cap_offset = -1
        self._init_table()

    def _init_table(self) -> None:
        self._table[:] = bytes(self.table_size)
        for i in range(self.nvectors):
            self._table[i * ENTRY_SIZE + ENTRY_CTRL] = CTRL_MASKED  # every vector starts masked
        self._pba = 0

    # ---- the capability in config space -----------------------------------------------
    def attach(self, fn: PciDevice, cap_offset: int) -> None:
        """Add the capability to ``fn``'s config space (call from ``init_config``)."""
        body = ((self.nvectors - 1).to_bytes(2, "little")
                + (self.table_offset | self.table_bar).to_bytes(4, "little")
                + (self.pba_offset | self.pba_bar).to_bytes(4, "little"))
        writable = (MSGCTL_ENABLE | MSGCTL_FUNCTION_MASK).to_bytes(2, "little") + bytes(8)
        fn.add_capability(CAP_ID_MSIX, cap_offset, body, writable)
        self.fn, self.cap_offset = fn, cap_offset

    def config_written(self, addr: int, size: int) -> None:
        """The function's config space changed at ``addr``; follow Message Control if it was touched."""
        lo = self.cap_offset + MSGCTL
        if self.fn is not None and addr < lo + 2 and lo < addr + size:
            self.config_changed()

    def config_changed(self) -> None:
        """Re-read Enable and Function Mask from config space and bring the vectors in line."""
        if self.fn is None:
            return
        ctl = self.fn.config_read(self.cap_offset + MSGCTL, 2)
        with self._lock:
            self._enabled = bool(ctl & MSGCTL_ENABLE)
            self._function_masked = bool(ctl & MSGCTL_FUNCTION_MASK)
            self._sync(range(self.nvectors))

    @property
    def enabled(self) -> bool:
        return self._enabled

    # ---- delivery -----------------------------------------------------------------------
    def notify(self, vector: int) -> bool:
        """Signal ``vector``: sent now, or pending while masked. False when MSI-X is disabled (use INTx)."""
        with self._lock:
            if not self._enabled:
                return False
            if not 0 <= vector < self.nvectors:
                return True  # e.g. virtio's NO_VECTOR: no interrupt at all
            if vector not in self._live:
                self._pba |= 1 << vector
                return True
            self._vector(vector).trigger()
            return True

    def vector(self, index: int) -> MsiVector:
        """The MsiVector of table entry ``index`` (e.g. to hand its eventfd to vhost)."""
        if not 0 <= index < self.nvectors:
            raise ValueError(f"{self.name}: no MSI-X vector {index}")
        with self._lock:
            return self._vector(index)

    def masked(self, vector: int) -> bool:
        with self._lock:
            return vector not in self._live

    def pending(self, vector: int) -> bool:
        with self._lock:
            return bool(self._pba >> vector & 1) or self._held(vector)

    def _vector(self, index: int) -> MsiVector:
        vec = self._vectors.get(index)
        if vec is None:
            vec = self._vectors[index] = self.routes.vector()
        return vec

    def _held(self, index: int) -> bool:
        """A trigger someone else (e.g. vhost) wrote to the vector's eventfd while it was masked."""
        vec = self._vectors.get(index)
        return vec is not None and index not in self._live and vec.pending()

    def _message(self, index: int) -> tuple[int, int, bool]:
        e = index * ENTRY_SIZE
        t = self._table
        address = int.from_bytes(t[e:e + 8], "little")
        data = int.from_bytes(t[e + ENTRY_DATA:e + ENTRY_DATA + 4], "little")
        return address, data, bool(t[e + ENTRY_CTRL] & CTRL_MASKED)

    def _sync(self, indexes: range | list[int]) -> None:
        """Make each vector's route and mask follow the table and Message Control (lock held)."""
        unmask: list[int] = []
        deliver: list[int] = []
        try:
            with self.routes.batch():  # enabling many vectors: one routing update
                for i in indexes:
                    self._sync_one(i, unmask, deliver)
        except (KvmError, MsiRoutesFull, OSError) as exc:  # KVM refused the table: vectors stay as they are
            self._warn(f"MSI-X routes not updated: {exc}")
        # After the batch, when the routes are in KVM: binding first delivers what the eventfd holds.
        for i in unmask:
            try:
                self._vectors[i].unmask()
            except KvmError as exc:
                self._warn(f"MSI-X vector {i} not unmasked: {exc}")
                self._live.pop(i, None)
        for i in deliver:
            self._vectors[i].trigger()

    def _sync_one(self, i: int, unmask: list[int], deliver: list[int]) -> None:
        """Bring vector ``i``'s route and mask in line; queue what must happen after the routing update."""
        address, data, entry_masked = self._message(i)
        live = self._enabled and not self._function_masked and not entry_masked
        try:
            if not live:
                if i in self._live:
                    del self._live[i]
                    self._vectors[i].mask()
                return
            if self._live.get(i) != (address, data):
                vec = self._vector(i)
                vec.update(address, data)
                if i not in self._live:
                    unmask.append(i)
                self._live[i] = (address, data)
        except (KvmError, MsiRoutesFull, OSError) as exc:
            self._warn(f"MSI-X vector {i} not (re)programmed: {exc}")
            self._live.pop(i, None)
            return
        if self._pba >> i & 1:
            self._pba &= ~(1 << i)
            deliver.append(i)

    def _warn(self, message: str) -> None:
        if not self._warned:  # a guest can repeat this at will: once per device
            self._warned = True
            log.warning("%s: %s", self.name, message)

    # ---- the table and PBA as a BAR's device ---------------------------------------------
    def read(self, offset: int, size: int) -> int:
        """Table and PBA at their offsets in one BAR (they must share it to map ``MsiX`` itself)."""
        return self.bar_read(None, offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.bar_write(None, offset, size, value)

    def bar_device(self, bar: int) -> "MsixBar":
        """The device for BAR ``bar`` when the table and PBA live in different BARs."""
        if bar not in (self.table_bar, self.pba_bar):
            raise ValueError(f"{self.name}: BAR{bar} holds no MSI-X structure")
        return MsixBar(self, bar)

    def bar_read(self, bar: int | None, offset: int, size: int) -> int:
        """A read of ``size`` bytes at ``offset`` in BAR ``bar`` (None: the BAR holding both)."""
        if size not in (1, 2, 4, 8) or offset < 0:
            return (1 << (8 * min(max(size, 1), 8))) - 1
        with self._lock:
            first = offset & ~3
            raw = b"".join(self._dword(bar, a).to_bytes(4, "little") for a in range(first, offset + size, 4))
            return int.from_bytes(raw[offset - first:offset - first + size], "little")

    def bar_write(self, bar: int | None, offset: int, size: int, value: int) -> None:
        """A write, split into the dwords it touches; only table dwords take it."""
        if size not in (1, 2, 4, 8) or offset < 0:
            return
        value &= (1 << (8 * size)) - 1
        with self._lock:
            touched: list[int] = []
            first = offset & ~3
            for a in range(first, offset + size, 4):
                if self._in_table(bar, a) is None:
                    continue
                lo, hi = max(offset, a), min(offset + size, a + 4)  # the bytes of this dword written
                mask = ((1 << (8 * (hi - lo))) - 1) << (8 * (lo - a))
                shifted = (value >> (8 * (lo - offset)) << (8 * (lo - a))) & mask
                entry = self._store(bar, a, (self._dword(bar, a) & ~mask) | shifted)
                if entry is not None and entry not in touched:
                    touched.append(entry)
            if touched:
                self._sync(touched)

    def _in_table(self, bar: int | None, offset: int) -> int | None:
        if bar is not None and bar != self.table_bar:
            return None
        rel = offset - self.table_offset
        return rel if 0 <= rel < self.table_size else None

    def _in_pba(self, bar: int | None, offset: int) -> int | None:
        if bar is not None and bar != self.pba_bar:
            return None
        rel = offset - self.pba_offset
        return rel if 0 <= rel < self.pba_size else None

    def _dword(self, bar: int | None, offset: int) -> int:
        rel = self._in_table(bar, offset)
        if rel is not None:
            return int.from_bytes(self._table[rel:rel + 4], "little")
        rel = self._in_pba(bar, offset)
        if rel is not None:
            first = rel * 8
            bits = self._pba >> first & 0xFFFFFFFF
            for i in range(first, min(first + 32, self.nvectors)):
                if not bits >> (i - first) & 1 and self._held(i):
                    bits |= 1 << (i - first)
            return bits
        return 0

    def _store(self, bar: int | None, offset: int, value: int) -> int | None:
        """Store a table dword (the PBA is read-only); returns the entry index it changed, if any."""
        rel = self._in_table(bar, offset)
        if rel is None:
            return None
        field = rel % ENTRY_SIZE
        if field == ENTRY_ADDR_LO:
            value &= ~3  # messages are DWORD-aligned
        elif field == ENTRY_CTRL:
            value &= CTRL_MASKED  # the other bits are reserved
        if int.from_bytes(self._table[rel:rel + 4], "little") == value:
            return None
        self._table[rel:rel + 4] = value.to_bytes(4, "little")
        return rel // ENTRY_SIZE

    # ---- device protocol ------------------------------------------------------------------
    def reset(self) -> None:
        """Power-on: every entry masked and zero, nothing pending, every vector given back."""
        with self._lock:
            self._init_table()
            self._enabled = self._function_masked = False
            self._live.clear()
            vectors, self._vectors = list(self._vectors.values()), {}
            try:
                with self.routes.batch():
                    for vec in vectors:
                        vec.release()
            except KvmError as exc:
                self._warn(f"MSI-X routes not cleared on reset: {exc}")

    def save(self) -> dict[str, Any]:
        with self._lock:
            pba = self._pba
            for i in self._vectors:
                if self._held(i):
                    pba |= 1 << i
            return {"table": bytes(self._table), "pba": pba.to_bytes(self.pba_size, "little")}

    def validate(self, state: dict[str, Any]) -> tuple[bytes, int]:
        check_keys(state, {"table", "pba"})
        table = bytes_field(state, "table", self.table_size, exact=True)
        pba = int.from_bytes(bytes_field(state, "pba", self.pba_size, exact=True), "little")
        for i in range(self.nvectors):
            e = i * ENTRY_SIZE
            if table[e + ENTRY_ADDR_LO] & 3:
                raise DeviceStateError(f"MSI-X vector {i}: message address is not DWORD-aligned")
            ctrl = int.from_bytes(table[e + ENTRY_CTRL:e + ENTRY_CTRL + 4], "little")
            if ctrl & ~CTRL_MASKED:
                raise DeviceStateError(f"MSI-X vector {i}: reserved vector control bits set ({ctrl:#x})")
        if pba >> self.nvectors:
            raise DeviceStateError(f"MSI-X PBA has bits beyond vector {self.nvectors - 1}")
        return table, pba

    def restore(self, state: dict[str, Any]) -> None:
        """Validate, then take the table and PBA and re-program every vector (Enable/Mask come from config)."""
        table, pba = self.validate(state)
        with self._lock:
            self._table[:] = table
            self._pba = pba
            for vec in self._vectors.values():
                vec.clear_pending()
            self._live.clear()  # every live vector's route is written afresh
            for vec in self._vectors.values():
                vec.mask()
        self.config_changed()


class MsixBar:
    """One BAR's share of an MsiX when the table and the PBA sit in different BARs."""

    def __init__(self, msix: MsiX, bar: int) -> None:
        self.msix = msix
        self.bar = bar

    def read(self, offset: int, size: int) -> int:
        return self.msix.bar_read(self.bar, offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.msix.bar_write(self.bar, offset, size, value)
