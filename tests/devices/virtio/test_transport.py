"""The rules both virtio transports share: the status handshake and 64-bit ring addresses in halves."""

from __future__ import annotations

from kvmpy.devices.virtio.device import (F_EVENT_IDX, F_VERSION_1, STATUS_ACKNOWLEDGE, STATUS_DRIVER,
                                         STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET, bit)
from kvmpy.devices.virtio.queue import SplitQueue
from kvmpy.devices.virtio.transport import activate_queue, status_write, write_ring_address
from tests.devices.virtio.driver import guest_memory

OFFERED = bit(F_VERSION_1) | bit(F_EVENT_IDX)
BASE = STATUS_ACKNOWLEDGE | STATUS_DRIVER


def test_features_ok_needs_offered_features_and_version_1() -> None:
    ok = status_write("t", BASE, BASE | STATUS_FEATURES_OK, bit(F_VERSION_1), OFFERED)
    assert ok.status & STATUS_FEATURES_OK and ok.features == bit(F_VERSION_1) and not ok.start
    for driver in (0, bit(F_VERSION_1) | bit(3)):  # legacy driver; a feature never offered
        refused = status_write("t", BASE, BASE | STATUS_FEATURES_OK, driver, OFFERED)
        assert not refused.status & STATUS_FEATURES_OK and refused.features is None


def test_driver_ok_starts_only_after_features_ok_and_clearing_it_stops() -> None:
    early = status_write("t", BASE, BASE | STATUS_DRIVER_OK, bit(F_VERSION_1), OFFERED)
    assert not early.status & STATUS_DRIVER_OK and not early.start
    negotiated = BASE | STATUS_FEATURES_OK
    go = status_write("t", negotiated, negotiated | STATUS_DRIVER_OK, bit(F_VERSION_1), OFFERED)
    assert go.start and not go.stop and go.features is None  # features were fixed at FEATURES_OK
    halt = status_write("t", negotiated | STATUS_DRIVER_OK, negotiated, bit(F_VERSION_1), OFFERED)
    assert halt.stop and not halt.start


def test_needs_reset_is_the_devices_to_set_and_stays() -> None:
    broken = BASE | STATUS_FEATURES_OK | STATUS_DRIVER_OK | STATUS_NEEDS_RESET
    assert status_write("t", broken, broken & ~STATUS_NEEDS_RESET, 0, OFFERED).status & STATUS_NEEDS_RESET
    assert not status_write("t", BASE, BASE | STATUS_NEEDS_RESET, 0, OFFERED).status & STATUS_NEEDS_RESET


def test_ring_addresses_are_written_in_halves_and_unfit_rings_are_named() -> None:
    mem, _ram = guest_memory(1 << 20)
    q = SplitQueue(mem, 256)
    addrs = {0x20: "desc_addr", 0x28: "avail_addr"}
    write_ring_address(q, addrs, 0x20, 0x1234_5678_9ABC)  # a register holds 32 bits: the rest is dropped
    write_ring_address(q, addrs, 0x24, 0xFFFF_FFFF_0000_0001)
    assert q.desc_addr == 0x1_5678_9ABC
    write_ring_address(q, addrs, 0x20, 0x10)  # rewriting one half keeps the other
    assert q.desc_addr == 0x1_0000_0010
    write_ring_address(q, addrs, 0x30, 5)  # not a ring register: ignored
    assert q.avail_addr == 0
    q.size = 3
    assert "power of two" in (activate_queue(q, 0) or "")
    q.size = 256
    q.desc_addr, q.avail_addr, q.used_addr = 0x1000, 0x2000, 1 << 30  # the used ring past the 1 MiB of RAM
    assert "not in guest RAM" in (activate_queue(q, 0) or "")
