"""The ATAPI CD-ROM on channel 1: signature, IDENTIFY PACKET, MMC packets by PIO and DMA, media change, eject."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kvmpy.devices.ide import atapi as a
from kvmpy.devices.ide import regs as r
from kvmpy.devices.ide.bmdma import ST_ERROR, ST_INTR
from tests.devices.ide.host import IdeHost

ISO_SECTORS = 64


def make_iso(path: Path, sectors: int = ISO_SECTORS, tag: int = 0) -> Path:
    with open(path, "wb") as f:
        for n in range(sectors):
            f.write(struct.pack("<QQ", n, tag) + bytes([n & 0xFF]) * 2032)
    return path


@pytest.fixture
def host(tmp_path: Path):
    h = IdeHost()
    h.ide.channels[1].attach_cd(0, h.open(make_iso(tmp_path / "a.iso"), readonly=True))
    yield h
    h.close()


def clear_attention(h: IdeHost) -> None:
    h.packet(bytes([a.TEST_UNIT_READY]))


def sense(h: IdeHost) -> tuple[int, int, int]:
    h.packet(bytes([a.REQUEST_SENSE, 0, 0, 0, 18]))
    data = h.atapi_read_all()
    return data[2] & 0xF, data[12], data[13]


def test_signature_and_identify(host: IdeHost) -> None:
    host.select(0, ch=1)
    assert (host.inb(0x174), host.inb(0x175)) == r.ATAPI_SIGNATURE
    host.outb(0x177, r.CMD_IDENTIFY)
    assert host.status(1) & r.ST_ERR and host.inb(0x171) & r.ERR_ABRT
    assert (host.inb(0x174), host.inb(0x175)) == r.ATAPI_SIGNATURE
    host.outb(0x177, r.CMD_IDENTIFY_PACKET)
    data = host.pio_in(512, ch=1)
    assert struct.unpack_from("<H", data)[0] >> 14 == 2  # ATAPI
    assert (struct.unpack_from("<H", data)[0] >> 8) & 0x1F == 5  # CD-ROM


def test_inquiry_capacity_and_read10_pio(host: IdeHost) -> None:
    host.packet(bytes([a.INQUIRY, 0, 0, 0, 36]))
    inq = host.atapi_read_all()
    assert inq[0] == 5 and inq[1] & 0x80 and inq[16:32] == b"QEMU DVD-ROM    "
    assert sense(host) == (0, 0, 0)
    clear_attention(host)
    host.packet(bytes([a.READ_CAPACITY]))
    assert struct.unpack(">II", host.atapi_read_all()) == (ISO_SECTORS - 1, 2048)
    host.packet(bytes([a.READ_10, 0, 0, 0, 0, 3, 0, 0, 5]), limit=4096)
    data = host.atapi_read_all()
    assert len(data) == 5 * 2048
    assert [struct.unpack_from("<Q", data, 2048 * i)[0] for i in range(5)] == [3, 4, 5, 6, 7]
    assert host.status(1) == r.READY and host.inb(0x172) == r.IR_IO | r.IR_COD
    host.packet(bytes([a.READ_12, 0, 0, 0, 0, ISO_SECTORS - 1, 0, 0, 0, 2]))
    assert host.status(1) & r.ST_ERR and sense(host) == (a.ILLEGAL_REQUEST, a.ASC_LBA_OUT_OF_RANGE, 0)


def test_read10_dma(host: IdeHost) -> None:
    clear_attention(host)
    host.prd_table(0x2000, [(0x40000, 4096, True)])
    host.packet(bytes([a.READ_10, 0, 0, 0, 0, 9, 0, 0, 2]), dma=True)
    host.dma(1, 0x2000, to_memory=True)
    assert host.status(1) == r.READY
    assert host.bm_in(10) & (ST_INTR | ST_ERROR) == ST_INTR
    assert struct.unpack_from("<Q", host.memory.read(0x40800, 8))[0] == 10
    host.bm_out(8, 0)
    host.prd_table(0x2000, [(0xFFFFF000, 4096, True)])  # hostile buffer
    host.packet(bytes([a.READ_10, 0, 0, 0, 0, 9, 0, 0, 2]), dma=True)
    host.dma(1, 0x2000, to_memory=True)
    assert host.status(1) & r.ST_ERR and host.bm_in(10) & ST_ERROR


def test_read_toc(host: IdeHost) -> None:
    clear_attention(host)
    host.packet(bytes([a.READ_TOC, 0, 0, 0, 0, 0, 0, 0, 100]))
    toc = host.atapi_read_all()
    assert struct.unpack_from(">HBB", toc) == (18, 1, 1)
    assert toc[6] == 1 and toc[14] == 0xAA and struct.unpack_from(">I", toc, 16)[0] == ISO_SECTORS
    host.packet(bytes([a.READ_TOC, 2, 0, 0, 0, 0, 0, 0, 100]))
    msf = host.atapi_read_all()
    assert msf[8:12] == bytes((0, 0, 2, 0))  # track 1 at 00:02:00
    host.packet(bytes([a.READ_TOC, 0, 1, 0, 0, 0, 0, 0, 12]))
    assert struct.unpack_from(">HBB", host.atapi_read_all()) == (10, 1, 1)
    host.packet(bytes([a.READ_TOC, 0, 7, 0, 0, 0, 0, 0, 12]))
    assert host.status(1) & r.ST_ERR


def test_mode_sense_configuration_and_events(host: IdeHost) -> None:
    host.packet(bytes([a.GET_CONFIGURATION, 0, 0, 0, 0, 0, 0, 0, 64]))
    cfg = host.atapi_read_all()
    assert struct.unpack_from(">H", cfg, 6)[0] == a.PROFILE_CD_ROM
    host.packet(bytes([a.GET_EVENT_STATUS, 1, 0, 0, 0x10, 0, 0, 0, 8]))
    ev = host.atapi_read_all()
    assert ev[4] == a.MEDIA_EVENT_NONE and ev[5] & 2  # the boot medium is no event
    clear_attention(host)
    host.packet(bytes([a.MODE_SENSE_10, 0, 0x2A, 0, 0, 0, 0, 0, 64]))
    ms = host.atapi_read_all()
    assert ms[8] == 0x2A and struct.unpack_from(">H", ms)[0] == len(ms) - 2
    host.packet(bytes([0xFF]))
    assert sense(host) == (a.ILLEGAL_REQUEST, a.ASC_INV_OPCODE, 0)


def test_media_change_lock_and_eject(host: IdeHost, tmp_path: Path) -> None:
    host.packet(bytes([a.TEST_UNIT_READY]))
    assert host.status(1) == r.READY  # the boot medium raises no unit attention
    host.packet(bytes([a.PREVENT_ALLOW, 0, 0, 0, 1]))
    host.packet(bytes([a.START_STOP_UNIT, 0, 0, 0, 2]))
    assert host.status(1) & r.ST_ERR
    cd = host.ide.channels[1].units[0].atapi
    assert cd is not None and not cd.eject_request()
    host.packet(bytes([a.PREVENT_ALLOW, 0, 0, 0, 0]))
    host.packet(bytes([a.START_STOP_UNIT, 0, 0, 0, 2]))
    host.packet(bytes([a.TEST_UNIT_READY]))
    assert sense(host) == (a.NOT_READY, a.ASC_MEDIUM_NOT_PRESENT, 2)
    cd.change_medium(None)
    host.packet(bytes([a.READ_CAPACITY]))
    assert sense(host) == (a.NOT_READY, a.ASC_MEDIUM_NOT_PRESENT, 1)
    cd.change_medium(host.open(make_iso(tmp_path / "b.iso", 20, tag=7), readonly=True))
    host.packet(bytes([a.GET_EVENT_STATUS, 1, 0, 0, 0x10, 0, 0, 0, 8]))
    assert host.atapi_read_all()[4] == a.MEDIA_EVENT_NEW
    host.packet(bytes([a.READ_CAPACITY]))
    assert host.inb(0x171) >> 4 == a.UNIT_ATTENTION
    host.packet(bytes([a.READ_CAPACITY]))
    assert struct.unpack(">II", host.atapi_read_all())[0] == 19


def test_empty_drive_and_bad_packet_lengths(tmp_path: Path) -> None:
    h = IdeHost()
    h.ide.channels[1].attach_cd(0, None)
    try:
        h.packet(bytes([a.READ_10, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF]), limit=0)
        assert h.status(1) & r.ST_ERR
        h.packet(bytes([a.INQUIRY, 0, 0, 0xFF, 0xFF]), limit=1)  # odd, tiny byte-count limit
        data = h.atapi_read_all()
        assert len(data) == 36
        h.select(0, 1)
        h.outb(0x177, r.CMD_PACKET)
        h.pio_out(b"\x12\x00\x00", ch=1)  # a short packet then a new command
        h.outb(0x177, r.CMD_IDENTIFY_PACKET)
        assert len(h.pio_in(512, ch=1)) == 512
    finally:
        h.close()


def test_atapi_state_roundtrip(host: IdeHost) -> None:
    host.packet(bytes([a.PREVENT_ALLOW, 0, 0, 0, 1]))
    state = host.ide.save()
    host.ide.restore(state)
    assert host.ide.channels[1].units[0].atapi.locked  # type: ignore[union-attr]
