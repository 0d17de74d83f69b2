"""The virtio-pci modern transport through the real PCI host, bus and BAR mapping, with a real GuestMemory.

The config space is compared with QEMU's virtio-rng-pci,disable-legacy=on (qtest);
the driver side is Linux's virtio_pci_modern init sequence (``pci_driver``).
"""

from __future__ import annotations

import logging
import os
import time

import pytest

from kvmpy.devices.device import DeviceStateError
from kvmpy.devices.virtio import pci as vp
from kvmpy.devices.virtio.device import (F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1, STATUS_ACKNOWLEDGE,
                                         STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET)
from kvmpy.devices.virtio.pci import VirtioPci
from kvmpy.devices.virtio.rng import VirtioRng

from .pci_driver import PciRig, fresh_config_space, plug_virtio, qemu_pc, wait_for, wait_used

OK_STATUS = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK
BUF = 0x200000


@pytest.fixture
def rng():
    rig = PciRig()
    fn, d = plug_virtio(rig, "virtio-rng-pci", VirtioRng())
    yield rig, fn, d
    fn.close()


def test_config_space_matches_qemu_disable_legacy() -> None:
    mine = fresh_config_space("virtio-rng-pci", VirtioRng())
    assert mine[0:4] == bytes.fromhex("f41a4410") and mine[8] == 1 and mine[0x0A:0x0C] == b"\xff\x00"
    with qemu_pc("virtio-rng-pci,disable-legacy=on,vectors=0") as qemu:
        theirs = qemu.config_space(2 << 3)
    assert mine == theirs  # header, BAR4 type, every capability byte, the list order


def test_linux_init_sequence_and_one_request_over_intx(rng) -> None:
    rig, fn, d = rng
    offered = d.device_features()
    assert offered == (1 << F_VERSION_1) | (1 << F_INDIRECT_DESC) | (1 << F_EVENT_IDX)
    assert d.common_read(vp.NUM_QUEUES, 2) == 1
    d.init()
    assert d.status() == OK_STATUS
    q = d.queues[0]
    rig.memory.write(BUF, bytes(4096))
    head = q.add([], [(BUF, 100), (BUF + 1000, 60)])
    d.kick(0)
    assert wait_used(q) == [(head, 160)]
    got = rig.memory.read(BUF, 100) + rig.memory.read(BUF + 1000, 60)
    assert got != bytes(160) and rig.memory.read(BUF + 100, 900) == bytes(900)  # nothing outside the buffers
    assert wait_for(d.intx_level)
    assert d.isr() == vp.ISR_QUEUE
    assert not d.intx_level() and d.isr() == 0  # reading the ISR cleared it and lowered INTA


def test_indirect_and_event_idx_chains(rng) -> None:
    rig, fn, d = rng
    d.init()
    q = d.queues[0]
    heads = [q.add([], [(BUF + 0x1000 * i, 32), (BUF + 0x1000 * i + 64, 32)], indirect_at=0x300000 + 0x100 * i)
             for i in range(3)]
    q.set_used_event(2)  # EVENT_IDX: interrupt only once the used index passes 2
    d.kick(0)
    used = []
    assert wait_for(lambda: len(used.__iadd__(q.get_used())) >= 3)
    assert used == [(h, 64) for h in heads]
    assert wait_for(d.intx_level)


def test_features_ok_is_refused_for_unoffered_bits_or_without_version_1(rng) -> None:
    _, _, d = rng
    offered = d.device_features()
    assert not d.negotiate(offered | (1 << 40)) & STATUS_FEATURES_OK
    assert not d.negotiate(offered & ~(1 << F_VERSION_1)) & STATUS_FEATURES_OK
    d.set_status(d.status() | STATUS_DRIVER_OK)
    assert not d.status() & STATUS_DRIVER_OK  # no DRIVER_OK without FEATURES_OK
    assert d.negotiate(1 << F_VERSION_1) & STATUS_FEATURES_OK
    d.write_features(offered)  # after FEATURES_OK the driver's features are frozen
    d.common_write(vp.GFSELECT, 4, 0)
    assert d.common_read(vp.GF, 4) == 0


