"""virtio-blk through the real SplitQueue over real guest memory, driven like Linux's virtio_blk (and like a hostile one).

Images are checked with the real qemu-img / qemu-io as oracles.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
from pathlib import Path

import pytest

from kvmpy.block.drive import open_drive
from kvmpy.devices.virtio.blk import (F_CONFIG_WCE, F_DISCARD, F_FLUSH, F_MQ, F_RO, F_WRITE_ZEROES, S_IOERR, S_OK,
                                      S_UNSUPP, T_DISCARD, T_FLUSH, T_GET_ID, T_IN, T_OUT, T_WRITE_ZEROES,
                                      BlkOptions, VirtioBlk)
from kvmpy.devices.virtio.device import VirtioContext, bit
from kvmpy.devices.virtio.queue import SplitQueue
from kvmpy.memory.guest_memory import GuestMemory
from tests.block.conftest import assert_clean, needs_qemu_img, qemu_img, qemu_raw
from tests.loader.loader_helpers import guest_memory

from .driver import DriverQueue

MiB = 1 << 20
RAM = 32 * MiB
RING = 0x1000
HDR = 0x20000       # request headers
STATUS = 0x30000    # status bytes
TABLES = 0x40000    # indirect tables
DATA = 1 * MiB      # data buffers from here
DISK = 8 * MiB


@pytest.fixture(scope="module")
def machine() -> GuestMemory:
    return guest_memory(RAM)


@pytest.fixture
def mem(machine: GuestMemory) -> GuestMemory:
    machine.fill(0, RAM)
    return machine


class Guest:
    """The driver side: one request queue, requests laid out as Linux's virtio_blk lays them out."""

    def __init__(self, mem: GuestMemory, dev: VirtioBlk, features: int | None = None, size: int = 128) -> None:
        self.mem, self.dev = mem, dev
        self.drv = DriverQueue(mem, RING, size, event_idx=True)
        self.queue = self.drv.attach(SplitQueue(mem, 256), indirect=True)
        self.irqs: list[int] = []
        self.config_changes = 0
        self.resets: list[str] = []
        ctx = VirtioContext(features=dev.device_features() if features is None else features, queues=[self.queue],
                            interrupt=self.irqs.append, config_changed=self._config_changed,
                            needs_reset=self.resets.append)
        dev.activate(ctx)
        self.slot = 0

    def _config_changed(self) -> None:
        self.config_changes += 1

    def submit(self, rtype: int, sector: int, out: list[bytes] = (), in_lens: list[int] = (),
               *, status_len: int = 1, header: bytes | None = None, kick: bool = True) -> int:
        """Lay out one request (indirect, like Linux for multi-buffer requests) and kick; returns its head."""
        slot = self.slot
        self.slot = (self.slot + 1) % 16
        hdr_at = HDR + 64 * slot
        self.mem.write(hdr_at, struct.pack("<IIQ", rtype, 0, sector) if header is None else header)
        bufs_out = [(hdr_at, 16 if header is None else len(header))]
        pos = DATA + slot * MiB
        self.in_bufs: list[tuple[int, int]] = []
        for chunk in out:
            self.mem.write(pos, chunk)
            bufs_out.append((pos, len(chunk)))
            pos += (len(chunk) + 4095) // 4096 * 4096
        for n in in_lens:
            self.mem.fill(pos, n, 0xEE)
            self.in_bufs.append((pos, n))
            pos += (n + 4095) // 4096 * 4096
        self.status_at = STATUS + 64 * slot
        self.mem.fill(self.status_at, status_len, 0x77)
        bufs_in = self.in_bufs + ([(self.status_at, status_len)] if status_len else [])
        head = self.drv.add(bufs_out, bufs_in, indirect_at=TABLES + 4096 * slot)
        if kick:
            self.dev.queue_notify(0)
        return head

    def status(self) -> int:
        return self.mem.read(self.status_at, 1)[0]

    def data_in(self) -> bytes:
        return b"".join(self.mem.read(a, n) for a, n in self.in_bufs)

    def read(self, sector: int, lens: list[int]) -> tuple[int, bytes]:
        self.submit(T_IN, sector, in_lens=lens)
        return self.status(), self.data_in()

    def write(self, sector: int, chunks: list[bytes]) -> int:
        self.submit(T_OUT, sector, out=chunks)
        return self.status()

    def segment(self, rtype: int, sector: int, count: int, flags: int = 0) -> int:
        self.submit(rtype, 0, out=[struct.pack("<QII", sector, count, flags)])
        return self.status()


