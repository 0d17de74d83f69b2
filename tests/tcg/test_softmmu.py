"""The softmmu's sharing between CPUs: one RAM, one set of code pages, a TLB each."""

from __future__ import annotations

import pytest

from kvmpy.devices.bus import Bus
from kvmpy.tcg.errors import GuestTrap
from kvmpy.tcg.softmmu import READ, WRITE, AccessFaults, SoftMmu

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


def test_watched_pages_stay_out_of_the_tlb_and_are_checked_before_the_access():
    a, _ = pair()
    seen = []

    def check(vaddr: int, size: int, access: int) -> None:
        seen.append((vaddr, size, access))
        if access == WRITE:
            raise GuestTrap(3, 0)

    a.load(BASE + 0x1000, 8, False, 0, 0)                 # fills the read TLB
    a.set_watchpoints([(BASE + 0xFFC, 8)], check)         # two pages
    assert not a.tlb_read and not a.tlb_write
    assert a.load(BASE + 0x1008, 4, False, 0, 0) == 0
    with pytest.raises(GuestTrap) as exc:
        a.store(BASE, 8, 0x55, 0x1234, 2)
    assert (exc.value.cause, exc.value.pc, exc.value.back) == (3, 0x1234, 2)
    assert a.ram[0] == 0                                  # the store did not land
    with pytest.raises(GuestTrap):
        a.store(BASE + 0xFFF, 2, 0x66, 0, 0)              # misaligned, across the two pages
    assert a.ram[0xFFF] == 0
    assert seen == [(BASE + 0x1008, 4, READ), (BASE, 8, WRITE), (BASE + 0xFFF, 2, WRITE)]
    assert not a.tlb_read and not a.tlb_write
    a.store(BASE + 0x2000, 8, 1, 0, 0)                    # other pages are not watched
    assert list(a.tlb_write) == [BASE + 0x2000] and len(seen) == 3
    a.set_watchpoints([], check)
    a.load(BASE, 8, False, 0, 0)
    assert BASE in a.tlb_read and len(seen) == 3