def test_queue_registers_are_bounded_and_frozen_once_enabled(rng) -> None:
    _, fn, d = rng
    d.negotiate()
    d.common_write(vp.Q_SELECT, 2, 5)  # no such queue: reads 0, writes ignored
    assert d.common_read(vp.Q_SIZE, 2) == 0
    d.common_write(vp.Q_ENABLE, 2, 1)
    d.common_write(vp.Q_SELECT, 2, 0)
    assert d.common_read(vp.Q_SIZE, 2) == 8 and d.common_read(vp.Q_NOTIFY_OFF, 2) == 0
    d.common_write(vp.Q_MSIX, 2, 0)
    assert d.common_read(vp.Q_MSIX, 2) == vp.NO_VECTOR  # no MSI-X on this function: NO_VECTOR
    dq = d.setup_queue(0, 0x100000)
    d.common_write(vp.Q_DESC_LO, 4, 0x12345000)
    d.common_write(vp.Q_SIZE, 2, 2)
    assert d.common_read(vp.Q_DESC_LO, 4) == dq.desc and d.common_read(vp.Q_SIZE, 2) == 8
    assert d.common_read(vp.Q_ENABLE, 2) == 1
    for off in range(0x38, 0x1000, 0x1C8):  # past the registers: reads 0, writes are ignored
        d.common_write(off, 4, 0xFFFFFFFF)
        assert d.common_read(off, 4) == 0


def test_bad_rings_set_needs_reset_and_a_reset_recovers(rng) -> None:
    rig, fn, d = rng
    d.negotiate()
    d.common_write(vp.Q_SELECT, 2, 0)
    d.common_write(vp.Q_DESC_LO, 4, 0x100008)  # descriptor table not 16-byte aligned
    d.common_write(vp.Q_DRIVER_LO, 4, 0x101000)
    d.common_write(vp.Q_DEVICE_LO, 4, 0x102000)
    d.common_write(vp.Q_ENABLE, 2, 1)
    d.set_status(OK_STATUS)
    assert d.status() & STATUS_NEEDS_RESET
    assert d.common_read(vp.CFG_GENERATION, 1) == 1
    assert wait_for(d.intx_level) and d.isr() == vp.ISR_CONFIG
    d.init()  # status 0 then the whole sequence
    assert d.status() == OK_STATUS
    d.queues[0].add([], [(BUF, 16)])
    d.kick(0)
    assert wait_used(d.queues[0]) == [(0, 16)]


def test_a_bad_chain_at_a_kick_sets_needs_reset_and_the_vmm_lives(rng, caplog) -> None:
    rig, fn, d = rng
    d.init()
    q = d.queues[0]
    q.write_desc(0, 0xFFFF_FFFF_F000, 0x2000, 2, 0)  # a buffer far outside RAM
    q.publish(0)
    with caplog.at_level(logging.WARNING):
        d.kick(0)
        assert wait_for(lambda: d.status() & STATUS_NEEDS_RESET)
    assert d.isr() & vp.ISR_CONFIG
    q.publish(0)
    d.kick(0)  # ignored until the driver resets the device
    time.sleep(0.05)
    assert q.used_idx() == 0
    assert any("needs reset" in r.message for r in caplog.records)


def test_status_zero_resets_everything(rng) -> None:
    rig, fn, d = rng
    d.init()
    d.queues[0].add([], [(BUF, 8)])
    d.kick(0)
    wait_used(d.queues[0])
    assert wait_for(d.intx_level)
    d.set_status(0)
    assert d.status() == 0 and not d.intx_level()
    d.common_write(vp.Q_SELECT, 2, 0)
    assert d.common_read(vp.Q_ENABLE, 2) == 0 and d.common_read(vp.Q_DESC_LO, 4) == 0
    assert d.common_read(vp.Q_SIZE, 2) == 8


