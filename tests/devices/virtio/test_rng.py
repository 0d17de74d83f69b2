"""virtio-rng on a real split queue in real guest memory: fills, bounds, odd chains, bad chains."""

from __future__ import annotations

import pytest

from kvmpy.devices.virtio.device import DeviceType, VirtioContext
from kvmpy.devices.virtio.queue import SplitQueue, VirtQueueError
from kvmpy.devices.virtio.rng import MAX_REQUEST, QUEUE_SIZE, VirtioRng

from .driver import DriverQueue
from .pci_driver import PciRig

BUF = 0x200000


def started(max_request: int = MAX_REQUEST, entropy=None):
    rig = PciRig()
    dev = VirtioRng(max_request, **({} if entropy is None else {"entropy": entropy}))
    q = SplitQueue(rig.memory, dev.queue_max_sizes[0])
    dq = DriverQueue(rig.memory, 0x100000, QUEUE_SIZE)
    dq.attach(q)
    irqs: list[int] = []
    resets: list[str] = []
    dev.activate(VirtioContext(0, [q], irqs.append, lambda: None, resets.append))
    return rig, dev, dq, irqs


def test_identity() -> None:
    dev = VirtioRng()
    assert dev.device_type is DeviceType.RNG and dev.pci_class == 0x00FF
    assert dev.queue_max_sizes == (8,) and dev.device_features() == 0 and dev.config_read(0, 4) == 0
    with pytest.raises(ValueError):
        VirtioRng(0)


def test_fills_every_writable_buffer_and_nothing_else() -> None:
    rig, dev, dq, irqs = started(entropy=lambda n: bytes(range(1, 256)) * (n // 255) + bytes(range(1, n % 255 + 1)))
    rig.memory.write(BUF, b"\xee" * 0x3000)
    h1 = dq.add([], [(BUF, 10), (BUF + 0x1000, 20)])
    h2 = dq.add([(BUF + 0x2000, 8)], [(BUF + 0x2100, 5)])  # a readable part is just skipped
    dev.queue_notify(0)
    assert dq.get_used() == [(h1, 30), (h2, 5)]
    assert rig.memory.read(BUF, 11) == bytes(range(1, 11)) + b"\xee"
    assert rig.memory.read(BUF + 0x1000, 21) == bytes(range(11, 31)) + b"\xee"
    assert rig.memory.read(BUF + 0x2000, 8) == b"\xee" * 8
    assert irqs == [0] and dev.bytes_given == 35


def test_each_request_is_bounded() -> None:
    rig, dev, dq, _ = started(max_request=100)
    h = dq.add([], [(BUF, 4096)])
    dev.queue_notify(0)
    assert dq.get_used() == [(h, 100)]


def test_chain_without_writable_buffers_completes_empty() -> None:
    rig, dev, dq, irqs = started()
    h = dq.add([(BUF, 16)], [])
    dev.queue_notify(0)
    assert dq.get_used() == [(h, 0)] and irqs == [0]


def test_bad_chain_raises_for_the_transport() -> None:
    rig, dev, dq, irqs = started()
    dq.write_desc(0, BUF, 16, 1, 200)  # NEXT to a descriptor outside the table
    dq.publish(0)
    with pytest.raises(VirtQueueError):
        dev.queue_notify(0)


def test_reset_forgets_the_queue_and_state_is_empty() -> None:
    rig, dev, dq, irqs = started()
    dev.reset()
    dq.add([], [(BUF, 8)])
    dev.queue_notify(0)  # not activated: nothing happens
    assert dq.get_used() == [] and dev.save() == {}
    dev.validate({})
    with pytest.raises(ValueError):
        dev.validate({"bytes": 1})
