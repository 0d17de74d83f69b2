"""What virtio-net's in-kernel data plane (vhost-net) needs of the rest of kvmpy, on any host.

The transport hands a queue's kick eventfd over (``own_kick``), so its I/O
thread stops waking for kicks the kernel serves; and migration's dirty
tracking (``KvmSlots``) takes pages from a dirty source beside KVM's own log
(vhost's log of the pages the kernel wrote). The kernel side itself needs
/dev/vhost-net: tests/net/test_vhost.py drives it where it exists.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from kvmpy.devices.virtio.pci import VirtioPci
from kvmpy.devices.virtio.rng import VirtioRng
from kvmpy.kvm import abi
from kvmpy.kvm.system import Kvm
from kvmpy.memory.address_space import AddressSpace
from kvmpy.memory.kvm_slots import KvmSlots
from kvmpy.memory.ramblock import RAMBlock
from kvmpy.memory.region import MemoryRegion

from .pci_driver import PciRig, VirtioPciDriver

BUF = 0x200000
MiB = 1 << 20


def _used_after(q, timeout: float) -> list[tuple[int, int]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        used = q.get_used()
        if used:
            return used
        time.sleep(0.002)
    return []


def test_an_owned_kick_no_longer_reaches_the_device_until_given_back() -> None:
    rig = PciRig()
    fn = VirtioPci("virtio-rng-pci", VirtioRng(), rig.memory)
    rig.bus.plug(fn, 2)
    try:
        d = VirtioPciDriver(rig, fn)
        d.init()
        q = d.queues[0]
        assert _used_after(q, 0.2) == []  # let the I/O thread finish whatever it saw during init
        fn.own_kick(0, True)  # as vhost takes it: the kernel, not the I/O thread, reads this eventfd now
        q.add([], [(BUF, 8)])
        d.kick(0)
        assert _used_after(q, 0.2) == []  # nobody in kvmpy looked at the queue
        fn.own_kick(0, False)  # given back: the queue is looked at once, without a new kick
        assert _used_after(q, 5) == [(0, 8)]
        q.add([], [(BUF, 8)])
        d.kick(0)  # and kicks reach the device again
        assert len(_used_after(q, 5)) == 1
        fn.own_kick(0, True)
        d.set_status(0)  # a reset gives every kick back
        d.init()
        q = d.queues[0]
        q.add([], [(BUF, 8)])
        d.kick(0)
        assert len(_used_after(q, 5)) == 1
    finally:
        fn.close()


class FrameLog:
    """The simplest dirty source: the guest page frames it is told were written (vhost's log, by hand)."""

    def __init__(self) -> None:
        self.on = False
        self.frames: set[int] = set()
        self.calls: list[str] = []

    def log_start(self) -> None:
        self.on = True
        self.calls.append("start")

    def log_sync(self):
        if not self.on:
            return None
        bits = np.zeros(max(self.frames, default=0) + 1, dtype=bool)
        bits[list(self.frames)] = True
        self.frames.clear()
        return bits

    def log_stop(self) -> None:
        self.on = False
        self.calls.append("stop")


@pytest.mark.kvm_host
def test_migrations_dirty_tracking_takes_a_dirty_sources_pages() -> None:
    with Kvm.open() as kvm:
        vm = kvm.create_vm()
        try:
            root = MemoryRegion.container("sys", 1 << 40)
            low, high = RAMBlock.allocate("low", 4 * MiB), RAMBlock.allocate("high", 2 * MiB)
            root.add_subregion(0, MemoryRegion.ram_region("low", low))
            root.add_subregion(1 << 32, MemoryRegion.ram_region("high", high))
            space = AddressSpace("sys", root)
            slots = KvmSlots(vm, kvm.check_extension(abi.CAP_NR_MEMSLOTS))
            space.add_listener(slots)
            space.commit()
            src = FrameLog()
            slots.add_dirty_source(src)
            assert src.calls == []  # logging is off: nothing asked of it
            slots.set_dirty_logging(True)
            assert src.calls == ["start"]
            src.frames |= {3, (1 << 32 >> 12) + 5}
            got = slots.collect([low, high])
            assert np.flatnonzero(got[low]).tolist() == [3] and np.flatnonzero(got[high]).tolist() == [5]
            assert not slots.collect([low, high])[low].any()  # fetched and cleared
            src.frames.add(7)
            slots.set_dirty_logging(False)  # its last pages are kept for the final collect
            assert src.calls == ["start", "stop"]
            assert np.flatnonzero(slots.collect([low, high])[low]).tolist() == [7]
            late = FrameLog()
            slots.set_dirty_logging(True)
            slots.add_dirty_source(late)  # a source added while logging is on starts at once
            assert late.calls == ["start"]
            slots.remove_dirty_source(late)
            assert late.calls == ["start", "stop"]
            slots.set_dirty_logging(False)
        finally:
            vm.close()