@pytest.fixture(params=["raw", "qcow2"])
def disk(request, tmp_path: Path, mem):
    path = tmp_path / f"disk.{request.param}"
    qemu_img("create", "-f", request.param, path, str(DISK))
    drive = open_drive(path, request.param, id="d0")
    dev = VirtioBlk(drive, mem, BlkOptions(serial="KVMPY-SERIAL-0001"))
    yield dev, path, request.param
    drive.close()


@needs_qemu_img
def test_write_then_read_back_across_buffers_and_qemu_agrees(disk, mem, tmp_path: Path) -> None:
    dev, path, fmt = disk
    g = Guest(mem, dev)
    rnd = random.Random(7)
    data = [rnd.randbytes(4096), rnd.randbytes(512), rnd.randbytes(65536 + 512)]
    assert g.write(24, data) == S_OK
    status, back = g.read(24, [512, 8192, 4096, 57856])
    assert status == S_OK and back == b"".join(data)
    used = g.drv.get_used()
    assert [n for _h, n in used] == [1, 8192 + 4096 + 57856 + 512 + 1]  # QEMU pushes the whole in-length
    assert g.irqs  # the driver was told
    assert g.write(DISK // 512 - 1, [b"\xab" * 512]) == S_OK  # the very last sector
    assert g.submit(T_FLUSH, 0) is not None and g.status() == S_OK
    dev.drive.close()
    whole = qemu_raw(path, tmp_path)
    assert whole[24 * 512:24 * 512 + len(b"".join(data))] == b"".join(data)
    assert whole[-512:] == b"\xab" * 512
    if fmt == "qcow2":
        assert_clean(path)
    st = dev.drive.stats
    assert (st.wr_operations, st.wr_bytes, st.rd_operations, st.rd_bytes, st.flush_operations) == \
        (2, len(b"".join(data)) + 512, 1, len(back), 1)


@needs_qemu_img
def test_reads_data_qemu_wrote_through_a_backing_chain(tmp_path: Path, mem) -> None:
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", base, "4M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", str(base)], check=True,
                   capture_output=True)
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xc3 64k 4k", str(top)], check=True,
                   capture_output=True)
    before = base.read_bytes()
    drive = open_drive(top, id="d0")
    g = Guest(mem, VirtioBlk(drive, mem))
    status, back = g.read(0, [128 * 1024])
    assert status == S_OK
    assert back[:65536] == b"\x5a" * 65536 and back[65536:69632] == b"\xc3" * 4096
    assert g.write(1, [b"\x11" * 1024]) == S_OK
    drive.close()
    assert base.read_bytes() == before  # the backing file is never written
    assert qemu_raw(top, tmp_path)[512:1536] == b"\x11" * 1024
    assert_clean(top)


@needs_qemu_img
def test_get_id_serial(disk, mem) -> None:
    dev, _path, _fmt = disk
    g = Guest(mem, dev)
    g.submit(T_GET_ID, 0, in_lens=[20])
    assert g.status() == S_OK and g.data_in() == b"KVMPY-SERIAL-0001\0" + b"\xee" * 2
    g.submit(T_GET_ID, 0, in_lens=[8])  # a short buffer gets what fits
    assert g.status() == S_OK and g.data_in() == b"KVMPY-SE"


