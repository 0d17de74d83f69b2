"""Sv39 page walks and PMP checks on real page tables built in guest RAM."""

from __future__ import annotations

import struct

import pytest

from kvmpy.devices.bus import Bus
from kvmpy.tcg.errors import GuestTrap
from kvmpy.tcg.softmmu import EXEC, READ, WRITE, AccessFaults, SoftMmu
from kvmpy.tcg.target.riscv.cpu import MPRV, MXR, SUM, RiscvCpu
from kvmpy.tcg.target.riscv.mmu import (PRV_M, PRV_S, PRV_U, PTE_A, PTE_D, PTE_R, PTE_U, PTE_V, PTE_W,
                                        PTE_X)

RAM = 0x80000000
ROOT, L1, L0 = RAM + 0x10000, RAM + 0x11000, RAM + 0x12000
RWX = PTE_R | PTE_W | PTE_X
SV39 = 8 << 60


class Hart:
    """A hart and its RAM, with helpers to write page-table entries."""

    def __init__(self, open_pmp: bool = True) -> None:
        self.mem = SoftMmu(RAM, 16 << 20, Bus("mmio"), AccessFaults(read=5, write=7, fetch=1))
        self.cpu = RiscvCpu(self.mem)
        self.mem.translate = self.cpu.mmu.translate
        if open_pmp:
            # With PMP implemented, S and U see no memory until M-mode grants it, as on
            # QEMU's virt (OpenSBI does this): one NAPOT entry over everything, RWX.
            self.cpu.csr_write(0x3B0, (1 << 54) - 1)
            self.cpu.csr_write(0x3A0, 0x18 | 7)

    def pte(self, table: int, index: int, target: int, flags: int) -> int:
        addr = table + 8 * index
        self.mem.phys_write(addr, 8, ((target >> 12) << 10) | flags)
        return addr

    def read_pte(self, addr: int) -> int:
        return self.mem.phys_read(addr, 8)

    def paging(self, priv: int = PRV_S, mstatus_bits: int = 0) -> None:
        self.cpu.csr_write(0x180, SV39 | (ROOT >> 12))
        self.cpu.csr_write(0x300, self.cpu.mstatus | mstatus_bits)
        self.cpu.priv = priv

    def translate(self, vaddr: int, access: int) -> int:
        return self.cpu.mmu.translate(vaddr, access)[0]

    def fault(self, vaddr: int, access: int) -> tuple[int, int]:
        with pytest.raises(GuestTrap) as exc:
            self.cpu.mmu.translate(vaddr, access)
        return exc.value.cause, exc.value.tval


def vpn(vaddr: int, level: int) -> int:
    return (vaddr >> (12 + 9 * level)) & 0x1FF


@pytest.fixture
def hart() -> Hart:
    return Hart()


def map_4k(h: Hart, vaddr: int, paddr: int, flags: int) -> int:
    h.pte(ROOT, vpn(vaddr, 2), L1, PTE_V)
    h.pte(L1, vpn(vaddr, 1), L0, PTE_V)
    return h.pte(L0, vpn(vaddr, 0), paddr, flags | PTE_V)


def test_machine_mode_and_bare_satp_are_identity(hart):
    assert hart.translate(0x80001234, READ) == 0x80001234
    hart.cpu.priv = PRV_S                          # satp is Bare: still identity
    assert hart.translate(0x80001234, WRITE) == 0x80001234


def test_without_pmp_entries_s_and_u_modes_see_no_memory():
    h = Hart(open_pmp=False)
    h.cpu.priv = PRV_U
    assert h.fault(RAM, READ) == (5, RAM)
    assert h.fault(RAM, EXEC) == (1, RAM)


def test_4k_walk_sets_accessed_then_dirty(hart):
    va, pa = 0x12345000, RAM + 0x200000
    leaf = map_4k(hart, va, pa, RWX)
    hart.paging()
    assert hart.translate(va + 0xABC, READ) == pa + 0xABC
    assert hart.read_pte(leaf) & (PTE_A | PTE_D) == PTE_A
    assert hart.translate(va + 8, WRITE) == pa + 8
    assert hart.read_pte(leaf) & (PTE_A | PTE_D) == PTE_A | PTE_D


def test_megapage_gigapage_and_misaligned_superpage(hart):
    # A 2 MiB page at level 1 and a 1 GiB page at level 2 keep the low bits of the address.
    hart.pte(ROOT, 0, L1, PTE_V)
    hart.pte(L1, 1, RAM + 0x400000, RWX | PTE_V)             # va 0x200000 -> 2 MiB at RAM+4 MiB
    hart.pte(ROOT, 2, RAM, RWX | PTE_V)                     # va 0x80000000 -> 1 GiB at RAM
    hart.pte(L1, 2, RAM + 0x401000, RWX | PTE_V)             # misaligned megapage
    hart.paging()
    assert hart.translate(0x200000 + 0x12345, READ) == RAM + 0x400000 + 0x12345
    assert hart.translate(0x80000000 + 0x3456789, EXEC) == RAM + 0x3456789
    assert hart.fault(0x400000, READ) == (13, 0x400000)


@pytest.mark.parametrize("access,cause", [(READ, 13), (WRITE, 15), (EXEC, 12)])
def test_invalid_and_reserved_entries_fault_with_the_access_cause(hart, access, cause):
    va = 0x40000000
    leaf = map_4k(hart, va, RAM + 0x300000, 0)
    hart.mem.phys_write(leaf, 8, 0)                          # V=0
    hart.paging()
    assert hart.fault(va + 4, access) == (cause, va + 4)
    map_4k(hart, va, RAM + 0x300000, PTE_W)                  # W without R is reserved
    assert hart.fault(va, access) == (cause, va)


