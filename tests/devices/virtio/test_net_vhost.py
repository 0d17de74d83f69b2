"""What virtio-net's in-kernel data plane (vhost-net) needs of the rest of kvmpy, on any host.

The transport hands a queue's kick eventfd over (``own_kick``), so its I/O
thread stops waking for kicks the kernel serves; and migration's dirty
tracking (``KvmSlots``) takes pages from a dirty source beside KVM's own log
(vhost's log of the pages the kernel wrote). The kernel side itself needs
/dev/vhost-net: tests/net/test_vhost.py drives it where it exists.
"""

from __future__ import annotations

import time

from kvmpy.devices.virtio.pci import VirtioPci
from kvmpy.devices.virtio.rng import VirtioRng

from .pci_driver import PciRig, VirtioPciDriver

BUF = 0x200000


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