@needs_qemu_img
def test_discard_and_write_zeroes(tmp_path: Path, mem) -> None:
    path = tmp_path / "d.qcow2"
    qemu_img("create", "-f", "qcow2", path, str(DISK))
    drive = open_drive(path, id="d0", discard="unmap")
    g = Guest(mem, VirtioBlk(drive, mem))
    assert g.write(0, [b"\xff" * (256 * 1024)]) == S_OK
    assert g.segment(T_WRITE_ZEROES, 8, 8) == S_OK
    assert g.segment(T_WRITE_ZEROES, 128, 128, flags=1) == S_OK   # UNMAP
    assert g.segment(T_DISCARD, 384, 64) == S_OK
    assert g.segment(T_WRITE_ZEROES, 0, 8, flags=2) == S_UNSUPP    # unknown flag
    assert g.segment(T_DISCARD, 0, 8, flags=1) == S_UNSUPP         # UNMAP on a discard
    g.submit(T_DISCARD, 0, out=[struct.pack("<QII", 0, 8, 0) * 2])  # two segments: QEMU takes one
    assert g.status() == S_UNSUPP
    assert g.segment(T_WRITE_ZEROES, DISK // 512 - 4, 8) == S_IOERR   # past the end
    assert g.segment(T_DISCARD, 0, 0x400000) == S_IOERR              # beyond max_discard_sectors
    status, back = g.read(0, [256 * 1024])
    assert status == S_OK
    assert back[:4096] == b"\xff" * 4096 and back[4096:8192] == bytes(4096)
    assert back[65536:131072] == bytes(65536) and back[8192:65536] == b"\xff" * (65536 - 8192)
    st = drive.stats
    assert st.unmap_operations == 1 and st.unmap_bytes == 64 * 512
    assert st.invalid_wr_operations == 1 and st.invalid_unmap_operations == 1
    drive.close()
    assert_clean(path)
    assert qemu_raw(path, tmp_path)[:256 * 1024] == back


@needs_qemu_img
def test_read_only_disk(tmp_path: Path, mem) -> None:
    path = tmp_path / "ro.raw"
    path.write_bytes(b"\x42" * DISK)
    drive = open_drive(path, "raw", id="d0", readonly=True)
    dev = VirtioBlk(drive, mem)
    assert dev.device_features() & bit(F_RO)
    g = Guest(mem, dev)
    assert g.write(0, [b"\x00" * 4096]) == S_IOERR
    assert g.segment(T_WRITE_ZEROES, 0, 8) == S_IOERR
    assert g.segment(T_DISCARD, 0, 8) == S_IOERR
    status, back = g.read(0, [4096])
    assert status == S_OK and back == b"\x42" * 4096
    assert drive.stats.failed_wr_operations == 2 and drive.stats.failed_unmap_operations == 1
    drive.close()
    assert path.read_bytes() == b"\x42" * DISK


@needs_qemu_img
def test_out_of_range_and_misaligned_requests_fail_alone(disk, mem) -> None:
    dev, _path, _fmt = disk
    g = Guest(mem, dev)
    last = DISK // 512
    assert g.read(last, [512])[0] == S_IOERR
    assert g.read(last - 1, [1024])[0] == S_IOERR
    assert g.read((1 << 64) - 1, [512])[0] == S_IOERR        # sector*512 would wrap a u64
    assert g.read((1 << 55), [512])[0] == S_IOERR
    assert g.read(0, [500])[0] == S_IOERR                     # not whole sectors
    assert g.write(0, [b"x" * 100]) == S_IOERR
    assert g.read(last - 1, [512])[0] == S_OK
    assert dev.drive.stats.invalid_rd_operations == 5 and dev.drive.stats.invalid_wr_operations == 1
    g.submit(99, 0, in_lens=[512])
    assert g.status() == S_UNSUPP
    assert not g.resets


@needs_qemu_img
def test_hostile_headers(disk, mem) -> None:
    dev, _path, _fmt = disk
    g = Guest(mem, dev)
    # a header split over two descriptors is fine (ANY_LAYOUT)
    g.mem.write(HDR + 2048, struct.pack("<IIQ", T_OUT, 0, 2))
    g.mem.write(DATA, b"\x99" * 512)
    g.drv.add([(HDR + 2048, 5), (HDR + 2053, 11), (DATA, 512)], [(STATUS, 1)], indirect_at=TABLES)
    dev.queue_notify(0)
    assert g.mem.read(STATUS, 1) == bytes([S_OK])
    assert g.read(2, [512]) == (S_OK, b"\x99" * 512)
    # the status byte is the last writable byte even inside a longer buffer
    g.submit(T_IN, 2, in_lens=[505], status_len=8)
    assert g.mem.read(g.status_at + 7, 1) == bytes([S_OK])
    assert g.data_in() + g.mem.read(g.status_at, 7) == b"\x99" * 512
    # a header shorter than 16 bytes: the device needs a reset, and nothing is written
    g.submit(T_OUT, 0, header=b"\x01\x00\x00\x00")
    assert g.resets and "outhdr too short" in g.resets[-1]
    g2 = Guest(mem, dev)
    g2.submit(T_IN, 0, in_lens=[], status_len=0)
    assert g2.resets and "inhdr too short" in g2.resets[-1]
    # a chain whose buffer is outside RAM: the queue refuses it, the device asks for a reset
    g3 = Guest(mem, dev)
    g3.mem.write(HDR, struct.pack("<IIQ", T_IN, 0, 0))
    g3.drv.add([(HDR, 16)], [(RAM + 4096, 512), (STATUS, 1)], indirect_at=TABLES)
    dev.queue_notify(0)
    assert g3.resets


@needs_qemu_img
def test_large_request_and_a_chain_naming_one_page_many_times(disk, mem) -> None:
    dev, path, fmt = disk
    g = Guest(mem, dev)
    big = random.Random(3).randbytes(5 * MiB)  # above GATHER_LIMIT: buffer by buffer
    assert g.write(0, [big[:3 * MiB], big[3 * MiB:]]) == S_OK
    assert g.read(0, [2 * MiB, 3 * MiB]) == (S_OK, big)
    assert g.write(2046 * 8, [b"\x3c" * 4096]) == S_OK
    # 2048 descriptors all naming the same 4 KiB page: 8 MiB of data, no 8 MiB buffer needed
    g.mem.write(HDR, struct.pack("<IIQ", T_IN, 0, 0))
    table = TABLES + 16 * 4096
    entries = [(HDR, 16, 0)] + [(DATA, 4096, 2)] * 2047 + [(STATUS, 1, 2)]
    for i, (a, n, f) in enumerate(entries):
        last = i == len(entries) - 1
        g.drv.write_desc(i, a, n, f | (0 if last else 1), 0 if last else i + 1, table=table)
    g.drv.chains[g.drv.free_head] = [g.drv.free_head]
    head = g.drv.free_head
    g.drv.write_desc(head, table, 16 * len(entries), 4, 0)
    g.drv.publish(head)
    dev.queue_notify(0)
    assert g.mem.read(STATUS, 1) == bytes([S_OK])
    assert g.mem.read(DATA, 4096) == b"\x3c" * 4096  # the last copy wins
    assert dev.drive.stats.rd_bytes == len(big) + 2047 * 4096


@needs_qemu_img
def test_config_space_as_qemu(tmp_path: Path, mem) -> None:
    for cache, wce in (("writeback", 1), ("none", 1), ("unsafe", 1), ("writethrough", 0), ("directsync", 0)):
        path = tmp_path / f"{cache}.qcow2"
        qemu_img("create", "-f", "qcow2", path, str(DISK))
        drive = open_drive(path, id="d0", cache=cache)
        dev = VirtioBlk(drive, mem)
        f = dev.device_features()
        assert f & bit(F_FLUSH) and f & bit(F_CONFIG_WCE) and f & bit(F_DISCARD) and f & bit(F_WRITE_ZEROES)
        assert not f & bit(F_RO)
        assert dev.config_read(32, 1) == wce, cache
        assert dev.config_read(0, 8) == DISK // 512
        assert dev.config_read(12, 4) == 254            # seg_max = queue size - 2
        assert dev.config_read(20, 4) == 512            # blk_size
        assert (dev.config_read(16, 2), dev.config_read(18, 1), dev.config_read(19, 1)) == (16, 16, 63)
        assert dev.config_read(34, 2) == 1
        assert dev.config_read(36, 4) == 0x3FFFFF and dev.config_read(40, 4) == 1
        assert dev.config_read(44, 4) == 1 and dev.config_read(48, 4) == 0x3FFFFF
        assert dev.config_read(52, 4) == 1 and dev.config_read(56, 1) == 1
        assert dev.config_read(60, 4) == 0 and dev.config_read(-1, 1) == 0
        # the guest switches the write cache through the writeback byte
        Guest(mem, dev)
        dev.config_write(32, 1, 1 - wce)
        assert dev.config_read(32, 1) == 1 - wce and drive.writeback == bool(1 - wce)
        dev.reset()
        assert dev.config_read(32, 1) == wce
        drive.close()


@needs_qemu_img
def test_multiqueue_and_the_second_queue_serves(tmp_path: Path, mem) -> None:
    path = tmp_path / "mq.raw"
    path.write_bytes(b"\x33" * MiB)
    drive = open_drive(path, "raw", id="d0")
    dev = VirtioBlk(drive, mem, BlkOptions(num_queues=2, queue_size=128))
    assert dev.queue_max_sizes == (128, 128) and dev.device_features() & bit(F_MQ)
    assert dev.config_read(34, 2) == 2 and dev.config_read(12, 4) == 126
    g = Guest(mem, dev)
    q2 = DriverQueue(mem, RING + 0x8000, 64, event_idx=True)
    g.queue.ready = True
    ctx = VirtioContext(features=dev.device_features(), queues=[g.queue, q2.attach(SplitQueue(mem, 128))],
                        interrupt=g.irqs.append, config_changed=lambda: None, needs_reset=g.resets.append)
    dev.activate(ctx)
    mem.write(HDR, struct.pack("<IIQ", T_IN, 0, 1))
    q2.add([(HDR, 16)], [(DATA, 512), (STATUS, 1)])
    dev.queue_notify(1)
    assert mem.read(STATUS, 1) == bytes([S_OK]) and mem.read(DATA, 512) == b"\x33" * 512
    assert g.irqs == [1] and q2.get_used()[0][1] == 513
    dev.queue_notify(7)  # no such queue: ignored
    drive.close()


@needs_qemu_img
def test_writethrough_writes_reach_the_disk_before_completion(tmp_path: Path, mem) -> None:
    path = tmp_path / "wt.raw"
    qemu_img("create", "-f", "raw", path, str(DISK))
    drive = open_drive(path, "raw", id="d0", cache="directsync")
    assert drive.image.direct is not None
    flags = int(Path(f"/proc/self/fdinfo/{drive.image.direct.fd}").read_text().split("flags:")[1].split()[0], 8)
    assert flags & os.O_DIRECT
    g = Guest(mem, VirtioBlk(drive, mem))
    assert g.write(8, [b"\x5e" * 4096]) == S_OK
    with open(path, "rb") as f:
        f.seek(4096)
        assert f.read(4096) == b"\x5e" * 4096
    drive.close()


@needs_qemu_img
def test_resize_raises_a_config_interrupt(disk, mem) -> None:
    dev, _path, _fmt = disk
    g = Guest(mem, dev)
    dev.drive.resize(2 * DISK)
    assert g.config_changes == 1 and dev.config_read(0, 8) == 2 * DISK // 512
    assert g.write(2 * DISK // 512 - 1, [b"z" * 512]) == S_OK


@needs_qemu_img
def test_quiesce_holds_kicks_until_resume(disk, mem) -> None:
    dev, _path, _fmt = disk
    g = Guest(mem, dev)
    dev.quiesce()
    g.submit(T_OUT, 0, out=[b"q" * 512])
    assert g.status() == 0x77 and g.drv.used_idx() == 0
    state = dev.save()
    dev.restore(state)
    dev.resume()
    assert g.status() == S_OK and g.drv.used_idx() == 1


def test_several_disks_at_once(tmp_path: Path, mem) -> None:
    paths = [tmp_path / f"d{i}.raw" for i in range(3)]
    for i, p in enumerate(paths):
        p.write_bytes(bytes([i]) * MiB)
    drives = [open_drive(p, "raw", id=f"d{i}") for i, p in enumerate(paths)]
    devs = [VirtioBlk(d, mem) for d in drives]
    for i, dev in enumerate(devs):
        g = Guest(mem, dev)
        assert g.read(0, [512]) == (S_OK, bytes([i]) * 512)
    for d in drives:
        d.close()


@needs_qemu_img
def test_seeded_fuzz_of_hostile_requests_writes_only_where_allowed(tmp_path: Path, mem) -> None:
    """Random request types, sectors, flags and buffer layouts: the device never raises, answers each chain
    (or asks for a reset), and guest RAM changes only inside the driver's writable buffers and the rings."""
    path = tmp_path / "f.qcow2"
    qemu_img("create", "-f", "qcow2", path, str(DISK))
    drive = open_drive(path, id="d0", discard="unmap")
    dev = VirtioBlk(drive, mem, BlkOptions(serial="FUZZ"))
    rnd = random.Random(1313)
    types = [T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES, 10, 14, 0x80000000, 0xFFFFFFFF, 3]
    sectors = [0, 1, DISK // 512 - 1, DISK // 512, (1 << 64) - 1, 1 << 54, 0x3FFFFF]
    for _ in range(300):
        g = Guest(mem, dev)
        rtype = rnd.choice(types)
        hdr_len = rnd.choice([16, 16, 16, 8, 24])
        hdr = struct.pack("<IIQ", rtype, rnd.getrandbits(32), rnd.choice(sectors))
        hdr += struct.pack("<QII", rnd.choice(sectors), rnd.choice([0, 1, 8, 0x400000]), rnd.choice([0, 1, 2]))
        mem.write(HDR, hdr[:hdr_len])
        outs = [(HDR, hdr_len)] + [(DATA + 0x100000 + i * 0x2000, rnd.choice([0, 1, 512, 4096]))
                                   for i in range(rnd.randint(0, 2))]
        ins = [(DATA + i * 0x3000, rnd.choice([0, 1, 511, 512, 4096])) for i in range(rnd.randint(0, 3))]
        head = g.drv.add(outs, ins, indirect_at=TABLES if rnd.random() < 0.5 else None)
        before = bytearray(mem.read(0, 8 * MiB))
        dev.queue_notify(0)
        used = g.drv.used_idx()
        assert used == 1 or g.resets, (rtype, outs, ins)
        after = mem.read(0, 8 * MiB)
        allowed = [(RING, RING + 0x2000)] + [(a, a + n) for a, n in ins]
        for lo, hi in allowed:
            before[lo:hi] = after[lo:hi]
        assert bytes(before) == after, (rtype, outs, ins)
        if used:
            assert g.drv.get_used()[0][0] == head
    drive.close()
    assert_clean(path)


@needs_qemu_img
@pytest.mark.parametrize("fmt,cache", [("raw", "writeback"), ("raw", "writethrough"), ("raw", "none"),
                                       ("qcow2", "writeback")])
def test_long_scattered_requests_match_a_model_and_dirty_their_pages(tmp_path: Path, mem, fmt, cache) -> None:
    """Requests of many buffers, as Linux sends 1 MiB O_DIRECT I/O (an indirect table of pages, some of them
    neighbours): the queue checks such a table whole and the data moves without a Python object per buffer
    when the image allows (raw without O_DIRECT), through views otherwise. Every way, the disk holds what
    a byte model says (QEMU reads it back), reads fill exactly the buffers, and every page a read wrote
    is marked dirty for migration, no other one."""
    path = tmp_path / f"long.{fmt}"
    qemu_img("create", "-f", fmt, path, str(DISK))
    drive = open_drive(path, fmt, id="d0", cache=cache)
    g = Guest(mem, VirtioBlk(drive, mem))
    ram = mem.address_space.flatview.lookup(0).region.ram
    model = bytearray(DISK)
    rnd = random.Random(hash((fmt, cache)) & 0xFFFF)
    for _ in range(40):
        lens = [rnd.choice([512, 1024, 4096, 4096, 4096, 8192]) for _ in range(rnd.randint(9, 120))]
        while sum(lens) > 700 * 1024:
            lens.pop()
        total = sum(lens)
        sector = rnd.randrange((DISK - total) // 512 + 1)
        if rnd.random() < 0.5:
            data = rnd.randbytes(total)
            chunks, pos = [], 0
            for n in lens:
                chunks.append(data[pos:pos + n])
                pos += n
            assert g.write(sector, chunks) == S_OK
            model[sector * 512:sector * 512 + total] = data
        else:
            g.submit(T_IN, sector, in_lens=lens, kick=False)
            ram.vmm_dirty[:] = bytes(len(ram.vmm_dirty))  # what the driver wrote is not the device's
            g.dev.queue_notify(0)
            assert g.status() == S_OK and g.data_in() == bytes(model[sector * 512:sector * 512 + total])
            dirty = {p for p, d in enumerate(ram.vmm_dirty) if d}
            data_pages = {p for a, n in g.in_bufs for p in range(a >> 12, (a + n - 1 >> 12) + 1)}
            rings = {p for p in range(RING >> 12, (RING + 0x3000 >> 12))}  # the used ring's (size 128)
            assert data_pages <= dirty <= data_pages | rings | {g.status_at >> 12}
        assert g.queue.pop() is None
    drive.close()
    assert qemu_raw(path, tmp_path) == bytes(model)


@needs_qemu_img
def test_long_read_past_the_end_of_a_file_that_shrank_gives_zeros(tmp_path: Path, mem) -> None:
    """A raw image cut short under the drive (someone truncated it): a long read over the cut gets the
    bytes before it and zeros after, as a preadv past the end of a file gives, whichever path moves it."""
    path = tmp_path / "shrinks.raw"
    path.write_bytes(b"\x6b" * DISK)
    drive = open_drive(path, "raw", id="d0")
    g = Guest(mem, VirtioBlk(drive, mem))
    os.truncate(path, DISK - 6 * 4096 - 512)
    status, back = g.read(DISK // 512 - 160, [4096] * 16 + [512] * 32)  # 80 KiB up to the old end
    assert status == S_OK and back == b"\x6b" * (80 * 1024 - 6 * 4096 - 512) + bytes(6 * 4096 + 512)
    drive.close()
