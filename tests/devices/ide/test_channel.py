"""ATA disks on the PIIX IDE channels: registers, PIO, DMA through PRD tables, reset, nIEN, migration state."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kvmpy.block.errors import BlockError
from kvmpy.devices.device import DeviceStateError
from kvmpy.devices.ide import regs as r
from kvmpy.devices.ide.bmdma import ST_ACTIVE, ST_ERROR, ST_INTR
from kvmpy.migration.codec import decode, encode
from tests.devices.ide.host import RAM_SIZE, IdeHost, make_image

SIZE = 8 << 20


@pytest.fixture
def host(tmp_path: Path):
    h = IdeHost()
    h.ide.channels[0].attach_disk(0, h.open(make_image(tmp_path / "a.raw", SIZE)))
    yield h
    h.close()


def word(data: bytes, i: int) -> int:
    return struct.unpack_from("<H", data, 2 * i)[0]


def ata_string(data: bytes, first: int, last: int) -> str:
    return b"".join(data[2 * i:2 * i + 2][::-1] for i in range(first, last + 1)).decode().strip()


def test_pci_identity(host: IdeHost) -> None:
    ide = host.ide
    assert ide.config_read(0, 4) == 0x7010_8086
    assert ide.config_read(0x08, 4) >> 8 == 0x010180
    assert ide.config_read(0x06, 2) == 0x0280
    # both channels' decode enabled, as SeaBIOS leaves them (Linux's ata_piix tests 0x41/0x43 bit 7)
    assert ide.config_read(0x41, 1) & 0x80 and ide.config_read(0x43, 1) & 0x80
    ide.config_write(0x20, 4, 0xFFFFFFFF)
    assert ide.config_read(0x20, 4) == 0xFFFFFFF1  # 16 I/O ports


def test_identify_device(host: IdeHost) -> None:
    host.select(0)
    host.outb(0x1F7, r.CMD_IDENTIFY)
    assert host.lines[14].level
    assert host.status() == r.READY | r.ST_DRQ
    assert not host.lines[14].level  # reading status acknowledged the interrupt
    data = host.pio_in(512)
    assert host.status() == r.READY
    assert ata_string(data, 27, 46) == "QEMU HARDDISK"
    assert word(data, 60) | word(data, 61) << 16 == SIZE // 512
    assert word(data, 100) == SIZE // 512
    assert word(data, 83) & (1 << 10)  # LBA48
    assert (word(data, 1), word(data, 3), word(data, 6)) == (SIZE // 512 // (16 * 63), 16, 63)


def test_pio_read_lba28_and_chs(host: IdeHost) -> None:
    host.lba28(r.CMD_READ, 5, 3)
    data = host.pio_in(3 * 512)
    assert [struct.unpack_from("<Q", data, 512 * i)[0] for i in range(3)] == [5, 6, 7]
    assert host.status() == r.READY
    assert host.inb(0x1F3) == 7  # the last sector read
    # CHS: cylinder 1, head 2, sector 4 -> (1*16+2)*63 + 3
    host.select(0, lba=False)
    host.outb(0x1F2, 1)
    host.outb(0x1F3, 4)
    host.outb(0x1F4, 1)
    host.outb(0x1F5, 0)
    host.outb(0x1F6, 0xA2)
    host.outb(0x1F7, r.CMD_READ)
    assert struct.unpack_from("<Q", host.pio_in(512))[0] == (1 * 16 + 2) * 63 + 3


def test_pio_write_then_read_back(host: IdeHost, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 4
    host.lba28(r.CMD_WRITE, 100, 2)
    assert host.status() & r.ST_DRQ
    host.pio_out(payload)
    assert host.status() == r.READY
    with open(tmp_path / "a.raw", "rb") as f:
        f.seek(100 * 512)
        assert f.read(1024) == payload


def test_read_multiple(host: IdeHost) -> None:
    host.outb(0x1F2, 4)
    host.outb(0x1F7, r.CMD_SET_MULTIPLE)
    assert host.status() == r.READY
    host.lba28(r.CMD_READ_MULTIPLE, 0, 8)
    edges = len(host.lines[14].edges)
    data = host.pio_in(8 * 512)
    assert struct.unpack_from("<Q", data, 7 * 512)[0] == 7
    assert host.lines[14].edges[edges:].count(True) == 1  # one interrupt for the second block of four
    host.outb(0x1F2, 3)
    host.outb(0x1F7, r.CMD_SET_MULTIPLE)
    assert host.status() & r.ST_ERR


def test_lba48_beyond_28_bits(tmp_path: Path) -> None:
    h = IdeHost()
    big = (1 << 28) + 64
    path = make_image(tmp_path / "big.raw", big * 512, pattern=False)
    with open(path, "r+b") as f:
        f.seek(((1 << 28) + 3) * 512)
        f.write(b"far away")
    h.ide.channels[0].attach_disk(0, h.open(path))
    try:
        h.lba48(r.CMD_READ_EXT, (1 << 28) + 3, 1)
        assert h.pio_in(512)[:8] == b"far away"
        h.outb(0x3F6, r.CTL_HOB)
        assert h.inb(0x1F3) == ((1 << 28) + 3) >> 24 & 0xFF
        h.lba28(r.CMD_READ, (1 << 28) - 1, 2)  # past the 28-bit limit of this disk? no: in range
        assert h.status() == r.READY | r.ST_DRQ
    finally:
        h.close()


def test_out_of_range_and_unknown_commands_abort(host: IdeHost) -> None:
    host.lba28(r.CMD_READ, SIZE // 512 - 1, 2)
    assert host.status() == r.READY | r.ST_ERR
    assert host.inb(0x1F1) & r.ERR_ABRT
    host.outb(0x1F7, 0xFF)
    assert host.status() & r.ST_ERR
    host.outb(0x1F1, 0x77)
    host.outb(0x1F7, r.CMD_SET_FEATURES)
    assert host.status() & r.ST_ERR
    host.outb(0x1F1, r.SF_WCACHE_OFF)
    host.outb(0x1F7, r.CMD_SET_FEATURES)
    assert host.status() == r.READY
    host.outb(0x1F7, r.CMD_FLUSH)
    assert host.status() == r.READY


def test_nien_masks_the_interrupt(host: IdeHost) -> None:
    host.outb(0x3F6, r.CTL_NIEN)
    host.outb(0x1F7, r.CMD_FLUSH)
    assert not host.lines[14].level
    host.outb(0x3F6, 0)
    assert host.lines[14].level  # still pending: unmasking shows it
    host.inb(0x3F6)
    assert host.lines[14].level  # alternate status does not acknowledge
    host.status()
    assert not host.lines[14].level


def test_soft_reset_and_absent_slave(host: IdeHost) -> None:
    host.lba28(r.CMD_READ, 0, 4)
    host.outb(0x3F6, r.CTL_SRST)
    assert host.inb(0x3F6) & r.ST_BSY
    host.outb(0x3F6, 0)
    assert host.status() == r.READY
    assert (host.inb(0x1F2), host.inb(0x1F3), host.inb(0x1F4), host.inb(0x1F5)) == (1, 1, 0, 0)
    assert host.inb(0x1F1) == 0x01
    host.select(1)
    assert host.status() == 0
    host.outb(0x1F7, r.CMD_IDENTIFY)  # ignored
    assert host.status() == 0
    assert host.status(ch=1) == 0  # no drives on channel 1


def test_dma_read_and_write(host: IdeHost, tmp_path: Path) -> None:
    host.prd_table(0x1000, [(0x10000, 512, False), (0x20000, 1024, True)])
    host.lba28(r.CMD_READ_DMA, 10, 3)
    assert not host.lines[14].level
    host.dma(0, 0x1000, to_memory=True)
    assert host.lines[14].level
    assert host.bm_in(2) & (ST_ACTIVE | ST_INTR | ST_ERROR) == ST_INTR
    assert host.status() == r.READY
    assert struct.unpack_from("<Q", host.memory.read(0x10000, 8))[0] == 10
    assert struct.unpack_from("<Q", host.memory.read(0x20200, 8))[0] == 12
    host.bm_out(0, 0)
    host.memory.write(0x30000, b"\xab" * 512)
    host.prd_table(0x1000, [(0x30000, 512, True)])
    host.dma(0, 0x1000, to_memory=False)  # the engine first, then the command
    host.lba48(r.CMD_WRITE_DMA_EXT, 50, 1)
    assert host.status() == r.READY
    with open(tmp_path / "a.raw", "rb") as f:
        f.seek(50 * 512)
        assert f.read(512) == b"\xab" * 512


@pytest.mark.parametrize("table, entries", [
    (RAM_SIZE + 0x1000, []),  # the table itself outside RAM
    (0x1000, [(RAM_SIZE - 256, 512, True)]),  # a buffer running off the end of RAM
    (0x1000, [(0xFFFF0000, 512, True)]),
])
def test_hostile_prd_fails_the_command(host: IdeHost, table: int, entries: list) -> None:
    if entries:
        host.prd_table(table, entries)
    host.lba28(r.CMD_READ_DMA, 0, 1)
    host.dma(0, table, to_memory=True)
    assert host.status() == r.READY | r.ST_ERR
    assert host.bm_in(2) & ST_ERROR
    assert not host.bm_in(2) & ST_ACTIVE
    host.bm_out(0, 0)
    host.lba28(r.CMD_READ, 0, 1)  # the channel still works
    assert struct.unpack_from("<Q", host.pio_in(512))[0] == 0


def test_short_prd_and_bus_master_off(host: IdeHost) -> None:
    host.prd_table(0x1000, [(0x10000, 512, True)])
    host.lba28(r.CMD_READ_DMA, 0, 2)
    host.dma(0, 0x1000, to_memory=True)
    assert not host.bm_in(2) & (ST_ACTIVE | ST_INTR)  # too short: no interrupt, engine stopped
    host.bm_out(0, 0)
    host.ide.config_write(0x04, 2, 0x0001)  # I/O only
    host.lba28(r.CMD_READ_DMA, 0, 1)
    host.dma(0, 0x1000, to_memory=True)
    assert host.status() & r.ST_ERR


def test_save_restore_mid_pio(host: IdeHost, tmp_path: Path) -> None:
    host.lba28(r.CMD_READ, 20, 2)
    first = host.pio_in(100)
    state = decode(encode(host.ide.save()), "piix3-ide")  # as a migration stream carries it
    other = IdeHost()
    other.ide.channels[0].attach_disk(0, other.open(tmp_path / "a.raw"))
    try:
        other.ide.restore(state)
        rest = other.pio_in(1024 - 100)
        data = first + rest
        assert struct.unpack_from("<Q", data, 512)[0] == 21
        assert other.status() == r.READY
        bad = dict(state)
        bad["channels"] = [dict(state["channels"][0], xfer=["read", SIZE, 5, 1, 0, False]), state["channels"][1]]
        with pytest.raises(DeviceStateError):
            other.ide.validate(bad)
        with pytest.raises(DeviceStateError):
            other.ide.validate({"pci": state["pci"], "channels": [{}]})
    finally:
        other.close()


def test_save_restore_pending_dma(host: IdeHost) -> None:
    host.prd_table(0x1000, [(0x10000, 1024, True)])
    host.lba28(r.CMD_READ_DMA, 30, 2)  # the command waits for the engine
    state = decode(encode(host.ide.save()), "piix3-ide")
    host.ide.reset()
    host.ide.config_write(0x04, 2, 0x0005)
    host.ide.restore(state)
    host.dma(0, 0x1000, to_memory=True)
    assert host.status() == r.READY
    assert struct.unpack_from("<Q", host.memory.read(0x10200, 8))[0] == 31


def test_device_serial_and_model_reach_identify(tmp_path: Path) -> None:
    """-device ide-hd,serial=,model= as QEMU pads them: 20 and 40 characters, longer text cut."""
    h = IdeHost()
    try:
        h.ide.channels[1].attach_disk(1, h.open(make_image(tmp_path / "b.raw", SIZE)), serial="S" * 26,
                                      model="My Disk")
        h.select(1, ch=1)
        h.outb(0x177, r.CMD_IDENTIFY)
        data = h.pio_in(512, ch=1)
        assert (ata_string(data, 10, 19), ata_string(data, 27, 46)) == ("S" * 20, "My Disk")
    finally:
        h.close()


def test_pio_read_reads_ahead_and_falls_back_to_the_block_on_an_error(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """READ SECTORS moves a sector per DRQ block (SeaBIOS's int 13h): the command's sectors come from the drive
    up to 256 at once, each block with its interrupt as before; when that read fails, the block alone is read."""
    h = IdeHost()
    drive = h.open(make_image(tmp_path / "a.raw", SIZE))
    h.ide.channels[0].attach_disk(0, drive)
    reads: list[tuple[int, int]] = []
    real = drive.read_into
    fail_long = False

    def spy(offset: int, views: list[memoryview]) -> None:
        n = sum(len(v) for v in views)
        reads.append((offset // 512, n // 512))
        if fail_long and n > 512:
            raise BlockError("read-ahead refused")
        real(offset, views)

    monkeypatch.setattr(drive, "read_into", spy)
    try:
        h.lba48(r.CMD_READ_EXT, 10, 300)
        edges = len(h.lines[14].edges)
        data = h.pio_in(300 * 512)
        assert [struct.unpack_from("<Q", data, 512 * i)[0] for i in range(300)] == list(range(10, 310))
        assert h.status() == r.READY
        assert reads == [(10, 256), (266, 44)]
        assert h.lines[14].edges[edges:].count(True) == 299  # blocks 2..300 each raise it, as before
        reads.clear()
        fail_long = True
        h.lba28(r.CMD_READ, 1000, 3)
        data = h.pio_in(3 * 512)
        assert [struct.unpack_from("<Q", data, 512 * i)[0] for i in range(3)] == [1000, 1001, 1002]
        assert reads == [(1000, 3), (1000, 1), (1001, 3 - 1), (1001, 1), (1002, 1)]
    finally:
        h.close()


def test_polling_with_nien_puts_nothing_on_a_low_line(host: IdeHost) -> None:
    """SeaBIOS polls with nIEN set: status reads, control writes and data blocks leave a low line alone (no
    KVM_IRQ_LINE each); clearing nIEN with INTRQ pending raises it, and each block raises it again."""
    host.outb(0x3F6, r.CTL_NIEN)
    line = host.lines[14]
    before = len(line.edges)
    host.lba28(r.CMD_READ, 0, 4)
    host.status()
    host.outb(0x3F6, r.CTL_NIEN)
    host.pio_in(3 * 512)
    assert line.edges[before:] == [] and not line.level
    host.outb(0x3F6, 0)  # INTRQ is pending (the fourth block): the line goes up
    assert line.edges[before:] == [True]
    host.pio_in(512)
    host.status()  # reading status acknowledges: down again
    assert line.edges[before:] == [True, False] and not line.level