def test_pci_cfg_capability_reaches_bar4(rng) -> None:
    rig, fn, d = rng
    cap = d.caps[vp.CAP_PCI_CFG][0]
    dev = d.devfn
    rig.cfg_write(dev, cap + vp.PCI_CFG_BAR, 1, 4)
    rig.cfg_write(dev, cap + vp.PCI_CFG_OFFSET, 4, vp.COMMON_OFF + vp.NUM_QUEUES)
    rig.cfg_write(dev, cap + vp.PCI_CFG_LENGTH, 4, 2)
    assert rig.cfg_read(dev, cap + vp.PCI_CFG_DATA, 2) == 1  # num_queues, read through config space
    rig.cfg_write(dev, cap + vp.PCI_CFG_OFFSET, 4, vp.COMMON_OFF + vp.STATUS_REG)
    rig.cfg_write(dev, cap + vp.PCI_CFG_LENGTH, 4, 1)
    rig.cfg_write(dev, cap + vp.PCI_CFG_DATA, 1, STATUS_ACKNOWLEDGE)
    assert d.status() == STATUS_ACKNOWLEDGE
    rig.cfg_write(dev, cap + vp.PCI_CFG_LENGTH, 4, 3)  # not 1, 2 or 4: no access
    rig.cfg_write(dev, cap + vp.PCI_CFG_DATA, 1, 0)
    assert d.status() == STATUS_ACKNOWLEDGE


def test_bar4_follows_the_bar_register_and_memory_enable(rng) -> None:
    rig, fn, d = rng
    assert fn.mapped_bars() == {4: d.bar4}
    rig.cfg_write(d.devfn, 0x04, 2, 0x0004)  # memory decoding off
    assert fn.mapped_bars() == {} and rig.mmio.read(d.bar4 + vp.NUM_QUEUES, 2) == 0xFFFF
    rig.cfg_write(d.devfn, 0x20, 4, 0xFD000000)
    rig.cfg_write(d.devfn, 0x04, 2, 0x0006)
    assert fn.mapped_bars() == {4: 0xFD000000}
    d.bar4 = 0xFD000000
    assert d.common_read(vp.NUM_QUEUES, 2) == 1


def test_ioeventfds_follow_bar4(rng) -> None:
    rig, _, _ = rng
    calls: list[tuple[int, int, bool]] = []
    fn, d = plug_virtio(rig, "rng2", VirtioRng(), slot=3, bar4=0xFD000000,
                        ioeventfd=lambda fd, addr, on: calls.append((fd, addr, on)) or True)
    assert [(a, on) for _, a, on in calls] == [(0xFD000000 + vp.NOTIFY_OFF, True)]
    rig.cfg_write(d.devfn, 0x20, 4, 0xFC000000)
    assert [(a, on) for _, a, on in calls[1:]] == [(0xFD003000, False), (0xFC003000, True)]
    fn.close()
    assert calls[-1][1:] == (0xFC003000, False)


def test_quiesce_holds_kicks_until_resume(rng) -> None:
    rig, fn, d = rng
    d.init()
    q = d.queues[0]
    fn.quiesce()
    q.add([], [(BUF, 8)])
    d.kick(0)
    time.sleep(0.05)
    assert q.used_idx() == 0
    fn.resume()
    assert wait_used(q) == [(0, 8)]


def migrate(fn: VirtioPci, rig: PciRig) -> tuple[PciRig, VirtioPci]:
    """The state (and RAM) of ``fn`` into a fresh rig's function."""
    fn.quiesce()
    state = fn.save()
    dst = PciRig()
    dst.ram.mv[:] = rig.ram.mv
    fn2 = VirtioPci("virtio-rng-pci", VirtioRng(), dst.memory)
    dst.bus.plug(fn2, 2)
    for f in dst.bus:
        if f is not fn2:
            f.restore(next(g for g in rig.bus if g.devfn == f.devfn).save())
    fn2.quiesce()
    fn2.restore(state)
    fn2.resume()
    return dst, fn2


