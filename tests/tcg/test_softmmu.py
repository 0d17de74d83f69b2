"""The softmmu's sharing between CPUs: one RAM, one set of code pages, a TLB each."""

from __future__ import annotations

import pytest

from kvmpy.devices.bus import Bus
from kvmpy.tcg.softmmu import AccessFaults, SoftMmu

BASE = 0x80000000
FAULTS = AccessFaults(read=5, write=7, fetch=1)


def pair() -> tuple[SoftMmu, SoftMmu]:
    a = SoftMmu(BASE, 1 << 16, Bus("mmio"), FAULTS)
    b = SoftMmu(BASE, 1 << 16, a.bus, FAULTS, ram=a.ram, code_pages=a.code_pages)
    return a, b


def test_cpus_share_ram_and_code_pages_but_not_tlbs():
    a, b = pair()
    a.store(BASE + 8, 8, 0x1122334455667788, 0, 0)
    assert b.load(BASE + 8, 8, False, 0, 0) == 0x1122334455667788
    assert a.tlb_write and not b.tlb_write and b.tlb_read and not a.tlb_read
    written = []
    b.on_code_write = written.append
    a.mark_code_page(BASE >> 12)
    assert BASE >> 12 in b.code_pages and not a.tlb_write       # its write entry onto the page is gone
    b.store(BASE + 16, 4, 1, 0, 0)                              # a store by the other CPU sees code there
    assert written == [BASE >> 12]


def test_drop_write_page_forgets_only_that_page():
    a, _ = pair()
    a.store(BASE, 8, 1, 0, 0)
    a.store(BASE + 0x1000, 8, 1, 0, 0)
    a.drop_write_page(BASE >> 12)
    assert list(a.tlb_write) == [BASE + 0x1000]


def test_shared_ram_must_have_the_size():
    with pytest.raises(ValueError):
        SoftMmu(BASE, 1 << 16, Bus("mmio"), FAULTS, ram=bytearray(4096))
