"""The virtio-mmio transport, register by register, with real devices (rng, blk) over real guest memory.

A driver written here brings devices up as Linux's virtio_mmio.c and U-Boot's
virtio_mmio.c do; a hostile one writes what a broken or malicious guest could:
every mistake ends in an ignored access, a refused status bit or NEEDS_RESET,
never in an exception out of ``read``/``write``.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kvmpy.block.drive import open_drive
from kvmpy.devices.virtio import mmio as m
from kvmpy.devices.virtio.blk import BlkOptions, VirtioBlk
from kvmpy.devices.virtio.device import (F_VERSION_1, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK,
                                         STATUS_FEATURES_OK, STATUS_NEEDS_RESET)
from kvmpy.devices.virtio.rng import VirtioRng

from .driver import DriverQueue, guest_memory

RAM = 4 << 20
RING = 0x100000
BUF = 0x200000
ALL_OK = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK


class Rig:
    """A transport, its interrupt line as a list of levels, and the guest memory behind it."""

    def __init__(self, device=None) -> None:
        self.mem, _ = guest_memory(RAM)
        self.levels: list[bool] = []
        self.after = 0
        self.t = m.VirtioMmio("virtio-mmio@10008000", self.levels.append, device,
                              self.mem if device is not None else None, after_io=self._after)

    def _after(self) -> None:
        self.after += 1

    def r(self, off: int, size: int = 4) -> int:
        return self.t.read(off, size)

    def w(self, off: int, value: int, size: int = 4) -> None:
        self.t.write(off, size, value)

    @property
    def line(self) -> bool:
        return bool(self.levels) and self.levels[-1]

    def negotiate(self, features: int | None = None) -> int:
        self.w(m.STATUS, 0)
        self.w(m.STATUS, STATUS_ACKNOWLEDGE)
        self.w(m.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER)
        offered = 0
        for sel in (0, 1):
            self.w(m.DEVICE_FEATURES_SEL, sel)
            offered |= self.r(m.DEVICE_FEATURES) << (32 * sel)
        want = offered if features is None else features
        for sel in (0, 1):
            self.w(m.DRIVER_FEATURES_SEL, sel)
            self.w(m.DRIVER_FEATURES, (want >> (32 * sel)) & 0xFFFFFFFF)
        self.w(m.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
        return self.r(m.STATUS)

    def setup_queue(self, index: int, dq: DriverQueue, size: int | None = None) -> None:
        self.w(m.QUEUE_SEL, index)
        self.w(m.QUEUE_NUM, dq.size if size is None else size)
        for lo, addr in ((m.QUEUE_DESC_LOW, dq.desc), (m.QUEUE_DRIVER_LOW, dq.avail), (m.QUEUE_DEVICE_LOW, dq.used)):
            self.w(lo, addr & 0xFFFFFFFF)
            self.w(lo + 4, addr >> 32)
        self.w(m.QUEUE_READY, 1)

    def start(self, qsize: int = 8) -> DriverQueue:
        assert self.negotiate() & STATUS_FEATURES_OK
        dq = DriverQueue(self.mem, RING, qsize)
        self.setup_queue(0, dq)
        self.w(m.STATUS, ALL_OK)
        assert self.r(m.STATUS) == ALL_OK
        return dq


def test_identity_registers_as_qemu_gives_them() -> None:
    rig = Rig(VirtioRng())
    assert (rig.r(m.MAGIC_VALUE), rig.r(m.VERSION_REG), rig.r(m.DEVICE_ID), rig.r(m.VENDOR_ID)) == \
        (0x74726976, 2, 4, 0x554D4551)
    rig.w(m.DEVICE_FEATURES_SEL, 1)
    assert rig.r(m.DEVICE_FEATURES) & 1  # VERSION_1 (bit 32)
    rig.w(m.DEVICE_FEATURES_SEL, 2)
    assert rig.r(m.DEVICE_FEATURES) == 0
    rig.w(m.QUEUE_SEL, 0)
    assert rig.r(m.QUEUE_NUM_MAX) == 8 and rig.r(m.QUEUE_READY) == 0
    rig.w(m.QUEUE_SEL, 1)
    assert rig.r(m.QUEUE_NUM_MAX) == 0  # no such queue


def test_an_empty_slot_answers_its_identity_and_ignores_the_rest() -> None:
    rig = Rig()
    assert (rig.r(m.MAGIC_VALUE), rig.r(m.VERSION_REG), rig.r(m.DEVICE_ID), rig.r(m.VENDOR_ID)) == \
        (0x74726976, 2, 0, 0x554D4551)
    for off in range(0, 0x200, 4):
        rig.w(off, 0xFFFFFFFF)
    assert rig.r(m.STATUS) == 0 and rig.r(m.QUEUE_NUM_MAX) == 0 and rig.r(0x100) == 0
    assert rig.levels == []


def test_rng_request_through_the_registers_raises_and_acks_the_line() -> None:
    rig = Rig(VirtioRng(entropy=lambda n: b"\x5a" * n))
    dq = rig.start()
    assert rig.r(m.QUEUE_READY) == 1
    head = dq.add([], [(BUF, 64)])
    rig.w(m.QUEUE_NOTIFY, 0)
    assert dq.get_used() == [(head, 64)] and rig.mem.read(BUF, 64) == b"\x5a" * 64
    assert rig.r(m.INTERRUPT_STATUS) == m.INT_VRING and rig.line
    assert rig.after == 2  # after the look at DRIVER_OK and after the notify
    rig.w(m.INTERRUPT_ACK, m.INT_VRING)
    assert rig.r(m.INTERRUPT_STATUS) == 0 and not rig.line
    rig.w(m.STATUS, 0)  # reset: everything back to power-on
    assert rig.r(m.STATUS) == 0 and rig.r(m.QUEUE_READY) == 0 and not rig.line


def test_buffers_queued_before_driver_ok_are_served_at_driver_ok() -> None:
    rig = Rig(VirtioRng(entropy=lambda n: b"\x01" * n))
    rig.negotiate()
    dq = DriverQueue(rig.mem, RING, 8)
    rig.setup_queue(0, dq)
    head = dq.add([], [(BUF, 8)])
    rig.w(m.STATUS, ALL_OK)
    assert dq.get_used() == [(head, 8)]


def test_features_not_offered_or_without_version_1_are_refused() -> None:
    rig = Rig(VirtioRng())
    assert not rig.negotiate(1 << 40 | 1 << F_VERSION_1) & STATUS_FEATURES_OK
    assert not rig.negotiate(0) & STATUS_FEATURES_OK
    rig.w(m.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK)  # DRIVER_OK without FEATURES_OK
    assert not rig.r(m.STATUS) & STATUS_DRIVER_OK


@pytest.mark.parametrize("size", [0, 3, 16, 0xFFFF])
def test_bad_queue_size_sets_needs_reset(size: int) -> None:
    rig = Rig(VirtioRng())
    rig.negotiate()
    rig.setup_queue(0, DriverQueue(rig.mem, RING, 8), size=size)
    rig.w(m.STATUS, ALL_OK)
    assert rig.r(m.STATUS) & STATUS_NEEDS_RESET
    assert rig.r(m.INTERRUPT_STATUS) & m.INT_CONFIG and rig.line and rig.r(m.CONFIG_GENERATION) == 1
    rig.w(m.QUEUE_NOTIFY, 0)  # a kick to a broken device is dropped
    rig.w(m.STATUS, 0)
    assert rig.r(m.STATUS) == 0 and not rig.line


@pytest.mark.parametrize("desc,avail,used", [
    (RAM + 0x1000, RING + 0x100, RING + 0x200),          # descriptor table past the end of RAM
    (RING, RING + 0x100, (1 << 64) - 8),                  # used ring wrapping the address space
    (RING + 8, RING + 0x100, RING + 0x200),               # misaligned table
    (0x10000000000, RING + 0x100, RING + 0x200),          # far outside RAM
])
def test_rings_outside_ram_set_needs_reset(desc: int, avail: int, used: int) -> None:
    rig = Rig(VirtioRng())
    rig.negotiate()
    rig.w(m.QUEUE_SEL, 0)
    rig.w(m.QUEUE_NUM, 8)
    for lo, addr in ((m.QUEUE_DESC_LOW, desc), (m.QUEUE_DRIVER_LOW, avail), (m.QUEUE_DEVICE_LOW, used)):
        rig.w(lo, addr & 0xFFFFFFFF)
        rig.w(lo + 4, addr >> 32)
    rig.w(m.QUEUE_READY, 1)
    rig.w(m.STATUS, ALL_OK)
    assert rig.r(m.STATUS) & STATUS_NEEDS_RESET and rig.line


def test_notify_before_ready_or_of_a_missing_queue_does_nothing() -> None:
    rig = Rig(VirtioRng())
    rig.negotiate()
    dq = DriverQueue(rig.mem, RING, 8)
    dq.add([], [(BUF, 8)])
    for q in (0, 1, 0xFFFF, 0xFFFFFFFF):
        rig.w(m.QUEUE_NOTIFY, q)
    assert dq.used_idx() == 0 and not rig.line and not rig.r(m.STATUS) & STATUS_NEEDS_RESET


def test_queue_registers_are_frozen_while_ready() -> None:
    rig = Rig(VirtioRng(entropy=lambda n: b"\x02" * n))
    dq = rig.start()
    rig.w(m.QUEUE_NUM, 2)
    rig.w(m.QUEUE_DESC_LOW, 0x12340)
    rig.w(m.QUEUE_READY, 0)  # a running queue is not stopped by QueueReady=0
    assert rig.r(m.QUEUE_READY) == 1
    head = dq.add([], [(BUF, 4)])
    rig.w(m.QUEUE_NOTIFY, 0)
    assert dq.get_used() == [(head, 4)]


def test_a_bad_chain_sets_needs_reset_and_never_raises() -> None:
    rig = Rig(VirtioRng())
    dq = rig.start()
    dq.write_desc(0, RAM + 0x10000, 16, 2, 0)  # a writable buffer outside RAM
    dq.publish(0)
    rig.w(m.QUEUE_NOTIFY, 0)
    assert rig.r(m.STATUS) & STATUS_NEEDS_RESET and rig.r(m.INTERRUPT_STATUS) & m.INT_CONFIG
    dq.set_avail_idx(0x8000)  # the avail index runs far ahead: still no exception
    rig.w(m.QUEUE_NOTIFY, 0)


def test_narrow_register_accesses_are_ignored_config_accesses_are_not(tmp_path: Path) -> None:
    img = tmp_path / "d.raw"
    img.write_bytes(bytes(1 << 20))
    drive = open_drive(img, "raw", id="d0")
    try:
        rig = Rig(VirtioBlk(drive, guest_memory(RAM)[0], BlkOptions()))
        assert rig.r(m.MAGIC_VALUE, 2) == 0 and rig.r(m.MAGIC_VALUE, 1) == 0
        rig.w(m.STATUS, STATUS_ACKNOWLEDGE, size=1)
        assert rig.r(m.STATUS) == 0
        assert rig.r(0x100, 8) == 2048 and rig.r(0x100, 4) == 2048 and rig.r(0x100, 1) == 0  # capacity in sectors
    finally:
        drive.close()


def test_blk_reads_a_sector_through_the_transport(tmp_path: Path) -> None:
    img = tmp_path / "d.raw"
    data = bytearray(1 << 20)
    data[512 * 5:512 * 6] = bytes(range(256)) * 2
    img.write_bytes(data)
    drive = open_drive(img, "raw", id="d0")
    try:
        rig = Rig.__new__(Rig)
        Rig.__init__(rig)
        rig.t = m.VirtioMmio("blk", rig.levels.append, VirtioBlk(drive, rig.mem, BlkOptions()), rig.mem)
        dq = rig.start(qsize=8)
        rig.mem.write(BUF, struct.pack("<IIQ", 0, 0, 5))  # VIRTIO_BLK_T_IN, sector 5
        head = dq.add([(BUF, 16)], [(BUF + 0x1000, 512), (BUF + 0x2000, 1)])
        rig.w(m.QUEUE_NOTIFY, 0)
        assert dq.get_used() == [(head, 513)]
        assert rig.mem.read(BUF + 0x1000, 512) == bytes(range(256)) * 2 and rig.mem.read(BUF + 0x2000, 1) == b"\0"
        assert rig.line
    finally:
        drive.close()