def test_non_canonical_address_faults(hart):
    map_4k(hart, 0x1000, RAM + 0x300000, RWX)
    hart.paging()
    bad = 1 << 39 | 0x1000                                  # bit 39 set, bit 38 clear
    assert hart.fault(bad, READ) == (13, bad)
    assert hart.fault((1 << 64) - 0x1000, EXEC)[0] == 12     # canonical, but unmapped


def test_permission_bits(hart):
    ro, xo = 0x10000000, 0x10001000
    map_4k(hart, ro, RAM + 0x300000, PTE_R)
    map_4k(hart, xo, RAM + 0x301000, PTE_X)
    hart.paging()
    assert hart.translate(ro, READ) == RAM + 0x300000
    assert hart.fault(ro, WRITE) == (15, ro)
    assert hart.fault(ro, EXEC) == (12, ro)
    assert hart.fault(xo, READ) == (13, xo)
    hart.cpu.csr_write(0x300, hart.cpu.mstatus | MXR)       # make executable readable
    assert hart.translate(xo, READ) == RAM + 0x301000


def test_user_pages_and_sum(hart):
    upage, spage = 0x20000000, 0x20001000
    map_4k(hart, upage, RAM + 0x300000, RWX | PTE_U)
    map_4k(hart, spage, RAM + 0x301000, RWX)
    hart.paging(PRV_S)
    assert hart.fault(upage, READ) == (13, upage)            # S touching U memory without SUM
    hart.cpu.csr_write(0x100, SUM)
    assert hart.translate(upage, WRITE) == RAM + 0x300000
    assert hart.fault(upage, EXEC) == (12, upage)            # never executable from S, even with SUM
    hart.cpu.priv = PRV_U
    assert hart.translate(upage, EXEC) == RAM + 0x300000
    assert hart.fault(spage, READ) == (13, spage)


def test_mprv_translates_machine_loads_but_not_fetches(hart):
    va = 0x30000000
    map_4k(hart, va, RAM + 0x300000, RWX)
    hart.paging(PRV_M)
    hart.cpu.csr_write(0x300, (hart.cpu.mstatus & ~(3 << 11)) | (PRV_S << 11) | MPRV)
    assert hart.translate(va, READ) == RAM + 0x300000
    assert hart.fault(va + 0x1000, WRITE) == (15, va + 0x1000)
    assert hart.translate(RAM, EXEC) == RAM                 # fetches stay physical in M-mode


def test_page_table_outside_ram_is_an_access_fault(hart):
    hart.pte(ROOT, 0, 0x10000000, PTE_V)                     # next level points at MMIO space
    hart.paging()
    assert hart.fault(0x1000, READ) == (5, 0x1000)
    assert hart.fault(0x1000, WRITE) == (7, 0x1000)
    assert hart.fault(0x1000, EXEC) == (1, 0x1000)


def test_pmp_limits_s_mode_and_a_locked_entry_limits_m_mode():
    cpu = Hart(open_pmp=False).cpu
    # Entry 0: TOR [0, RAM+1 MiB) read-only; entry 1: NAPOT 4 KiB at RAM+2 MiB, RW.
    cpu.csr_write(0x3B0, (RAM + 0x100000) >> 2)
    cpu.csr_write(0x3B1, ((RAM + 0x200000) >> 2) | 0x1FF)        # 4 KiB
    cpu.csr_write(0x3A0, ((0x18 | 3) << 8) | (0x08 | 1))
    cpu.priv = PRV_S
    assert cpu.mmu.translate(RAM + 0x80, READ) == (RAM + 0x80, True)
    with pytest.raises(GuestTrap) as exc:
        cpu.mmu.translate(RAM + 0x80, WRITE)
    assert (exc.value.cause, exc.value.tval) == (7, RAM + 0x80)
    assert cpu.mmu.translate(RAM + 0x200010, WRITE) == (RAM + 0x200010, True)
    with pytest.raises(GuestTrap):                            # no entry matches: S/U denied
        cpu.mmu.translate(RAM + 0x300000, READ)
    cpu.priv = PRV_M
    assert cpu.mmu.translate(RAM + 0x80, WRITE)[0] == RAM + 0x80     # unlocked: M unaffected
    cpu.csr_write(0x3A0, ((0x18 | 3) << 8) | (0x80 | 0x08 | 1))     # lock entry 0
    with pytest.raises(GuestTrap):
        cpu.mmu.translate(RAM + 0x80, WRITE)
    cpu.csr_write(0x3B0, 0)                                  # locked: the address is frozen
    assert cpu.pmpaddr[0] == (RAM + 0x100000) >> 2


def test_pmp_region_smaller_than_a_page_is_not_cacheable():
    cpu = Hart(open_pmp=False).cpu
    cpu.csr_write(0x3B0, ((RAM + 0x1000) >> 2) | 0x7)        # NAPOT 64 bytes at RAM+0x1000
    cpu.csr_write(0x3A0, 0x18 | 7)
    assert cpu.mmu.translate(RAM + 0x1008, READ) == (RAM + 0x1008, False)


def test_walk_reads_the_table_through_ram(hart):
    # The walk must see entries written by the guest as plain stores (no caching of PTEs).
    va = 0x50000000
    leaf = map_4k(hart, va, RAM + 0x300000, RWX)
    hart.paging()
    assert hart.translate(va, READ) == RAM + 0x300000
    hart.mem.ram[leaf - RAM:leaf - RAM + 8] = struct.pack("<Q", ((RAM + 0x302000) >> 12 << 10) | RWX | PTE_V)
    assert hart.translate(va, READ) == RAM + 0x302000
