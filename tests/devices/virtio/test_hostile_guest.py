"""A real guest programs hostile virtqueues into virtio-blk-pci; kvmpy must survive every one of them and
write nothing outside the buffers the driver gave.

The guest is ``script`` (tests/guests/script.S): it runs records composed here, so each register write is a
real MMIO exit, each kick a real store to the notify area (KVM's ioeventfd), each descriptor table plain guest
RAM. Per case the driver resets the device and sets it up again, now and then with a queue size, ring address
or feature set no driver should use, then offers a random descriptor table: addresses inside the buffer
window, beyond RAM, wrapping the 64-bit space, on the rings or on the BAR itself; lengths up to 4 GiB; random
NEXT/WRITE/INDIRECT flags and next indexes, indirect tables (nested, misaligned, out of RAM), heads beyond the
table and an avail index that runs ahead. Request headers in the buffers ask for reads, writes, flushes,
discards and unknown types at any sector.

All RAM the device may not write (everything but the buffer window and the used ring) is filled with a
canary byte first and checked at the end by the guest; the last requests are a valid read and write, whose
data are compared with the image on the host. The guest's exit status says it ran to the end: the VMM did
not crash, hang or stop the vCPU.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from kvmpy.devices.virtio import pci as vp
from kvmpy.devices.virtio.blk import S_OK, T_IN, T_OUT
from kvmpy.devices.virtio.device import (F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1, STATUS_ACKNOWLEDGE,
                                         STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK)
from tests.guests.build import build_guest
from tests.guests.runner import PASS, REPO
from tests.guests.script import Script

pytestmark = pytest.mark.kvm_host

RAM_MIB = 16
RAM_END = RAM_MIB << 20
SLOT = 5
DEVFN = SLOT << 3
BAR4 = 0xE0000000
COMMON = BAR4 + vp.COMMON_OFF
STATUS = COMMON + vp.STATUS_REG
NOTIFY = BAR4 + vp.NOTIFY_OFF

DESC, AVAIL, USED, INDIRECT = 0x400000, 0x402000, 0x403000, 0x404000  # rings, then indirect tables
RINGS_END = 0x410000
BUF, BUF_END = 0x500000, 0x600000  # the only RAM the device may write, with the used ring
CANARY = 0xA5
CANARY_RANGES = [(0x300000, DESC), (RINGS_END, BUF), (BUF_END, RAM_END)]  # the script lives below 0x300000

DISK_SECTORS = 2048
SECTOR = 512
DESC_FMT = struct.Struct("<QIHH")
VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_DESC_F_INDIRECT = 1, 2, 4
BLK_HDR = struct.Struct("<IIQ")
T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 4, 8, 11, 13


def disk_image(path: Path) -> bytes:
    """A raw disk whose sector k holds the byte k & 0xFF throughout."""
    data = b"".join(bytes([k & 0xFF]) * SECTOR for k in range(DISK_SECTORS))
    path.write_bytes(data)
    return data


class Driver:
    """Composes the guest's records for one device: set-up steps, hostile or not, and requests."""

    def __init__(self, script: Script, rng: random.Random) -> None:
        self.s, self.rng = script, rng

    def common(self, reg: int, value: int, size: int) -> None:
        {1: self.s.store8, 2: self.s.store16, 4: self.s.store32}[size](COMMON + reg, value)

    def setup(self, size: int, desc: int, avail: int, used: int, features: int, queue: int = 0,
              features_ok: bool = True) -> None:
        c = self.common
        c(vp.STATUS_REG, 0, 1)  # reset
        c(vp.STATUS_REG, STATUS_ACKNOWLEDGE | STATUS_DRIVER, 1)
        for sel in (0, 1):
            c(vp.GFSELECT, sel, 4)
            c(vp.GF, features >> (32 * sel), 4)
        if features_ok:
            c(vp.STATUS_REG, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK, 1)
        c(vp.Q_SELECT, queue, 2)
        c(vp.Q_SIZE, size, 2)
        for reg, addr in ((vp.Q_DESC_LO, desc), (vp.Q_DRIVER_LO, avail), (vp.Q_DEVICE_LO, used)):
            c(reg, addr, 4)
            c(reg + 4, addr >> 32, 4)
        c(vp.Q_ENABLE, 1, 2)
        c(vp.STATUS_REG, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK, 1)

    def offer(self, heads: list[int], avail_idx: int, flags: int = 0, used_event: int = 0, size: int = 16) -> None:
        self.s.write(AVAIL, struct.pack(f"<HH{len(heads)}H", flags, avail_idx & 0xFFFF, *(h & 0xFFFF for h in heads)))
        self.s.store16(AVAIL + 4 + 2 * size, used_event)  # where EVENT_IDX reads it for this size

    def kick(self, queue: int = 0) -> None:
        self.s.store16(NOTIFY + queue * vp.NOTIFY_MULTIPLIER, queue)

    # --- random material ---------------------------------------------------------------------
    def buffer(self, length: int) -> int:
        """A buffer address in the window; one in five ends exactly at its end, so an overrun hits the canary."""
        if 0 < length <= 0x10000 and self.rng.random() < 0.2:
            return BUF_END - length
        return BUF + self.rng.randrange(0, 0xEF) * 0x1000 + self.rng.randrange(0, 0x100) * 16

    def address(self, length: int) -> int:
        r = self.rng.random()
        if r < 0.55:
            return self.buffer(length)
        return self.rng.choice([RAM_END + self.rng.randrange(0, 1 << 20) * 16, (1 << 64) - 0x1000,
                                (1 << 64) - 16, 0, DESC, AVAIL, USED, BAR4, 0xFEC00000,
                                RAM_END - 8, 1 << 40, self.rng.getrandbits(64)])

    def length(self) -> int:
        return self.rng.choice([0, 1, 15, 16, 17, 512, 513, 4096, 65536, 0x80000000, 0xFFFFFFFF,
                                self.rng.randrange(0, 70000)])

    def header(self, addr: int) -> None:
        """A request header at ``addr`` (when it lies in the buffer window): any type, any sector."""
        if not BUF <= addr <= BUF_END - BLK_HDR.size:
            return
        rtype = self.rng.choice([T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES, 0xFFFF,
                                 self.rng.getrandbits(32)])
        sector = self.rng.choice([0, 1, DISK_SECTORS - 1, DISK_SECTORS, (1 << 63), (1 << 64) - 1,
                                  self.rng.randrange(0, DISK_SECTORS)])
        self.s.write(addr, BLK_HDR.pack(rtype, 0, sector))

    def table(self, at: int, count: int, size: int, nested: bool) -> None:
        table = b""
        for _ in range(count):
            length = self.length()
            addr = self.address(length)
            if BUF <= addr < BUF_END and addr + length > BUF_END:
                length = BUF_END - addr  # a buffer in the window never reaches the canary
            if addr == RAM_END - 8:
                length = max(length, 9)  # it crosses the end of RAM: never a buffer
            flags = self.rng.getrandbits(3) if nested else self.rng.getrandbits(2)
            if flags & VRING_DESC_F_INDIRECT and self.rng.random() < 0.7:
                addr = INDIRECT + 0x800 * self.rng.randrange(0, 8) + self.rng.choice([0, 0, 0, 8, 1])
                length = 16 * self.rng.randrange(0, 20) + self.rng.choice([0, 0, 0, 8, 1])
            if not flags & VRING_DESC_F_WRITE:
                self.header(addr)
            table += DESC_FMT.pack(addr & ((1 << 64) - 1), length & 0xFFFFFFFF, flags,
                                   self.rng.randrange(0, size + 3) & 0xFFFF)
        self.s.write(at, table)

    def request_chain(self, first: int) -> int:
        """Header, data and status descriptors at ``first``..``first+2`` for a request of any type at any
        sector, data of any length (discard and write-zeroes segments of any values); returns the head."""
        rng = self.rng
        hdr = self.buffer(16)
        self.header(hdr)
        rtype = rng.choice([T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES, 0x7FFF])
        sector = rng.choice([0, 7, DISK_SECTORS - 1, DISK_SECTORS, DISK_SECTORS + 8, (1 << 63), (1 << 64) - 1])
        self.s.write(hdr, BLK_HDR.pack(rtype, 0, sector))
        length = rng.choice([0, 1, 15, 16, 511, 512, 4096, 8192, 65536])
        data = self.buffer(length)
        if rtype in (T_DISCARD, T_WRITE_ZEROES):
            segs = b"".join(struct.pack("<QII", rng.choice([0, DISK_SECTORS - 1, (1 << 64) - 1]),
                                        rng.choice([0, 1, 8, 0xFFFFFFFF]), rng.getrandbits(32))
                            for _ in range(rng.randrange(1, 4)))
            self.s.write(data, segs[:(BUF_END - data) & ~3])  # the driver's own stores stay in the window
        writable = rtype in (T_IN, T_GET_ID) or rng.random() < 0.1
        status_len = rng.choice([1, 1, 1, 0, 4])
        status = self.buffer(max(status_len, 1))
        self.s.write(DESC + 16 * first,
                     DESC_FMT.pack(hdr, rng.choice([16, 16, 16, 8, 17]), VRING_DESC_F_NEXT, first + 1) +
                     DESC_FMT.pack(data, length, VRING_DESC_F_NEXT | (VRING_DESC_F_WRITE if writable else 0),
                                   first + 2) +
                     DESC_FMT.pack(status, status_len, VRING_DESC_F_WRITE, 0))
        return first

    def hostile_case(self) -> None:
        rng = self.rng
        size = rng.choice([16] * 8 + [8, 1, 2, 256, 0, 3, 1000, 0xFFFF])
        ring = [DESC, AVAIL, USED]
        if rng.random() < 0.15:
            ring[rng.randrange(3)] = rng.choice([DESC + 1, AVAIL + 1, USED + 2, RAM_END, RAM_END - 8,
                                                 (1 << 64) - 0x1000, BAR4, 0])
        features = (1 << F_VERSION_1) | rng.getrandbits(1) << F_INDIRECT_DESC | rng.getrandbits(1) << F_EVENT_IDX
        if rng.random() < 0.05:
            features |= 1 << rng.choice([60, 34, 35, 33])  # not offered: FEATURES_OK must not stick
        self.s.fill(DESC, AVAIL - DESC, 0)
        self.s.fill(USED, INDIRECT - USED, 0)
        if rng.random() < 0.4:  # chains laid out as Linux does, with hostile requests in them
            nheads = rng.randrange(1, 4)
            heads = [self.request_chain(3 * i) for i in range(nheads)]
        else:
            self.table(DESC, min(size, 16) if 0 < size <= 0x400 else 16, size or 16, nested=True)
            for _ in range(rng.randrange(0, 3)):
                self.table(INDIRECT + 0x800 * rng.randrange(0, 8), rng.randrange(1, 9), 8, nested=True)
            nheads = rng.randrange(1, 4)
            heads = [rng.randrange(0, (size or 16) + 2) for _ in range(nheads)]
        idx = nheads if rng.random() < 0.8 else rng.choice([nheads + (size or 16) + 1, 0xFFFF, 0x8000])
        self.offer(heads, idx, rng.getrandbits(1), rng.getrandbits(16), size if 0 < size <= 256 else 16)
        self.setup(size, *ring, features, queue=0 if rng.random() < 0.95 else rng.choice([1, 7, 0xFFFF]),
                   features_ok=rng.random() < 0.97)
        self.kick(0 if rng.random() < 0.95 else rng.choice([1, 0x3FF]))
        self.s.wait16(USED + 2, nheads, spins_k=4)
        self.s.load8(STATUS)

    # --- the valid request at the end ------------------------------------------------------------
    def request(self, rtype: int, sector: int, data_at: int, status_at: int) -> None:
        hdr = BUF + 0xF8000
        self.s.fill(DESC, AVAIL - DESC, 0)
        self.s.fill(USED, INDIRECT - USED, 0)
        self.s.write(hdr, BLK_HDR.pack(rtype, 0, sector))
        self.s.store8(status_at, 0xFF)
        data_flags = VRING_DESC_F_NEXT | (VRING_DESC_F_WRITE if rtype == T_IN else 0)
        self.s.write(DESC, DESC_FMT.pack(hdr, BLK_HDR.size, VRING_DESC_F_NEXT, 1) +
                     DESC_FMT.pack(data_at, SECTOR, data_flags, 2) +
                     DESC_FMT.pack(status_at, 1, VRING_DESC_F_WRITE, 0))
        self.offer([0], 1, size=8)
        self.setup(8, DESC, AVAIL, USED, 1 << F_VERSION_1)
        self.kick()
        self.s.wait16(USED + 2, 1, spins_k=2_000_000)
        self.s.load8(status_at)