def test_save_restore_carries_a_running_device(rng) -> None:
    rig, fn, d = rng
    d.init()
    q = d.queues[0]
    for i in range(5):
        q.add([], [(BUF, 8)])
        d.kick(0)
        wait_used(q)
    head = q.add([], [(BUF + 64, 16)])  # queued, kicked, but the source is paused before it runs
    fn.quiesce()
    d.kick(0)
    dst, fn2 = migrate(fn, rig)
    try:
        assert fn2.mapped_bars() == {4: d.bar4} and fn2.status == OK_STATUS
        d.rig, d.fn, q.mem = dst, fn2, dst.memory  # the same driver state, now in the destination's RAM
        assert wait_used(q) == [(head, 16)]  # the kick the source never ran is taken on the destination
        assert dst.memory.read(BUF + 64, 16) != bytes(16)
        q.add([], [(BUF + 128, 8)])
        d.kick(0)
        assert len(wait_used(q)) == 1
    finally:
        fn2.close()


def test_restore_refuses_hostile_state(rng) -> None:
    rig, fn, d = rng
    d.init()
    good = fn.save()
    bad_cases = []
    s = dict(good, common=dict(good["common"], features=1 << 60))
    bad_cases.append(s)
    s = dict(good, common=dict(good["common"], msix_config=3))
    bad_cases.append(s)
    s = dict(good, queues=[])
    bad_cases.append(s)
    s = dict(good, queues=[dict(good["queues"][0], ring=dict(good["queues"][0]["ring"], size=3))])
    bad_cases.append(s)
    s = dict(good, device={"x": 1})
    bad_cases.append(s)
    s = dict(good, pci=dict(good["pci"], config=b"\0" * 256))
    bad_cases.append(s)
    for s in bad_cases:
        with pytest.raises(DeviceStateError):
            fn.restore(s)
    assert d.status() == OK_STATUS  # each refusal left the device as it was
    d.queues[0].add([], [(BUF, 8)])
    d.kick(0)
    assert wait_used(d.queues[0]) == [(0, 8)]


def test_restore_with_rings_outside_ram_marks_needs_reset(rng) -> None:
    rig, fn, d = rng
    d.init()
    state = fn.save()
    ring = dict(state["queues"][0]["ring"], desc_addr=0x7FFF_0000_0000)
    fn.restore(dict(state, queues=[dict(state["queues"][0], ring=ring)]))
    assert fn.status & STATUS_NEEDS_RESET


def test_board_reset_and_close_leave_no_thread(rng) -> None:
    rig, fn, d = rng
    d.init()
    d.queues[0].add([], [(BUF, 8)])
    d.kick(0)
    wait_used(d.queues[0])
    fn.reset()
    assert fn.mapped_bars() == {} and fn.status == 0
    fn.close()
    fn.close()
    assert not any(t.name == "virtio-rng-pci-io" for t in __import__("threading").enumerate())


def test_device_count_limits() -> None:
    class Many(VirtioRng):
        @property
        def queue_max_sizes(self):
            return (8,) * (vp.MAX_QUEUES + 1)

    with pytest.raises(ValueError):
        VirtioPci("many", Many(), PciRig().memory)
    assert os.path.exists("/proc/self/fd")


def test_event_idx_kicks_as_linux_decides_them(rng) -> None:
    """Linux kicks only when vring_need_event(avail_event, new, old): the device must keep avail_event current."""
    from kvmpy.devices.virtio.queue import need_event

    rig, fn, d = rng
    d.init()
    q = d.queues[0]
    for i in range(20):  # more requests than the ring holds, one at a time, as virtio-rng makes them
        old = q.avail_idx
        head = q.add([], [(BUF + 64 * i, 64)])
        if need_event(q.avail_event(), q.avail_idx, old):
            d.kick(0)
        assert wait_used(q) == [(head, 64)], f"request {i} was never served (no kick asked for)"
