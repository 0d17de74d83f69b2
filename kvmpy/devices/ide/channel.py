"""One IDE channel: its task file, the two units on it, the ATA command protocol (PIO and DMA) and its IRQ.

The guest reaches a channel through its command block (8 ports), its control port and
its bus-master registers. Commands run synchronously in the vCPU's port write, so BSY is
never seen. An ATA disk answers IDENTIFY DEVICE, READ/WRITE SECTORS and MULTIPLE (LBA28,
CHS and LBA48 EXT), READ/WRITE DMA (+EXT) through the bus master's PRD table, READ
VERIFY, FLUSH CACHE, SET FEATURES, SET MULTIPLE MODE, INITIALIZE DEVICE PARAMETERS and the
power-management no-ops; an ATAPI unit answers PACKET through ``kvmpy.devices.ide.atapi``.
Anything else, an out-of-range address, an I/O error or a PRD table outside guest RAM
ends the command with ERR/ABRT (and the bus master's error bit), never an exception.
Device control's SRST resets both units to their signatures; nIEN masks the IRQ.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from kvmpy.block.errors import BlockError
from kvmpy.devices.device import DeviceStateError, bytes_field, check_keys, int_field
from kvmpy.devices.ide import regs as r
from kvmpy.devices.ide.atapi import Atapi, AtapiResult
from kvmpy.devices.ide.bmdma import CMD_START, ST_ACTIVE, ST_ERROR, ST_INTR, BusMaster, PrdError
from kvmpy.devices.ide.identify import Geometry, IdentifyInfo, default_geometry, identify_disk, identify_packet
from kvmpy.devices.irq import IrqLine

log = logging.getLogger(__name__)

MAX_PIO_BUFFER = r.MAX_MULT_SECTORS * r.SECTOR_SIZE
ATAPI_MAX_PIO_CHUNK = 0xFFFE
READ_AHEAD_SECTORS = 256  # a PIO read command's sectors read from the drive at once (128 KiB; see _read_block)
LBA48_COMMANDS = frozenset({r.CMD_READ_EXT, r.CMD_WRITE_EXT, r.CMD_READ_DMA_EXT, r.CMD_WRITE_DMA_EXT,
                            r.CMD_READ_MULTIPLE_EXT, r.CMD_WRITE_MULTIPLE_EXT, r.CMD_VERIFY_EXT,
                            r.CMD_READ_NATIVE_MAX_EXT, r.CMD_FLUSH_EXT})


class ChannelMemory(Protocol):
    """Guest memory as DMA uses it (kvmpy.memory.guest_memory.GuestMemory)."""

    def read(self, gpa: int, length: int) -> bytes: ...

    def check(self, gpa: int, length: int, write: bool = False) -> None: ...

    def buffers(self, gpa: int, length: int, write: bool = False) -> list[memoryview]: ...

    def mark_dirty(self, gpa: int, length: int) -> None: ...


class DiskImage(Protocol):
    """A block drive as a unit uses it (kvmpy.block.drive.Drive)."""

    id: str
    serial: str

    def size(self) -> int: ...

    def read_into(self, offset: int, views: list[memoryview]) -> None: ...

    def write_from(self, offset: int, views: list[memoryview]) -> None: ...

    def flush(self) -> None: ...


@dataclass
class Unit:
    """A master or slave: absent, an ATA disk or an ATAPI CD-ROM (whose medium may change)."""

    kind: str = ""  # "", "hd" or "cd"
    drive: Any = None
    id: str = ""  # the -drive id the monitor names it by (ide1-cd0)
    qdev_id: str = ""  # the -device id= of an ide-hd/ide-cd unit (QMP eject/blockdev-change-medium id=)
    qdev: str = ""  # query-block's qdev for a -device unit ("": the monitor numbers legacy units itself)
    serial: str = ""
    model: str = ""  # IDENTIFY's model string ("": QEMU HARDDISK / QEMU DVD-ROM)
    geometry: Geometry = field(default_factory=lambda: Geometry(1, 16, 63))
    status: int = 0
    error: int = 0
    multiple: int = r.MAX_MULT_SECTORS
    write_cache: bool = True
    udma_mode: int = -1
    mdma_mode: int = -1
    atapi: Atapi | None = None

    @property
    def present(self) -> bool:
        return bool(self.kind)

    def sectors(self) -> int:
        return self.drive.size() // r.SECTOR_SIZE if self.drive is not None else 0


@dataclass
class Transfer:
    """The PIO transfer in progress: what the data register moves and what happens after each block."""

    kind: str = ""  # "", "read", "write", "info" (one block out), "packet" (12 bytes in), "atapi" (data out)
    lba: int = 0
    remaining: int = 0  # sectors (ATA) or bytes (ATAPI) still to move after the current block
    block: int = 1  # sectors per DRQ block
    byte_limit: int = 0  # ATAPI: the byte count limit of each DRQ block
    lba48: bool = False  # ATA: the command was an EXT one (how the final address is reported)
    # ATA read: sectors read ahead from the drive for the blocks still to come (not migrated: a restored
    # transfer reads its next block afresh), and the LBA of their first sector.
    ahead: bytearray = field(default_factory=bytearray)
    ahead_lba: int = 0


class IdeChannel:
    """``read``/``write`` take command-block offsets 0-7; ``ctl_read``/``ctl_write`` the control port."""

    def __init__(self, name: str, irq: IrqLine, memory: ChannelMemory,
                 bus_master_enabled: Callable[[], bool] = lambda: True) -> None:
        self.name = name
        self.irq = irq
        self.memory = memory
        self.bus_master_enabled = bus_master_enabled
        self.units = [Unit(), Unit()]
        self.bm = BusMaster()
        self.lock = threading.RLock()
        self.buf = bytearray()
        self.pos = 0
        self.xfer = Transfer()
        self.dma: dict[str, int] | None = None  # the DMA command waiting for the bus master: lba, count, write
        self.irq_level = False
        self._line: bool | None = None  # the level last put on the IRQ line (None: drive it next time)
        self.pending_data = AtapiResult()  # the answer an ATAPI packet is moving
        self.reset_registers()

    # ---- attachment ------------------------------------------------------------------
    def attach_disk(self, unit: int, drive: DiskImage, serial: str = "", model: str = "") -> None:
        """``serial``/``model``: the device's serial=/model= (empty: the drive's serial=, QEMU's defaults)."""
        u = self.units[unit]
        u.kind, u.drive, u.serial, u.id = "hd", drive, serial or drive.serial or f"QM{unit + 1:05d}", drive.id
        u.model = model
        u.geometry = default_geometry(u.sectors())
        self.reset_registers()

    def attach_cd(self, unit: int, drive: DiskImage | None, drive_id: str = "", serial: str = "",
                  model: str = "") -> None:
        u = self.units[unit]
        u.kind, u.drive = "cd", drive
        u.serial = serial or (drive.serial if drive is not None else "") or f"QM{unit + 1:05d}"
        u.model = model
        u.id = drive_id or (drive.id if drive is not None else "")
        u.atapi = Atapi(drive)
        self.reset_registers()

    def eject(self, unit: int, force: bool) -> Any:
        """QMP eject of a CD unit: the removed drive (to close), or ValueError when the guest locked the tray
        (the guest is then asked to eject, as QEMU does; ``force`` overrides the lock)."""
        with self.lock:
            cd = self.units[unit].atapi
            assert cd is not None
            if cd.locked and not force and not cd.eject_request():
                raise ValueError("locked")
            old = self.units[unit].drive
            self.units[unit].drive = None
            cd.medium = None
            cd.tray_open = True
            return old

    def change_medium(self, unit: int, drive: Any) -> Any:
        """Put ``drive`` in a CD unit (closing the tray); returns the drive it replaces."""
        with self.lock:
            cd = self.units[unit].atapi
            assert cd is not None
            old = self.units[unit].drive
            self.units[unit].drive = drive
            cd.change_medium(drive)
            return old

    # ---- registers -------------------------------------------------------------------
    def reset_registers(self) -> None:
        self.feature = self.nsector = self.lba_low = self.lba_mid = self.lba_high = 0
        self.hob_feature = self.hob_nsector = self.hob_low = self.hob_mid = self.hob_high = 0
        self.device = 0xA0
        self.ctl = 0
        self.buf = bytearray()
        self.pos = 0
        self.xfer = Transfer()
        self.dma = None
        for u in self.units:
            u.error = 0x01
            u.status = r.READY if u.kind == "hd" else 0
            u.multiple = r.MAX_MULT_SECTORS
        self._signature()
        self._set_irq(False)

    def _signature(self) -> None:
        """The reset signature of the selected unit: an ATAPI device shows 0x14/0xEB in LBA mid/high."""
        self.nsector = self.lba_low = 1
        if self.cur.kind == "cd":
            self.lba_mid, self.lba_high = r.ATAPI_SIGNATURE
        else:
            self.lba_mid = self.lba_high = 0

    @property
    def cur(self) -> Unit:
        return self.units[1 if self.device & r.DEV_SLAVE else 0]

    def _set_irq(self, level: bool) -> None:
        self.irq_level = level
        self._drive_line()

    def _drive_line(self) -> None:
        """Put INTRQ (masked by nIEN) on the IRQ line, but not a low on a line already low: SeaBIOS polls with
        nIEN set, and every status read, control write and block was a KVM_IRQ_LINE ioctl that changed nothing.
        A high is always passed on (KVM's IOAPIC delivers an edge-triggered pin again for it, as under QEMU)."""
        level = self.irq_level and not self.ctl & r.CTL_NIEN
        if level or self._line is not False:
            self._line = level
            self.irq.set_level(level)

    def raise_irq(self) -> None:
        self.bm.status |= ST_INTR
        self._set_irq(True)

    def _no_drives(self) -> bool:
        return not self.units[0].present and not self.units[1].present

    def read(self, offset: int, size: int) -> int:
        with self.lock:
            if offset == r.REG_DATA:
                return self._data_read(size)
            return self._reg_read(offset)

    def read_string(self, offset: int, size: int, count: int) -> bytes:
        """``count`` reads of ``size`` bytes (a guest's ``rep insw``): the data register's PIO buffer in slices,
        byte for byte what ``read`` would give access by access (a sector is 256 of them)."""
        if offset != r.REG_DATA:
            return b"".join(self.read(offset, size).to_bytes(size, "little") for _ in range(count))
        out = bytearray()
        want = size * count
        with self.lock:
            while len(out) < want:
                if not self.cur.status & r.ST_DRQ or self.xfer.kind in ("", "write", "packet"):
                    break  # no data-in phase: the rest reads 0, as in _data_read
                left = len(self.buf) - self.pos
                # whole accesses; the last may run past the end (zeros), and one is made even when none is left
                n = min(want - len(out), max(-(-left // size), 1) * size)
                out += self.buf[self.pos:self.pos + n].ljust(n, b"\0")
                self.pos += n
                if self.pos >= len(self.buf):
                    self._moved_safely()
        return bytes(out.ljust(want, b"\0"))

    def _reg_read(self, offset: int) -> int:
        hob = bool(self.ctl & r.CTL_HOB)
        if self._no_drives():
            return 0xFF if offset == r.REG_DEVICE else 0
        u = self.cur
        if offset == r.REG_STATUS:
            if u is not self.units[0] and not u.present:
                return 0
            self._set_irq(False)
            return u.status
        if offset == r.REG_DEVICE:
            return self.device
        if offset == r.REG_ERROR:
            return self.hob_feature if hob else u.error
        table = {r.REG_NSECTOR: (self.nsector, self.hob_nsector), r.REG_LBA_LOW: (self.lba_low, self.hob_low),
                 r.REG_LBA_MID: (self.lba_mid, self.hob_mid), r.REG_LBA_HIGH: (self.lba_high, self.hob_high)}
        return table[offset][hob] & 0xFF

    def ctl_read(self) -> int:
        with self.lock:
            u = self.cur
            if self._no_drives() or (u is not self.units[0] and not u.present):
                return 0
            return u.status

    def write(self, offset: int, size: int, value: int) -> None:
        with self.lock:
            if offset == r.REG_DATA:
                self._data_write(size, value)
                return
            value &= 0xFF
            self.ctl &= ~r.CTL_HOB  # any task-file write clears HOB
            if offset == r.REG_FEATURE:
                self.hob_feature, self.feature = self.feature, value
            elif offset == r.REG_NSECTOR:
                self.hob_nsector, self.nsector = self.nsector, value
            elif offset == r.REG_LBA_LOW:
                self.hob_low, self.lba_low = self.lba_low, value
            elif offset == r.REG_LBA_MID:
                self.hob_mid, self.lba_mid = self.lba_mid, value
            elif offset == r.REG_LBA_HIGH:
                self.hob_high, self.lba_high = self.lba_high, value
            elif offset == r.REG_DEVICE:
                self.device = value | 0xA0
            else:
                self._command(value)

    def ctl_write(self, value: int) -> None:
        with self.lock:
            if value & r.CTL_SRST and not self.ctl & r.CTL_SRST:
                for u in self.units:
                    if u.present:
                        u.status = r.ST_BSY | r.ST_DSC
                        u.error = 0x01
            elif self.ctl & r.CTL_SRST and not value & r.CTL_SRST:
                self.ctl = value
                keep = self.device & r.DEV_SLAVE
                self.reset_registers()
                self.device = 0xA0 | keep
                self._signature()
                self.ctl = value
                return
            self.ctl = value & 0xFF
            self._drive_line()

    # ---- command completion -------------------------------------------------------------
    def _done(self, status: int = r.READY, irq: bool = True) -> None:
        self.cur.status = status
        self.xfer = Transfer()
        self.buf, self.pos = bytearray(), 0
        if irq:
            self.raise_irq()

    def abort(self, error: int = r.ERR_ABRT) -> None:
        self.cur.error = error
        self.dma = None
        self._done(r.READY | r.ST_ERR)

    def _lba48(self) -> tuple[int, int]:
        lba = (self.hob_high << 40) | (self.hob_mid << 32) | (self.hob_low << 24) | \
            (self.lba_high << 16) | (self.lba_mid << 8) | self.lba_low
        count = (self.hob_nsector << 8) | self.nsector
        return lba, count or 0x10000

    def _lba28(self) -> tuple[int, int]:
        count = self.nsector or 0x100
        if self.device & r.DEV_LBA:
            return ((self.device & 0x0F) << 24) | (self.lba_high << 16) | (self.lba_mid << 8) | self.lba_low, count
        g = self.cur.geometry
        cyl, head, sect = (self.lba_high << 8) | self.lba_mid, self.device & 0x0F, self.lba_low
        if sect == 0:
            return -1, count
        return (cyl * g.heads + head) * g.sectors + sect - 1, count

    def _set_position(self, lba: int, lba48: bool) -> None:
        """Leave the address of the last sector moved in the task file, as the drive reports it."""
        if lba48:
            self.lba_low, self.lba_mid, self.lba_high = lba & 0xFF, (lba >> 8) & 0xFF, (lba >> 16) & 0xFF
            self.hob_low, self.hob_mid, self.hob_high = (lba >> 24) & 0xFF, (lba >> 32) & 0xFF, (lba >> 40) & 0xFF
        elif self.device & r.DEV_LBA:
            self.lba_low, self.lba_mid, self.lba_high = lba & 0xFF, (lba >> 8) & 0xFF, (lba >> 16) & 0xFF
            self.device = (self.device & 0xF0) | ((lba >> 24) & 0x0F)
        else:
            g = self.cur.geometry
            cyl, rest = divmod(lba, g.heads * g.sectors)
            head, sect = divmod(rest, g.sectors)
            self.lba_mid, self.lba_high = cyl & 0xFF, (cyl >> 8) & 0xFF
            self.device = (self.device & 0xF0) | (head & 0x0F)
            self.lba_low = sect + 1

    # ---- commands ------------------------------------------------------------------------
    def _command(self, cmd: int) -> None:
        u = self.cur
        if not u.present:
            return  # a command to an absent slave is ignored
        if u.status & r.ST_BSY:
            return
        self.irq_level = False
        self._drive_line()
        if self.xfer.kind or self.dma is not None:
            self.xfer, self.dma = Transfer(), None  # a new command ends whatever was in progress
        u.error = 0
        try:
            if u.kind == "cd":
                self._cd_command(cmd)
            else:
                self._disk_command(cmd)
        except BlockError as exc:
            log.warning("%s: command %#04x: %s", self.name, cmd, exc)
            self.abort()

    def _disk_command(self, cmd: int) -> None:
        u = self.cur
        lba48 = cmd in LBA48_COMMANDS
        if cmd == r.CMD_IDENTIFY:
            self._info(identify_disk(self._identify_info()))
        elif cmd in (r.CMD_READ, r.CMD_READ_NORETRY, r.CMD_READ_EXT, r.CMD_READ_MULTIPLE, r.CMD_READ_MULTIPLE_EXT,
                     r.CMD_WRITE, r.CMD_WRITE_NORETRY, r.CMD_WRITE_EXT, r.CMD_WRITE_MULTIPLE,
                     r.CMD_WRITE_MULTIPLE_EXT):
            multiple = cmd in (r.CMD_READ_MULTIPLE, r.CMD_READ_MULTIPLE_EXT, r.CMD_WRITE_MULTIPLE,
                               r.CMD_WRITE_MULTIPLE_EXT)
            if multiple and not u.multiple:
                self.abort()
                return
            lba, count = self._lba48() if lba48 else self._lba28()
            if not self._range_ok(lba, count):
                return
            write = cmd in (r.CMD_WRITE, r.CMD_WRITE_NORETRY, r.CMD_WRITE_EXT, r.CMD_WRITE_MULTIPLE,
                            r.CMD_WRITE_MULTIPLE_EXT)
            self.xfer = Transfer("write" if write else "read", lba, count, u.multiple if multiple else 1)
            self.xfer.lba48 = lba48
            self._pio_next_block(first=True)
        elif cmd in (r.CMD_READ_DMA, r.CMD_READ_DMA_NORETRY, r.CMD_READ_DMA_EXT,
                     r.CMD_WRITE_DMA, r.CMD_WRITE_DMA_NORETRY, r.CMD_WRITE_DMA_EXT):
            lba, count = self._lba48() if lba48 else self._lba28()
            if not self._range_ok(lba, count):
                return
            write = cmd in (r.CMD_WRITE_DMA, r.CMD_WRITE_DMA_NORETRY, r.CMD_WRITE_DMA_EXT)
            self.dma = {"lba": lba, "count": count, "write": int(write), "lba48": int(lba48), "atapi": 0}
            u.status = r.READY | r.ST_DRQ
            if self.bm.started:
                self.run_dma()
        elif cmd in (r.CMD_VERIFY, r.CMD_VERIFY_NORETRY, r.CMD_VERIFY_EXT):
            lba, count = self._lba48() if lba48 else self._lba28()
            if self._range_ok(lba, count):
                self._set_position(lba + count - 1, lba48)
                self._done()
        elif cmd in (r.CMD_FLUSH, r.CMD_FLUSH_EXT):
            u.drive.flush()
            self._done()
        elif cmd == r.CMD_SET_MULTIPLE:
            n = self.nsector
            if n > r.MAX_MULT_SECTORS or n & (n - 1):
                self.abort()
            else:
                u.multiple = n
                self._done()
        elif cmd == r.CMD_SPECIFY:
            heads, sectors = (self.device & 0x0F) + 1, self.nsector
            if sectors:
                total = u.sectors()
                u.geometry = Geometry(max(1, min(65535, total // (heads * sectors))), heads, sectors)
            self._done()
        elif cmd in (r.CMD_READ_NATIVE_MAX, r.CMD_READ_NATIVE_MAX_EXT):
            last = max(u.sectors() - 1, 0)
            if not lba48:
                last = min(last, (1 << 28) - 1)
                self.device |= r.DEV_LBA
            self._set_position(last, lba48)
            self._done()
        else:
            self._common_command(cmd)

    def _common_command(self, cmd: int) -> None:
        """Commands both kinds of unit take."""
        u = self.cur
        if cmd == r.CMD_SET_FEATURES:
            sub = self.feature
            if sub not in r.SF_ACCEPTED:
                self.abort()
                return
            if sub in (r.SF_WCACHE_ON, r.SF_WCACHE_OFF) and u.kind == "hd":
                u.write_cache = sub == r.SF_WCACHE_ON
                if hasattr(u.drive, "writeback"):
                    u.drive.writeback = u.write_cache
            elif sub == r.SF_XFER_MODE:
                mode, val = self.nsector >> 3, self.nsector & 7
                if mode == 4 and val <= 2:
                    u.udma_mode, u.mdma_mode = -1, val
                elif mode == 8 and val <= 5:
                    u.udma_mode, u.mdma_mode = val, -1
                elif mode not in (0, 1):
                    self.abort()
                    return
            self._done()
        elif cmd in (r.CMD_RECALIBRATE, r.CMD_SEEK, r.CMD_STANDBY_IMMEDIATE, r.CMD_IDLE_IMMEDIATE, r.CMD_STANDBY,
                     r.CMD_IDLE, r.CMD_SLEEP, r.CMD_NOP) and u.kind == "hd":
            if cmd == r.CMD_NOP:
                self.abort()
            else:
                self._done()
        elif cmd == r.CMD_CHECK_POWER:
            self.nsector = 0xFF
            self._done()
        elif cmd == r.CMD_DIAGNOSE:
            for unit in self.units:
                unit.error = 0x01
            self._signature()
            self._done(r.READY if u.kind == "hd" else 0)
        else:
            self.abort()

    def _identify_info(self) -> IdentifyInfo:
        u = self.cur
        return IdentifyInfo(u.serial, u.sectors(), u.geometry, u.multiple, u.write_cache, u.udma_mode, u.mdma_mode,
                            u.model)

    def _range_ok(self, lba: int, count: int) -> bool:
        if lba < 0 or lba + count > self.cur.sectors():
            self.abort(r.ERR_ABRT | r.ERR_IDNF)
            return False
        return True

    def _info(self, data: bytes) -> None:
        """A one-block data-in command (IDENTIFY): the data ready, DRQ, an interrupt."""
        self.buf, self.pos = bytearray(data), 0
        self.xfer = Transfer("info")
        self.cur.status = r.READY | r.ST_DRQ
        self.raise_irq()

    # ---- PIO -------------------------------------------------------------------------------
    def _pio_next_block(self, first: bool = False) -> None:
        x, u = self.xfer, self.cur
        n = min(x.block, x.remaining)
        if x.kind == "read":
            self.buf = self._read_block(x, u, n)
            self.pos = 0
            u.status = r.READY | r.ST_DRQ
            self.raise_irq()
        else:
            self.buf, self.pos = bytearray(n * r.SECTOR_SIZE), 0
            u.status = r.READY | r.ST_DRQ
            if not first:
                self.raise_irq()

    def _read_block(self, x: Transfer, u: Unit, n: int) -> bytearray:
        """The ``n`` sectors at ``x.lba`` of a PIO read. Firmware (SeaBIOS, and GRUB through it) reads a disk
        by READ SECTORS, one DRQ block of one sector at a time: the command's sectors are read from the drive
        up to READ_AHEAD_SECTORS at once and handed out block by block, so a 72-sector int 13h costs one drive
        read, not 72. Should that read fail, the block alone is read as before, so an error is reported at
        the block it belongs to (BlockError propagates from there)."""
        size = n * r.SECTOR_SIZE
        at = (x.lba - x.ahead_lba) * r.SECTOR_SIZE
        if x.ahead and 0 <= at and at + size <= len(x.ahead):
            return x.ahead[at:at + size]
        total = max(n, min(x.remaining, READ_AHEAD_SECTORS)) * r.SECTOR_SIZE
        x.ahead = bytearray()
        if total > size:
            ahead = bytearray(total)
            try:
                u.drive.read_into(x.lba * r.SECTOR_SIZE, [memoryview(ahead)])
            except BlockError:
                pass
            else:
                x.ahead, x.ahead_lba = ahead, x.lba
                return ahead[:size]
        buf = bytearray(size)
        u.drive.read_into(x.lba * r.SECTOR_SIZE, [memoryview(buf)])
        return buf

    def _block_moved(self) -> None:
        x = self.xfer
        if x.kind == "info":
            self._done(irq=False)
            return
        if x.kind == "packet":
            packet, self.buf, self.pos = bytes(self.buf), bytearray(), 0
            self._run_packet(packet)
            return
        if x.kind == "atapi":
            self._atapi_next_chunk()
            return
        n = len(self.buf) // r.SECTOR_SIZE
        if x.kind == "write":
            self.cur.drive.write_from(x.lba * r.SECTOR_SIZE, [memoryview(self.buf)])
        x.lba += n
        x.remaining -= n
        self._set_position(x.lba - 1, x.lba48)
        if x.remaining == 0:
            self._done(irq=x.kind == "write")
            return
        self._pio_next_block()

    def _data_read(self, size: int) -> int:
        if not self.cur.status & r.ST_DRQ or self.xfer.kind in ("", "write", "packet"):
            return 0  # as QEMU: no data-in phase, the data register reads 0
        chunk = self.buf[self.pos:self.pos + size]
        self.pos += size
        value = int.from_bytes(chunk.ljust(size, b"\0"), "little")
        if self.pos >= len(self.buf):
            self._moved_safely()
        return value

    def _data_write(self, size: int, value: int) -> None:
        if not self.cur.status & r.ST_DRQ or self.xfer.kind not in ("write", "packet"):
            return
        n = min(size, len(self.buf) - self.pos)
        self.buf[self.pos:self.pos + n] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")[:n]
        self.pos += n
        if self.pos >= len(self.buf):
            self._moved_safely()

    def _moved_safely(self) -> None:
        try:
            self._block_moved()
        except BlockError as exc:
            log.warning("%s: PIO transfer: %s", self.name, exc)
            self.abort()

    # ---- DMA -------------------------------------------------------------------------------
    def bm_command(self, value: int) -> None:
        """A write to the bus master's command register (offset 0)."""
        with self.lock:
            if not value & CMD_START:
                self.bm.cmd = value & 0x09
                self.bm.status &= ~ST_ACTIVE
                return
            if self.bm.started:
                return  # the direction cannot change while the engine runs
            self.bm.cmd = value & 0x09
            self.bm.status |= ST_ACTIVE
            if self.dma is not None:
                self.run_dma()

    def run_dma(self) -> None:
        """Move the pending DMA command's data through the PRD table, then complete it."""
        d = self.dma
        assert d is not None
        self.dma = None
        u = self.cur
        sector = r.CD_SECTOR_SIZE if d["atapi"] else r.SECTOR_SIZE
        nbytes = d["count"] * sector if not d["atapi"] else d["bytes"]
        try:
            if not self.bus_master_enabled():
                raise PrdError("bus mastering is disabled in the PCI command register")
            seg = self.bm.segments(self.memory, nbytes)
            to_memory = not d["write"]
            if d["atapi"]:
                data = self._atapi_dma_data(d, seg.total)
                done = 0
                for gpa, length in seg.parts:
                    for view in self.memory.buffers(gpa, length, write=True):
                        view[:] = data[done:done + len(view)]
                        done += len(view)
                    self.memory.mark_dirty(gpa, length)
            else:
                whole = seg.total - seg.total % sector
                views: list[memoryview] = []
                left = whole
                for gpa, length in seg.parts:
                    take = min(length, left)
                    if take:
                        views.extend(self.memory.buffers(gpa, take, write=to_memory))
                    left -= take
                if whole:
                    if to_memory:
                        u.drive.read_into(d["lba"] * sector, views)
                        left = whole
                        for gpa, length in seg.parts:
                            take = min(length, left)
                            if take:
                                self.memory.mark_dirty(gpa, take)
                            left -= take
                    else:
                        u.drive.write_from(d["lba"] * sector, views)
        except (PrdError, ValueError, BlockError) as exc:
            log.warning("%s: DMA failed: %s", self.name, exc)
            self.bm.status = (self.bm.status & ~ST_ACTIVE) | ST_ERROR
            if d["atapi"]:
                assert u.atapi is not None
                u.atapi.set_error_sense()
                self._atapi_finish_error()
            else:
                self.abort()
            return
        if seg.total < nbytes:
            # QEMU: PRDs too short end the transfer without an interrupt, the bus master inactive.
            self.bm.status &= ~ST_ACTIVE
            u.status = r.READY
            return
        if seg.table_exhausted:
            self.bm.status &= ~ST_ACTIVE
        if d["atapi"]:
            self.nsector = r.IR_IO | r.IR_COD
            self._done(r.READY)
        else:
            self._set_position(d["lba"] + d["count"] - 1, bool(d["lba48"]))
            self._done(r.READY)

    # ---- ATAPI -----------------------------------------------------------------------------
    def _cd_command(self, cmd: int) -> None:
        u = self.cur
        if cmd == r.CMD_IDENTIFY:
            self._signature()
            self.abort()
        elif cmd == r.CMD_IDENTIFY_PACKET:
            self._info(identify_packet(self._identify_info()))
        elif cmd == r.CMD_DEVICE_RESET:
            self._signature()
            u.error = 0x01
            u.status = 0
            self.xfer = Transfer()
        elif cmd == r.CMD_PACKET:
            limit = (self.lba_high << 8) | self.lba_mid
            self.xfer = Transfer("packet", byte_limit=limit or ATAPI_MAX_PIO_CHUNK)
            self.xfer.block = int(bool(self.feature & r.ATAPI_FEATURE_DMA))
            self.buf, self.pos = bytearray(12), 0
            self.nsector = r.IR_COD
            u.status = r.READY | r.ST_DRQ
        else:
            self._common_command(cmd)

    def _run_packet(self, packet: bytes) -> None:
        u = self.cur
        assert u.atapi is not None
        dma = bool(self.xfer.block)
        limit = self.xfer.byte_limit
        res = u.atapi.execute(packet)
        if res.error:
            self._atapi_finish_error()
            return
        if res.length == 0:
            self.nsector = r.IR_IO | r.IR_COD
            self._done(r.READY)
            return
        if dma:
            self.xfer = Transfer()
            self.dma = {"lba": res.lba, "count": res.count, "write": 0, "lba48": 0, "atapi": 1,
                        "bytes": res.length}
            self.pending_data = res
            u.status = r.READY | r.ST_DRQ
            if self.bm.started:
                self.run_dma()
            return
        self.pending_data = res
        limit &= ~1
        self.xfer = Transfer("atapi", res.lba, res.length, 0, limit or ATAPI_MAX_PIO_CHUNK)
        self.xfer.block = 0  # bytes sent so far
        self._atapi_next_chunk()

    def _atapi_bytes(self, res: AtapiResult, start: int, n: int) -> bytes:
        u = self.cur
        assert u.atapi is not None
        return u.atapi.data(res, start, n)

    def _atapi_next_chunk(self) -> None:
        x, u = self.xfer, self.cur
        if x.remaining == 0:
            self.nsector = r.IR_IO | r.IR_COD
            self._done(r.READY)
            return
        n = min(x.remaining, x.byte_limit)
        if self.pending_data.count and r.CD_SECTOR_SIZE <= n < x.remaining:
            n -= n % r.CD_SECTOR_SIZE  # whole sectors per DRQ block when the limit allows
        self.buf, self.pos = bytearray(self._atapi_bytes(self.pending_data, x.block, n)), 0
        x.block += n
        x.remaining -= n
        self.nsector = r.IR_IO
        self.lba_mid, self.lba_high = n & 0xFF, (n >> 8) & 0xFF
        u.status = r.READY | r.ST_DRQ
        self.raise_irq()

    def _atapi_dma_data(self, d: dict[str, int], total: int) -> bytes:
        return self._atapi_bytes(self.pending_data, 0, total)

    def _atapi_finish_error(self) -> None:
        u = self.cur
        assert u.atapi is not None
        u.error = u.atapi.sense_key << 4
        self.nsector = r.IR_IO | r.IR_COD
        self.dma = None
        self._done(r.READY | r.ST_ERR)

    # ---- migration -------------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        with self.lock:
            regs = bytes((self.feature, self.nsector, self.lba_low, self.lba_mid, self.lba_high, self.hob_feature,
                          self.hob_nsector, self.hob_low, self.hob_mid, self.hob_high, self.device, self.ctl))
            units = [{"status": u.status, "error": u.error, "multiple": u.multiple, "write_cache": u.write_cache,
                      "udma": u.udma_mode + 1, "mdma": u.mdma_mode + 1,
                      "geometry": [u.geometry.cylinders, u.geometry.heads, u.geometry.sectors],
                      "atapi": u.atapi.save() if u.atapi is not None else {}} for u in self.units]
            x = self.xfer
            busy = bool(x.kind) or self.dma is not None
            return {"regs": regs, "units": units, "irq": self.irq_level, "bm": self.bm.save(),
                    "xfer": [x.kind, x.lba, x.remaining, x.block, x.byte_limit, x.lba48]
                    if x.kind in ("read", "write", "info") else ["", 0, 0, 1, 0, False],
                    "buf": bytes(self.buf) if x.kind in ("read", "write", "info") else b"", "pos": self.pos,
                    "dma": dict(self.dma) if self.dma is not None and not self.dma["atapi"] else {},
                    "busy_atapi": busy and not (x.kind in ("read", "write", "info") or
                                                (self.dma is not None and not self.dma["atapi"]))}

    def validate(self, state: Any) -> dict[str, Any]:
        check_keys(state, {"regs", "units", "irq", "bm", "xfer", "buf", "pos", "dma", "busy_atapi"})
        regs = bytes_field(state, "regs", 12, exact=True)
        units = state["units"]
        if not isinstance(units, list) or len(units) != 2:
            raise DeviceStateError("units must be a list of two")
        checked = []
        for u, mine in zip(units, self.units):
            check_keys(u, {"status", "error", "multiple", "write_cache", "udma", "mdma", "geometry", "atapi"})
            geo = u["geometry"]
            if not (isinstance(geo, list) and len(geo) == 3 and all(type(v) is int for v in geo)
                    and 1 <= geo[0] <= 65535 and 1 <= geo[1] <= 16 and 1 <= geo[2] <= 255):
                raise DeviceStateError("bad geometry")
            if type(u["write_cache"]) is not bool:
                raise DeviceStateError("write_cache must be a boolean")
            mult = int_field(u, "multiple", 0, r.MAX_MULT_SECTORS)
            if mult & (mult - 1):
                raise DeviceStateError("multiple must be a power of two")
            atapi = mine.atapi.validate(u["atapi"]) if mine.atapi is not None else None
            if mine.atapi is None and u["atapi"] != {}:
                raise DeviceStateError("ATAPI state for a unit that is not a CD-ROM")
            checked.append({"status": int_field(u, "status", 0, 0xFF), "error": int_field(u, "error", 0, 0xFF),
                            "multiple": mult, "write_cache": u["write_cache"],
                            "udma": int_field(u, "udma", 0, 7), "mdma": int_field(u, "mdma", 0, 3),
                            "geometry": Geometry(*geo), "atapi": atapi})
        if type(state["irq"]) is not bool or type(state["busy_atapi"]) is not bool:
            raise DeviceStateError("irq and busy_atapi must be booleans")
        bm = BusMaster.validate(state["bm"])
        x = state["xfer"]
        if not (isinstance(x, list) and len(x) == 6 and x[0] in ("", "read", "write", "info")
                and all(type(v) is int and 0 <= v < 1 << 48 for v in x[1:5]) and type(x[5]) is bool):
            raise DeviceStateError("bad transfer state")
        buf = bytes_field(state, "buf", MAX_PIO_BUFFER)
        pos = int_field(state, "pos", 0, len(buf))
        if x[0] and (not buf or len(buf) % r.SECTOR_SIZE):
            raise DeviceStateError("a PIO transfer needs a whole-sector buffer")
        if x[0] in ("read", "write") and (not 1 <= x[3] <= r.MAX_MULT_SECTORS or x[2] > 0x10000):
            raise DeviceStateError("bad PIO block size or count")
        unit = self.units[1 if regs[10] & r.DEV_SLAVE else 0]
        if x[0] in ("read", "write") and x[1] + x[2] > unit.sectors():
            raise DeviceStateError("PIO transfer beyond the disk")
        dma = state["dma"]
        if dma != {}:
            check_keys(dma, {"lba", "count", "write", "lba48", "atapi"})
            for key, hi in (("lba", 1 << 48), ("count", 0x10000), ("write", 1), ("lba48", 1), ("atapi", 0)):
                int_field(dma, key, 0, hi)
            if dma["lba"] + dma["count"] > unit.sectors():
                raise DeviceStateError("DMA transfer beyond the disk")
        return {"regs": regs, "units": checked, "irq": state["irq"], "bm": bm, "xfer": x, "buf": buf, "pos": pos,
                "dma": dict(dma) or None, "busy_atapi": state["busy_atapi"]}

    def restore(self, s: dict[str, Any]) -> None:
        with self.lock:
            (self.feature, self.nsector, self.lba_low, self.lba_mid, self.lba_high, self.hob_feature,
             self.hob_nsector, self.hob_low, self.hob_mid, self.hob_high, self.device, self.ctl) = s["regs"]
            for u, st in zip(self.units, s["units"]):
                u.status, u.error, u.multiple, u.write_cache = st["status"], st["error"], st["multiple"], \
                    st["write_cache"]
                u.udma_mode, u.mdma_mode, u.geometry = st["udma"] - 1, st["mdma"] - 1, st["geometry"]
                if u.atapi is not None:
                    u.atapi.restore(st["atapi"])
            self.bm.restore(s["bm"])
            self.xfer = Transfer(*s["xfer"])
            self.buf, self.pos = bytearray(s["buf"]), s["pos"]
            self.dma = s["dma"]
            if s["busy_atapi"]:
                # An ATAPI packet in flight is not migrated: it ends with an error the driver retries.
                u = self.cur
                if u.atapi is not None:
                    u.atapi.set_error_sense()
                    self._atapi_finish_error()
                    return
            self._line = None  # whatever the line was, drive the restored level
            self._set_irq(s["irq"])

    def reset(self) -> None:
        with self.lock:
            self.bm.reset()
            for u in self.units:
                u.write_cache, u.udma_mode, u.mdma_mode = True, -1, -1
                if u.kind == "hd":
                    u.geometry = default_geometry(u.sectors())
                if u.atapi is not None:
                    u.atapi.reset()
            self.reset_registers()