def compose(seed: int, cases: int) -> Script:
    s = Script()
    d = Driver(s, random.Random(seed))
    for start, end in CANARY_RANGES:
        s.fill(start, end - start, CANARY)
    s.fill(BUF, BUF_END - BUF, 0)
    s.mark(0xC0DE)
    s.pci_read32(DEVFN, 0x00)  # vendor and device
    s.pci_read32(DEVFN, vp.CAP_AT[vp.CAP_COMMON])  # cap: vendor-specific, type common
    s.pci_read32(DEVFN, vp.CAP_AT[vp.CAP_COMMON] + 4)  # its BAR
    s.pci_read32(DEVFN, vp.CAP_AT[vp.CAP_NOTIFY] + 16)  # notify_off_multiplier
    s.pci_write32(DEVFN, 0x20, BAR4 | 0x4)  # BAR4: 64-bit memory
    s.pci_write32(DEVFN, 0x24, 0)
    s.pci_write32(DEVFN, 0x04, 0x6)  # memory space and bus master on
    for i in range(cases):
        s.mark(i)
        d.hostile_case()
    s.mark(0xF1A1)
    d.request(T_IN, 5, BUF + 0x10000, BUF + 0x20000)  # read sector 5
    s.load32(BUF + 0x10000)
    s.load32(BUF + 0x10000 + SECTOR - 4)
    s.fill(BUF + 0x30000, SECTOR, 0x5A)
    d.request(T_OUT, 9, BUF + 0x30000, BUF + 0x20000)  # write sector 9
    for start, end in CANARY_RANGES:
        s.check(start, end - start, CANARY)
    s.mark(0xE2D)
    return s


