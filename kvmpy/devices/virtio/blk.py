"""virtio-blk (virtio 1.2, 5.2): a guest disk over a ``kvmpy.block.drive.Drive``, with QEMU 7.2's features and config.

Requests (``struct virtio_blk_req``): a 16-byte header in the driver's
readable buffers (le32 type, le32 reserved, le64 sector), the data, and a
one-byte status at the very end of the writable buffers. As in QEMU, the
header may be split over descriptors (ANY_LAYOUT is implied by VERSION_1);
a chain with fewer than 16 readable bytes or no writable byte breaks the
rules and sets the device NEEDS_RESET. Everything else fails only its own
request:

- IN / OUT: the data length is a multiple of 512, and ``sector*512 + length``
  lies within the disk (Python integers: no wrap-around); else IOERR,
  counted as an invalid operation. Writes, write-zeroes and discards on a
  read-only drive fail in the drive: IOERR, counted as failed (as in QEMU,
  where the block layer refuses them with EPERM).
- FLUSH: the drive's flush (fdatasync unless cache=unsafe).
- GET_ID: the serial, NUL-terminated, at most 20 bytes.
- DISCARD / WRITE_ZEROES: exactly one 16-byte segment (le64 sector, le32
  num_sectors, le32 flags); more is UNSUPP, unknown flags are UNSUPP, the
  UNMAP flag on a discard is UNSUPP, beyond max_*_sectors or the disk IOERR.
- anything else: UNSUPP.

Data moves between the image and guest RAM without per-sector Python work:
the queue hands out views of guest RAM (``SplitQueue.buffers``, neighbouring
buffers joined), reads land straight in them with one preadv and writes are
taken from them with one pwritev. A long request the queue checked as a
whole table (Linux's 1 MiB I/O: hundreds of pages) on a drive that can
(raw, no O_DIRECT) skips the views: one preadv/pwritev on the host addresses
(``SplitQueue.host_iov``, ``Drive.host_io``). A request larger than
``GATHER_LIMIT`` is done buffer by buffer, so a hostile chain (an indirect
table naming one page 65536 times) cannot make the VMM allocate gigabytes.

Threads: every request runs to completion on the device's I/O thread (the
transport's ``queue_notify``), one at a time. The qcow2 driver is not
thread-safe and the host has few cores, so a worker pool would add locking
and switching without overlap to win; ``quiesce()`` therefore only waits for
the request being served and holds further kicks until ``resume()``.

Features offered (QEMU 7.2 defaults): SEG_MAX (queue size - 2), GEOMETRY,
BLK_SIZE (512), TOPOLOGY, FLUSH and CONFIG_WCE (the config ``writeback`` byte is
1 for cache=writeback/none/unsafe and 0 for writethrough/directsync; the guest
may change it), DISCARD and WRITE_ZEROES (max 0x3fffff sectors, one segment,
may unmap), RO for read-only drives and MQ with num-queues > 1. SIZE_MAX is
not offered (QEMU does not either).
"""

from __future__ import annotations

import logging
import struct
import threading
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from kvmpy.block.drive import Drive
from kvmpy.block.drive_spec import drive_from_blockdev, drive_from_spec
from kvmpy.block.errors import BlockError
from kvmpy.devices.device import bool_field, check_keys
from kvmpy.devices.virtio.device import DeviceType, VirtioContext, VirtioDevice, bit
from kvmpy.devices.virtio.queue import VirtQueueError
from kvmpy.errors import ConfigError
from kvmpy.memory.guest_memory import GuestMemory

if TYPE_CHECKING:
    from kvmpy.config_devices import DeviceSpec
    from kvmpy.devices.virtio.pci import VirtioPci

log = logging.getLogger(__name__)

# Feature bits (virtio 1.2, 5.2.3)
F_SIZE_MAX = 1
F_SEG_MAX = 2
F_GEOMETRY = 4
F_RO = 5
F_BLK_SIZE = 6
F_FLUSH = 9
F_TOPOLOGY = 10
F_CONFIG_WCE = 11
F_MQ = 12
F_DISCARD = 13
F_WRITE_ZEROES = 14

