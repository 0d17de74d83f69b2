"""The 512-byte IDENTIFY DEVICE / IDENTIFY PACKET DEVICE data, and a disk's default CHS geometry.

Word layout from ATA/ATAPI-6; the values a PC guest sees follow QEMU's hw/ide/core.c
(model "QEMU HARDDISK"/"QEMU DVD-ROM", firmware revision, the supported-feature words,
UDMA modes 0-5 and multiword DMA 0-2), so firmware and Linux drivers take the same paths.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kvmpy.devices.ide.regs import MAX_MULT_SECTORS, SECTOR_SIZE

FIRMWARE_REVISION = "2.5+"
MAX_CYLINDERS = 16383


@dataclass(frozen=True)
class Geometry:
    cylinders: int
    heads: int
    sectors: int


def default_geometry(nsectors: int) -> Geometry:
    """16 heads, 63 sectors, as many cylinders as fit (at most 16383, at least 1)."""
    cyls = max(1, min(MAX_CYLINDERS, nsectors // (16 * 63)))
    return Geometry(cyls, 16, 63)


def _ata_string(text: str, length: int) -> bytes:
    """ATA strings: space-padded, each 16-bit word holding two characters high byte first."""
    raw = text.encode("ascii", "replace")[:length].ljust(length, b" ")
    return bytes(raw[i ^ 1] for i in range(length))


def _words(w: dict[int, int]) -> bytearray:
    buf = bytearray(SECTOR_SIZE)
    for index, value in w.items():
        struct.pack_into("<H", buf, 2 * index, value & 0xFFFF)
    return buf


@dataclass(frozen=True)
class IdentifyInfo:
    """What IDENTIFY data depends on."""

    serial: str
    nsectors: int
    geometry: Geometry
    multiple: int  # sectors per READ/WRITE MULTIPLE block now set (0 = off)
    write_cache: bool
    udma_mode: int = -1  # the selected UDMA mode (SET FEATURES), -1 none
    mdma_mode: int = -1
    model: str = ""  # -device ...,model= ("": QEMU's default for the kind)


def _dma_words(info: IdentifyInfo) -> dict[int, int]:
    mdma = 0x07 | ((1 << (8 + info.mdma_mode)) if info.mdma_mode >= 0 else 0)
    udma = 0x3F | ((1 << (8 + info.udma_mode)) if info.udma_mode >= 0 else 0)
    return {63: mdma, 88: udma}


def identify_disk(info: IdentifyInfo) -> bytes:
    g = info.geometry
    cur = min(info.nsectors, g.cylinders * g.heads * g.sectors)
    lba28 = min(info.nsectors, (1 << 28) - 1)
    w = {
        0: 0x0040, 1: g.cylinders, 3: g.heads, 4: SECTOR_SIZE * g.sectors, 5: SECTOR_SIZE, 6: g.sectors,
        20: 3, 21: SECTOR_SIZE, 22: 4,
        47: 0x8000 | MAX_MULT_SECTORS, 48: 1, 49: (1 << 11) | (1 << 9) | (1 << 8), 51: 0x200, 52: 0x200,
        53: 1 | 2 | 4, 54: g.cylinders, 55: g.heads, 56: g.sectors, 57: cur & 0xFFFF, 58: cur >> 16,
        59: (0x100 | info.multiple) if info.multiple else 0, 60: lba28 & 0xFFFF, 61: lba28 >> 16,
        62: 0x07, 64: 0x03, 65: 120, 66: 120, 67: 120, 68: 120, 80: 0xF0, 81: 0x16,
        82: (1 << 14) | (1 << 5) | 1, 83: (1 << 14) | (1 << 13) | (1 << 12) | (1 << 10), 84: (1 << 14),
        85: (1 << 14) | (1 << 5 if info.write_cache else 0) | 1,
        86: (1 << 13) | (1 << 12) | (1 << 10), 87: (1 << 14), 93: 1 | (1 << 14) | 0x2000,
        100: info.nsectors & 0xFFFF, 101: (info.nsectors >> 16) & 0xFFFF,
        102: (info.nsectors >> 32) & 0xFFFF, 103: (info.nsectors >> 48) & 0xFFFF,
        **_dma_words(info),
    }
    buf = _words(w)
    buf[20:40] = _ata_string(info.serial, 20)
    buf[46:54] = _ata_string(FIRMWARE_REVISION, 8)
    buf[54:94] = _ata_string(info.model or "QEMU HARDDISK", 40)
    return bytes(buf)


def identify_packet(info: IdentifyInfo) -> bytes:
    """ATAPI CD-ROM: removable, 12-byte packets, DRQ within 50 us, DMA and LBA."""
    w = {
        0: (2 << 14) | (5 << 8) | (1 << 7) | (2 << 5) | 0,
        20: 3, 21: SECTOR_SIZE, 22: 4, 48: 1, 49: (1 << 11) | (1 << 9) | (1 << 8), 53: 7,
        62: 7, 64: 3, 65: 0xB4, 66: 0xB4, 67: 0x12C, 68: 0xB4, 71: 30, 72: 30, 80: 0x1E,
        82: (1 << 14) | (1 << 9) | (1 << 4), 83: 1 << 14, 84: 1 << 14, 85: (1 << 14) | (1 << 9) | (1 << 4),
        86: 0, 87: 1 << 14, 93: 0x6B00,
        **_dma_words(info),
    }
    buf = _words(w)
    buf[20:40] = _ata_string(info.serial, 20)
    buf[46:54] = _ata_string(FIRMWARE_REVISION, 8)
    buf[54:94] = _ata_string(info.model or "QEMU DVD-ROM", 40)
    return bytes(buf)
