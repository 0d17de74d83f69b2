"""vhost-net's pure parts on any host: ioctl numbers, the memory table, ring addresses, queue hand-back.

The data plane itself needs /dev/vhost-net, which the bed's L1 has
(tests/linux/test_virtio_net.py runs a Linux guest with vhost=on there); the
dirty-log test here drives the kernel's worker directly where it exists.
"""

from __future__ import annotations

import os
import struct
import time

import numpy as np
import pytest

from kvmpy.devices.virtio.queue import SplitQueue
from kvmpy.memory.address_space import AddressSpace
from kvmpy.memory.guest_memory import GuestMemory
from kvmpy.memory.ramblock import RAMBlock
from kvmpy.memory.region import MemoryRegion
from kvmpy.net import vhost
from kvmpy.net.tap import TapBackend
from tests.devices.virtio.driver import DriverQueue
from tests.net.netns import NetNs, have_netns


def test_ioctl_numbers_are_the_kernels() -> None:  # from <linux/vhost.h>, as the kernel computes them
    assert vhost.VHOST_GET_FEATURES == 0x8008AF00 and vhost.VHOST_SET_FEATURES == 0x4008AF00
    assert vhost.VHOST_SET_OWNER == 0xAF01 and vhost.VHOST_SET_MEM_TABLE == 0x4008AF03
    assert vhost.VHOST_SET_LOG_BASE == 0x4008AF04
    assert vhost.VHOST_SET_VRING_NUM == 0x4008AF10 and vhost.VHOST_SET_VRING_ADDR == 0x4028AF11
    assert vhost.VHOST_SET_VRING_BASE == 0x4008AF12 and vhost.VHOST_GET_VRING_BASE == 0xC008AF12
    assert vhost.VHOST_SET_VRING_KICK == 0x4008AF20 and vhost.VHOST_SET_VRING_CALL == 0x4008AF21
    assert vhost.VHOST_NET_SET_BACKEND == 0x4008AF30


@pytest.fixture
def space():
    low, high = RAMBlock.allocate("low", 1 << 20), RAMBlock.allocate("high", 1 << 20)
    root = MemoryRegion.container("sys", 1 << 40)
    root.add_subregion(0, MemoryRegion.ram_region("low", low))
    root.add_subregion(0x100000000, MemoryRegion.ram_region("high", high))
    s = AddressSpace("sys", root)
    s.commit()
    return s, low, high


def test_memory_table_lists_every_ram_range(space) -> None:
    s, low, high = space
    table = vhost.memory_table(s.flatview)
    n, _ = struct.unpack_from("II", table)
    regions = [struct.unpack_from("QQQQ", table, 8 + 32 * i) for i in range(n)]
    assert regions == [(0, 1 << 20, low.host_addr, 0), (0x100000000, 1 << 20, high.host_addr, 0)]
    assert vhost.host_address(s.flatview, 0x1000, 16) == low.host_addr + 0x1000
    for gpa, n in ((0xFFFF8, 16), (0x200000, 4)):  # across the end of RAM, and not RAM at all
        with pytest.raises(vhost.VhostError):
            vhost.host_address(s.flatview, gpa, n)


def test_rings_handed_over_and_taken_back(space) -> None:
    s, _, _ = space
    mem = GuestMemory(s)
    drv = DriverQueue(mem, 0x4000, 16)
    q = drv.attach(SplitQueue(mem, 256))
    for i in range(3):
        drv.add([], [(0x8000 + 0x100 * i, 0x100)])
    q.pop()
    ring = vhost.vring_from_queue(1, q, kick_fd=7)
    assert (ring.index, ring.num, ring.desc, ring.avail, ring.used, ring.base, ring.kick_fd, ring.call_fd) == \
        (1, 16, drv.desc, drv.avail, drv.used, 1, 7, None)
    # the kernel took two more and completed three: the queue continues from there
    mem.write(drv.used + 2, struct.pack("<H", 3))
    vhost.sync_queue(q, 3)
    assert (q.next_avail, q.next_used) == (3, 3) and q.pop() is None


def test_open_without_vhost_net_says_so() -> None:
    if os.path.exists(vhost.VHOST_PATH):
        pytest.skip("this host has /dev/vhost-net")
    with pytest.raises(vhost.VhostError, match="modprobe vhost_net"):
        vhost.VhostNet.open()


@pytest.mark.kvm_full  # for the bed's /dev/vhost-net, not for KVM itself
@pytest.mark.skipif(not os.path.exists(vhost.VHOST_PATH) or not have_netns(),
                    reason="needs /dev/vhost-net (the bed's L1 has it), root and ip netns")
def test_the_kernel_logs_the_pages_it_writes_while_logging_is_on(space) -> None:
    """A real vhost-net worker fills RX buffers from a tap; its dirty log names exactly those pages."""
    s, low, _ = space
    mem = GuestMemory(s)
    name = f"kv{os.getpid() % 100000}"
    tap = TapBackend.from_options({"id": "n0", "ifname": name, "script": "no", "downscript": "no", "vhost": "on"})
    ns = NetNs.create()
    v = tap.vhost
    assert v is not None
    try:
        ns.take(name, "10.79.0.1/24", ("10.79.0.2", "52:54:00:12:34:56"))
        sock = ns.socket()
        rxd, txd = DriverQueue(mem, 0x1000, 16, event_idx=True), DriverQueue(mem, 0x3000, 16, event_idx=True)
        rx, tx = rxd.attach(SplitQueue(mem, 256)), txd.attach(SplitQueue(mem, 256))
        bufs = [0x10000 + 0x4000 * i for i in range(8)]
        for b in bufs:
            rxd.add([], [(b, 2048)])
        features = (1 << vhost.F_VERSION_1) | (1 << vhost.F_EVENT_IDX)
        v.start(s, features, [vhost.vring_from_queue(0, rx), vhost.vring_from_queue(1, tx)], tap.fd)

        def deliver(n: int) -> set[int]:
            """Send ``n`` datagrams; the guest pages of the RX buffers the kernel filled (stray frames too)."""
            for _ in range(n):
                sock.sendto(b"x" * 100, ("10.79.0.2", 7001))
            used: list[tuple[int, int]] = []
            deadline = time.monotonic() + 10
            while len(used) < n and time.monotonic() < deadline:
                used += rxd.get_used()
                time.sleep(0.01)
            assert len(used) >= n, "the vhost worker did not fill the RX buffers"
            return {bufs[head] >> 12 for head, _ in used}

        first = deliver(1)  # before logging: recorded nowhere
        assert v.log_sync() is None
        v.log_start(2 << 20)  # switched on while the rings run, as a migration does
        assert v.acked & (1 << vhost.VHOST_F_LOG_ALL)
        written = deliver(2)
        pages = set(np.flatnonzero(v.log_sync()).tolist())
        assert written <= pages and rxd.used >> 12 in pages  # the buffers the kernel wrote, and its used ring
        assert not (first & pages) and bufs[7] >> 12 not in pages  # not what it wrote before, nor what it did not
        assert not v.log_sync().any()  # fetched and cleared
        assert deliver(1) <= set(np.flatnonzero(v.log_sync()).tolist())  # the other half of the double buffer
        v.log_stop()
        assert not v.acked & (1 << vhost.VHOST_F_LOG_ALL) and v.log_sync() is None
        deliver(1)  # the data plane carries on without the log
        assert v.stop()[1] == 0
        sock.close()
    finally:
        tap.close()
        ns.delete()