# Request types and status values (5.2.6)
T_IN = 0
T_OUT = 1
T_FLUSH = 4
T_GET_ID = 8
T_GET_LIFETIME = 10
T_DISCARD = 11
T_WRITE_ZEROES = 13
T_SECURE_ERASE = 14
T_BARRIER = 0x80000000
S_OK = 0
S_IOERR = 1
S_UNSUPP = 2
WRITE_ZEROES_FLAG_UNMAP = 1

SECTOR = 512
ID_BYTES = 20
HEADER = struct.Struct("<IIQ")
SEGMENT = struct.Struct("<QII")
QUEUE_SIZE = 256
MAX_REQUEST_SECTORS = 0x3FFFFF  # QEMU's BDRV_REQUEST_MAX_SECTORS: INT_MAX >> 9
GATHER_LIMIT = 4 << 20
CONFIG_SIZE = 60

# Config space layout (5.2.4): offset -> (size, field)
CONFIG = struct.Struct("<QIIHBBIBBHIBBHIIIIIBxxx")
assert CONFIG.size == CONFIG_SIZE
WRITEBACK_OFFSET = 32


def chs_for(sectors: int) -> tuple[int, int, int]:
    """QEMU's geometry guess from the size alone: 16 heads, 63 sectors, cylinders clamped to [2, 16383]."""
    return max(2, min(16383, sectors // (16 * 63))), 16, 63


@dataclass(frozen=True)
class BlkOptions:
    """The -device virtio-blk-pci properties kvmpy honours."""

    serial: str = ""
    num_queues: int = 1
    queue_size: int = QUEUE_SIZE
    discard: bool = True
    write_zeroes: bool = True
    bootindex: int | None = None


class VirtioBlk(VirtioDevice):
    device_type = DeviceType.BLOCK
    pci_class = 0x0100
    name = "virtio-blk"

    def __init__(self, drive: Drive, memory: GuestMemory, options: BlkOptions = BlkOptions()) -> None:
        if not 1 <= options.num_queues <= 1024:
            raise BlockError("num-queues property must be between 1 and 1024")
        if options.queue_size < 4 or options.queue_size & (options.queue_size - 1) or options.queue_size > 1024:
            raise BlockError("queue-size property must be a power of 2 in [4, 1024]")
        if len(options.serial.encode()) > ID_BYTES:
            log.warning("serial %r is longer than %d bytes; the guest sees it truncated", options.serial, ID_BYTES)
        self.drive = drive
        self.memory = memory
        self.options = options
        self._ctx: VirtioContext | None = None
        self._busy = threading.Lock()
        self._quiesced = False
        self._pending: set[int] = set()
        drive.on_resize.append(self._resized)

    # ---- identity -------------------------------------------------------------------------
    @property
    def queue_max_sizes(self) -> tuple[int, ...]:
        return (self.options.queue_size,) * self.options.num_queues

    def device_features(self) -> int:
        f = bit(F_SEG_MAX) | bit(F_GEOMETRY) | bit(F_BLK_SIZE) | bit(F_TOPOLOGY) | bit(F_FLUSH) | bit(F_CONFIG_WCE)
        if self.drive.readonly:
            f |= bit(F_RO)
        if self.options.num_queues > 1:
            f |= bit(F_MQ)
        if self.options.discard:
            f |= bit(F_DISCARD)
        if self.options.write_zeroes:
            f |= bit(F_WRITE_ZEROES)
        return f

    def capacity(self) -> int:
        return self.drive.size() // SECTOR

    def config_bytes(self) -> bytes:
        sectors = self.capacity()
        cyls, heads, secs = chs_for(sectors)
        return CONFIG.pack(sectors, 0, self.options.queue_size - 2, cyls, heads, secs, SECTOR,
                           0, 0, 0, 0, int(self.drive.writeback), 0, self.options.num_queues,
                           MAX_REQUEST_SECTORS, 1, 1, MAX_REQUEST_SECTORS, 1, 1)

    def config_read(self, offset: int, size: int) -> int:
        if offset < 0 or size <= 0 or offset + size > CONFIG_SIZE:
            return 0
        return int.from_bytes(self.config_bytes()[offset:offset + size], "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        # Only the writeback byte is writable, and only once CONFIG_WCE was negotiated.
        ctx = self._ctx
        if offset <= WRITEBACK_OFFSET < offset + size and offset >= 0 and offset + size <= CONFIG_SIZE:
            if ctx is None or ctx.features & bit(F_CONFIG_WCE):
                self.drive.writeback = bool((value >> 8 * (WRITEBACK_OFFSET - offset)) & 0xFF)

    # ---- life cycle -----------------------------------------------------------------------
    def activate(self, ctx: VirtioContext) -> None:
        self._ctx = ctx

    def reset(self) -> None:
        with self._busy:
            self._ctx = None
            self._pending.clear()
            self.drive.writeback = self.drive.cache.writeback

    def quiesce(self) -> None:
        with self._busy:
            self._quiesced = True

    def resume(self) -> None:
        with self._busy:
            self._quiesced = False
            pending = sorted(self._pending)
            self._pending.clear()
        for i in pending:
            self.queue_notify(i)

    def save(self) -> dict[str, Any]:
        return {"writeback": self.drive.writeback}

    def validate(self, state: dict[str, Any]) -> Any:
        check_keys(state, {"writeback"})
        return bool_field(state, "writeback")

    def restore(self, state: dict[str, Any]) -> None:
        self.drive.writeback = self.validate(state)

    def close(self) -> None:
        """VM teardown: the device owns its drive, so the image (and its locks) is released."""
        try:
            self.drive.on_resize.remove(self._resized)
        except ValueError:
            pass
        self.drive.close()

    def _resized(self, new_size: int) -> None:
        ctx = self._ctx
        if ctx is not None:
            ctx.config_changed()

    # ---- requests -------------------------------------------------------------------------
    def queue_notify(self, index: int) -> None:
        with self._busy:
            ctx = self._ctx
            if ctx is None or not 0 <= index < len(ctx.queues):
                return
            if self._quiesced:
                self._pending.add(index)
                return
            q = ctx.queues[index]
            served = 0
            try:
                while True:
                    q.set_notification(False)
                    while (chain := q.pop()) is not None:
                        written = self._serve(q, chain)
                        if written is None:
                            return
                        q.push(chain, written)
                        served += 1
                    if served:  # the batch is done: tell the driver now, not after re-arming the kicks
                        served = 0
                        ctx.interrupt(index)
                    q.set_notification(True)
                    if not q.has_available():
                        break
            except VirtQueueError as exc:
                ctx.needs_reset(f"virtio-blk: {exc}")
                return
            finally:
                if served:
                    ctx.interrupt(index)

    def _serve(self, q: Any, chain: Any) -> int | None:
        """Serve one request; returns the byte count for the used ring, None after NEEDS_RESET."""
        ctx = self._ctx
        assert ctx is not None
        if chain.readable_len < HEADER.size:
            ctx.needs_reset("virtio-blk request outhdr too short")
            return None
        if chain.writable_len < 1:
            ctx.needs_reset("virtio-blk request inhdr too short")
            return None
        rtype, _ioprio, sector = HEADER.unpack(q.read(chain, 0, HEADER.size))
        status = self._dispatch(q, chain, rtype & ~T_BARRIER, sector)
        q.write(chain, bytes((status,)), chain.writable_len - 1)
        return chain.writable_len

    def _dispatch(self, q: Any, chain: Any, rtype: int, sector: int) -> int:
        if rtype in (T_IN, T_OUT):
            return self._rw(q, chain, rtype == T_OUT, sector)
        if rtype == T_FLUSH:
            try:
                self.drive.flush()
            except BlockError as exc:
                log.warning("%s: flush failed: %s", self.drive.id, exc)
                return S_IOERR
            return S_OK
        if rtype == T_GET_ID:
            ident = (self.options.serial.encode() + b"\0")[:ID_BYTES]
            q.write(chain, ident[:chain.writable_len - 1])
            return S_OK
        if rtype in (T_DISCARD, T_WRITE_ZEROES):
            return self._discard_write_zeroes(q, chain, rtype == T_WRITE_ZEROES)
        return S_UNSUPP

    def _range_ok(self, sector: int, nbytes: int) -> bool:
        if nbytes % SECTOR:
            return False
        total = self.capacity()
        count = nbytes // SECTOR
        return sector <= total and count <= MAX_REQUEST_SECTORS and count <= total - sector

    def _rw(self, q: Any, chain: Any, is_write: bool, sector: int) -> int:
        kind = "wr" if is_write else "rd"
        nbytes = chain.readable_len - HEADER.size if is_write else chain.writable_len - 1
        if not self._range_ok(sector, nbytes):
            self.drive.account_invalid(kind)
            return S_IOERR
        offset = sector * SECTOR
        try:
            if is_write:
                if not self._host_io(q, chain, offset, nbytes, True):
                    self._transfer(offset, q.buffers(chain, False, HEADER.size), nbytes, self.drive.write_from)
            else:
                try:
                    if not self._host_io(q, chain, offset, nbytes, False):
                        self._transfer(offset, q.buffers(chain, True, 0, nbytes), nbytes, self.drive.read_into)
                finally:
                    q.mark_written(chain, nbytes)
        except VirtQueueError as exc:
            log.warning("%s: request buffer left guest RAM: %s", self.drive.id, exc)
            return S_IOERR
        except BlockError as exc:
            log.warning("%s: %s failed at sector %d: %s", self.drive.id,
                        "write" if is_write else "read", sector, exc)
            return S_IOERR
        return S_OK

    def _host_io(self, q: Any, chain: Any, offset: int, nbytes: int, is_write: bool) -> bool:
        """The data of a request whose buffers the queue has as arrays (a long Linux-shaped table), moved
        with one preadv/pwritev on host addresses when the drive can (a raw image, no O_DIRECT); False:
        nothing done, use views."""
        if not nbytes:
            return False
        host = q.host_iov(chain, not is_write, HEADER.size if is_write else 0,
                          HEADER.size + nbytes if is_write else nbytes)
        if host is None:
            return False
        iov, pin = host
        with pin:  # the guest RAM stays mapped until the I/O is over
            return bool(self.drive.host_io(offset, iov, nbytes, is_write))

    @staticmethod
    def _transfer(offset: int, views: list[memoryview], total: int, op: Any) -> None:
        """One drive call for the whole request (``total`` bytes, the views' sum) when it is small, else one
        per buffer."""
        if total <= GATHER_LIMIT or len(views) == 1:
            if total:
                op(offset, views, total)
            return
        for v in views:
            op(offset, [v], len(v))
            offset += len(v)

    def _discard_write_zeroes(self, q: Any, chain: Any, is_wz: bool) -> int:
        feature = F_WRITE_ZEROES if is_wz else F_DISCARD
        kind = "wr" if is_wz else "unmap"
        if not self.device_features() & bit(feature):
            return S_UNSUPP
        if chain.readable_len - HEADER.size != SEGMENT.size:  # one segment only, as QEMU
            return S_UNSUPP
        seg_sector, count, flags = SEGMENT.unpack(q.read(chain, HEADER.size, SEGMENT.size))
        if is_wz and flags & ~WRITE_ZEROES_FLAG_UNMAP or not is_wz and flags:
            return S_UNSUPP
        if count > MAX_REQUEST_SECTORS or not self._range_ok(seg_sector, count * SECTOR):
            self.drive.account_invalid(kind)
            return S_IOERR
        try:
            if is_wz:
                self.drive.write_zeroes(seg_sector * SECTOR, count * SECTOR,
                                        unmap=bool(flags & WRITE_ZEROES_FLAG_UNMAP))
            else:
                self.drive.discard_range(seg_sector * SECTOR, count * SECTOR)
        except BlockError as exc:
            log.warning("%s: %s failed: %s", self.drive.id, "write-zeroes" if is_wz else "discard", exc)
            return S_IOERR
        return S_OK


# ---- -device virtio-blk-pci -------------------------------------------------------------------
# The device's own properties (the transport adds addr, vectors, disable-legacy, disable-modern).
BLK_PROPS = frozenset({"drive", "serial", "bootindex", "num-queues", "queue-size", "discard", "write-zeroes",
                       "write-cache", "config-wce", "logical_block_size", "physical_block_size", "min_io_size",
                       "opt_io_size", "share-rw", "seg-max-adjust", "scsi"})


class BlkBoard(Protocol):
    """What the factory needs of the board: its config (drives, blockdevs), guest RAM and KVM VM."""

    config: Any
    memory: Any
    vm: Any


def blk_options(spec: "DeviceSpec") -> BlkOptions:
    """The virtio-blk properties of ``spec``; ConfigError for values kvmpy does not support."""
    where = spec.source or f"-device {spec.driver}"
    for key in ("logical_block_size", "physical_block_size"):
        if spec.get_size(key, 512) != 512:
            raise ConfigError(f"{where}: kvmpy's virtio-blk has 512-byte blocks only ({key}=512)")
    for key in ("min_io_size", "opt_io_size"):
        if spec.get_size(key, 0) != 0:
            raise ConfigError(f"{where}: {key} is not supported by kvmpy's virtio-blk")
    if spec.get_bool("share-rw", False):
        raise ConfigError(f"{where}: share-rw=on is not supported by kvmpy (the image is locked for one writer)")
    if spec.get_bool("scsi", False):
        raise ConfigError(f"{where}: Please set scsi=off for virtio-blk devices in order to use virtio 1.0")
    if not spec.get_bool("config-wce", True) or not spec.get_bool("seg-max-adjust", True):
        raise ConfigError(f"{where}: config-wce=off and seg-max-adjust=off are not supported by kvmpy")
    queues = spec.get_number("num-queues", 1, lo=1, hi=1024)
    size = spec.get_number("queue-size", QUEUE_SIZE, lo=4, hi=1024)
    if size & (size - 1):
        raise ConfigError(f"{where}: invalid queue-size property ({size}), must be a power of 2")
    boot = spec.get("bootindex")
    return BlkOptions(serial=spec.get("serial", ""), num_queues=queues, queue_size=size,
                      discard=spec.get_bool("discard", True), write_zeroes=spec.get_bool("write-zeroes", True),
                      bootindex=None if boot is None else spec.get_number("bootindex", lo=0, hi=(1 << 31) - 1))


def open_device_drive(config: Any, spec: "DeviceSpec") -> Drive:
    """The drive ``spec``'s ``drive=`` names: a -drive id or a -blockdev node name; ConfigError if it fails."""
    where = spec.source or f"-device {spec.driver}"
    name = spec.get("drive")
    if not name:
        raise ConfigError(f"{where}: drive property not set")
    wce = spec.get("write-cache", "auto")
    writeback = None if wce == "auto" else spec.get_bool("write-cache")
    drives = {d.id: d for d in getattr(config, "drives", ())}
    blockdevs = {b.node_name: b for b in getattr(config, "blockdevs", ())}
    inactive = getattr(config, "incoming", None) is not None  # -incoming: the source owns the images
    if name in drives:
        d = drives[name]
        try:
            drive = drive_from_spec(d, writeback, inactive=inactive)
        except BlockError as exc:
            raise ConfigError(f"{d.source or where}: {exc}") from None
        serial = d.get("serial")
        if serial is not None and spec.get("serial") is None:
            drive.serial = serial
        return drive
    if name in blockdevs:
        try:
            return drive_from_blockdev(blockdevs, name, writeback, inactive=inactive)
        except BlockError as exc:
            raise ConfigError(f"{blockdevs[name].source or where}: {exc}") from None
    raise ConfigError(f"{where}: Property 'virtio-blk-device.drive' can't find value '{name}'")


def virtio_blk_pci(board: BlkBoard, spec: "DeviceSpec") -> "VirtioPci":
    """``-device virtio-blk-pci,drive=ID[,serial=,bootindex=,num-queues=,queue-size=,discard=,write-zeroes=,
    write-cache=]`` (also what ``-drive if=virtio`` implies). bootindex is stored (kvmpy boots with -kernel)."""
    from kvmpy.devices.virtio.pci import virtio_pci

    options = blk_options(spec)
    drive = open_device_drive(board.config, spec)
    if not options.serial and drive.serial:
        options = replace(options, serial=drive.serial)
    try:
        return virtio_pci(board, spec, VirtioBlk(drive, board.memory, options), device_props=BLK_PROPS)
    except BaseException:
        drive.close()
        raise
