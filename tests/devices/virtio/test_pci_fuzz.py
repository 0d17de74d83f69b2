"""Hypothesis drives hostile register traffic at a virtio-pci function: BAR4 (common, ISR, device, notify)
and its config space, in any order, size and value, with the I/O thread taking the kicks.

Invariants: no access raises or logs an unexpected failure (only NEEDS_RESET warnings), every read fits
its size, the status never shows DRIVER_OK without FEATURES_OK, and afterwards a driver that resets the
device brings it up and gets a request served.
"""

from __future__ import annotations

import logging
import time

from hypothesis import HealthCheck, given, settings, strategies as st

from kvmpy.devices.virtio import pci as vp
from kvmpy.devices.virtio.device import STATUS_DRIVER_OK, STATUS_FEATURES_OK
from kvmpy.devices.virtio.pci import VirtioPci
from kvmpy.devices.virtio.rng import VirtioRng

from .pci_driver import BAR4_ADDR, PciRig, VirtioPciDriver

COMMON_REGS = sorted({vp.DFSELECT, vp.DF, vp.GFSELECT, vp.GF, vp.MSIX_CONFIG, vp.NUM_QUEUES, vp.STATUS_REG,
                      vp.CFG_GENERATION, vp.Q_SELECT, vp.Q_SIZE, vp.Q_MSIX, vp.Q_ENABLE, vp.Q_NOTIFY_OFF,
                      vp.Q_DESC_LO, vp.Q_DESC_HI, vp.Q_DRIVER_LO, vp.Q_DRIVER_HI, vp.Q_DEVICE_LO, vp.Q_DEVICE_HI})
RAM_ADDRS = st.sampled_from([0, 0x1000, 0x100000, 0x100008, 0xFFF000, 0x1000000, 0xFFFFFFF0, 1 << 40])

bar_offsets = st.one_of(st.sampled_from(COMMON_REGS), st.integers(0, vp.MODERN_BAR_SIZE - 1),
                        st.sampled_from([vp.ISR_OFF, vp.DEVICE_OFF, vp.NOTIFY_OFF, vp.NOTIFY_OFF + 4]))
values = st.one_of(st.integers(0, 0xFF), st.sampled_from([0, 1, 0xF, 0xB, 0xFFFF, 0xFFFFFFFF]),
                   st.integers(0, (1 << 64) - 1), RAM_ADDRS)
sizes = st.sampled_from([1, 2, 4, 8, 3])
KEEP = {0x04, 0x05, *range(0x20, 0x28)}  # the command register and BAR4
ops = st.lists(st.one_of(
    st.tuples(st.just("bar_w"), bar_offsets, sizes, values),
    st.tuples(st.just("bar_r"), bar_offsets, sizes, st.just(0)),
    st.tuples(st.just("cfg_w"), st.integers(0, 255), st.sampled_from([1, 2, 4]), values),
    st.tuples(st.just("cfg_r"), st.integers(0, 255), st.sampled_from([1, 2, 4]), st.just(0)),
    st.tuples(st.just("ram"), RAM_ADDRS.filter(lambda a: a < (16 << 20) - 64), st.just(16), values),
), max_size=60)


class Failures(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_hostile_register_traffic(seq) -> None:
    rig = PciRig()
    fn = VirtioPci("virtio-rng-pci", VirtioRng(), rig.memory)
    rig.bus.plug(fn, 2)
    failures = Failures()
    logging.getLogger("kvmpy").addHandler(failures)
    try:
        d = VirtioPciDriver(rig, fn)
        d.init()  # start from a running device, then let the fuzz loose on it
        for kind, off, size, value in seq:
            value &= (1 << (8 * min(size, 8))) - 1
            if kind == "bar_w":
                rig.mmio.write(BAR4_ADDR + off, size, value)
            elif kind == "bar_r":
                assert 0 <= rig.mmio.read(BAR4_ADDR + off, size) < 1 << (8 * size)
            elif kind == "cfg_w":
                if any(a in KEEP for a in range(off, off + size)):  # BAR4 stays where the driver finds it
                    continue
                rig.cfg_write(d.devfn, off, size, value)
            elif kind == "cfg_r":
                assert 0 <= rig.cfg_read(d.devfn, off, size) < 1 << (8 * size)
            else:
                rig.memory.write(off, value.to_bytes(16, "little"))  # the driver scribbles on its rings
            status = fn.status
            assert not (status & STATUS_DRIVER_OK and not status & STATUS_FEATURES_OK)
        time.sleep(0.01)  # let the I/O thread take what was kicked
        d.caps = d.find_caps()
        d.init()
        q = d.queues[0]
        head = q.add([], [(0x200000, 32)])
        d.kick(0)
        deadline = time.monotonic() + 2
        used: list = []
        while not used and time.monotonic() < deadline:
            used = q.get_used()
            time.sleep(0.001)
        assert used == [(head, 32)]
        assert failures.records == [], [r.getMessage() for r in failures.records]
    finally:
        logging.getLogger("kvmpy").removeHandler(failures)
        fn.close()