def values(out: str, after: str) -> list[int]:
    """The R/P values the guest printed after its line ``MARK <after>``."""
    lines = out[out.index(f"MARK 0x{int(after, 16):08x}"):].splitlines()[1:]
    return [int(line.split()[1], 16) for line in lines if line[:2] in ("R ", "P ")]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_hostile_queues_from_a_real_guest(tmp_path: Path, seed: int) -> None:
    cases = int(os.environ.get("KVMPY_FUZZ_GUEST_CASES", "150"))
    disk = tmp_path / "disk.raw"
    original = disk_image(disk)
    script = compose(seed, cases).to_bytes()
    assert len(script) < 1 << 20, len(script)  # it must end below the canary at 3 MiB
    (tmp_path / "script.bin").write_bytes(script)
    argv = [sys.executable, "-m", "kvmpy", "-enable-kvm", "-m", str(RAM_MIB), "-kernel", str(build_guest("script")),
            "-initrd", str(tmp_path / "script.bin"), "-display", "none", "-nodefaults", "-serial", "stdio",
            "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-drive", f"file={disk},format=raw,if=none,id=d0",
            "-device", f"virtio-blk-pci,drive=d0,addr={SLOT:#x}"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    out, err = res.stdout, res.stderr
    assert res.returncode == PASS, (res.returncode, out[-3000:], err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    ident, cap, cap_bar, multiplier = values(out, "0xC0DE")[:4]
    assert ident & 0xFFFF == vp.VENDOR, hex(ident)
    assert cap & 0xFF == vp.CAP_VENDOR and cap >> 24 == vp.CAP_COMMON and cap_bar & 0xFF == vp.MODERN_BAR
    assert multiplier == vp.NOTIFY_MULTIPLIER
    assert out.count("WAIT ") == cases + 2
    read_status, first, last, write_status = values(out, "0xF1A1")
    final = disk.read_bytes()
    assert read_status == S_OK and write_status == S_OK, (read_status, write_status, out[-2000:])
    assert first.to_bytes(4, "little") == final[5 * SECTOR:5 * SECTOR + 4]  # the guest read what the disk holds
    assert last.to_bytes(4, "little") == final[6 * SECTOR - 4:6 * SECTOR]
    assert final[9 * SECTOR:10 * SECTOR] == b"\x5a" * SECTOR and len(final) == len(original)
    tail = out[out.index("MARK 0x0000f1a1"):]
    assert tail.count("CHECK ok") == len(CANARY_RANGES), tail  # nothing written outside the driver's buffers
