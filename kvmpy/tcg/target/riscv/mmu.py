"""RISC-V address translation: Sv39 page walks (with A/D updates) and PMP checks.

``translate(vaddr, access)`` returns ``(paddr, cacheable)``: cacheable means the
whole 4 KiB page may go into the softmmu TLB for this kind of access.  Faults
raise ``GuestTrap`` with the standard cause and the faulting address as tval.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmpy.tcg.errors import GuestTrap
from kvmpy.tcg.softmmu import EXEC, READ, WRITE

if TYPE_CHECKING:
    from kvmpy.tcg.target.riscv.cpu import RiscvCpu

PRV_U, PRV_S, PRV_M = 0, 1, 3
PAGE_FAULT = {READ: 13, WRITE: 15, EXEC: 12}
ACCESS_FAULT = {READ: 5, WRITE: 7, EXEC: 1}

PTE_V, PTE_R, PTE_W, PTE_X, PTE_U, PTE_G, PTE_A, PTE_D = 1, 2, 4, 8, 16, 32, 64, 128
MSTATUS_MPRV = 1 << 17
MSTATUS_SUM = 1 << 18
MSTATUS_MXR = 1 << 19
PMP_R, PMP_W, PMP_X, PMP_L = 1, 2, 4, 0x80
PMP_PERM = {READ: PMP_R, WRITE: PMP_W, EXEC: PMP_X}
PPN_MASK = (1 << 44) - 1


class RiscvMmu:
    def __init__(self, cpu: "RiscvCpu") -> None:
        self.cpu = cpu

    def translate(self, vaddr: int, access: int) -> tuple[int, bool]:
        cpu = self.cpu
        priv = cpu.priv
        if access != EXEC and priv == PRV_M and cpu.mstatus & MSTATUS_MPRV:
            priv = (cpu.mstatus >> 11) & 3
        if priv == PRV_M or cpu.satp >> 60 == 0:
            paddr = vaddr
            cacheable = True
        else:
            paddr, cacheable = self._walk(vaddr, access, priv)
        if not self.pmp_ok(paddr, 1 if access == EXEC else 1, access, priv):
            raise GuestTrap(ACCESS_FAULT[access], vaddr)
        if cacheable:
            cacheable = self.pmp_page_uniform(paddr, access, priv)
        return paddr, cacheable

    def _walk(self, vaddr: int, access: int, priv: int) -> tuple[int, bool]:
        cpu = self.cpu
        fault = PAGE_FAULT[access]
        top = vaddr >> 38
        if top != 0 and top != (1 << 26) - 1:
            raise GuestTrap(fault, vaddr)
        table = (cpu.satp & PPN_MASK) << 12
        mem = cpu.mmu_mem
        for level in (2, 1, 0):
            pte_addr = table + ((vaddr >> (12 + 9 * level)) & 0x1FF) * 8
            if not self.pmp_ok(pte_addr, 8, READ, PRV_S) or not mem.in_ram(pte_addr, 8):
                raise GuestTrap(ACCESS_FAULT[access], vaddr)
            pte = mem.phys_read(pte_addr, 8)
            if not pte & PTE_V or (not pte & PTE_R and pte & PTE_W) or pte >> 54:
                raise GuestTrap(fault, vaddr)
            ppn = (pte >> 10) & PPN_MASK
            if pte & (PTE_R | PTE_X):
                break
            table = ppn << 12
        else:
            raise GuestTrap(fault, vaddr)
        if level and ppn & ((1 << (9 * level)) - 1):
            raise GuestTrap(fault, vaddr)          # misaligned superpage
        st = cpu.mstatus
        if priv == PRV_U and not pte & PTE_U:
            raise GuestTrap(fault, vaddr)
        if priv == PRV_S and pte & PTE_U and (access == EXEC or not st & MSTATUS_SUM):
            raise GuestTrap(fault, vaddr)
        if access == READ:
            ok = pte & PTE_R or (st & MSTATUS_MXR and pte & PTE_X)
        elif access == WRITE:
            ok = pte & PTE_W
        else:
            ok = pte & PTE_X
        if not ok:
            raise GuestTrap(fault, vaddr)
        want = PTE_A | (PTE_D if access == WRITE else 0)
        if pte & want != want:
            mem.phys_write(pte_addr, 8, pte | want)
        offset_mask = (1 << (12 + 9 * level)) - 1
        paddr = ((ppn << 12) & ~offset_mask) | (vaddr & offset_mask)
        return paddr, True

    # ---- PMP ---------------------------------------------------------------
    def _ranges(self):
        cpu = self.cpu
        prev = 0
        for i in range(16):
            cfg = (cpu.pmpcfg[i // 8] >> (8 * (i % 8))) & 0xFF
            addr = cpu.pmpaddr[i]
            mode = (cfg >> 3) & 3
            if mode == 1:
                yield cfg, prev << 2, addr << 2
            elif mode == 2:
                yield cfg, addr << 2, (addr << 2) + 4
            elif mode == 3:
                t = 0
                while (addr >> t) & 1 and t < 54:
                    t += 1
                base = (addr & ~((1 << t) - 1)) << 2
                yield cfg, base, base + (8 << t)
            prev = addr

    def _match(self, paddr: int, size: int) -> tuple[int, bool] | None:
        """cfg of the first entry touching [paddr, paddr+size) and whether it covers it all."""
        end = paddr + size
        for cfg, lo, hi in self._ranges():
            if lo < end and paddr < hi:
                return cfg, lo <= paddr and end <= hi
        return None

    def pmp_ok(self, paddr: int, size: int, access: int, priv: int) -> bool:
        cpu = self.cpu
        if not cpu.pmp_active:
            return priv == PRV_M
        m = self._match(paddr, size)
        if m is None:
            return priv == PRV_M
        cfg, full = m
        if not full:
            return False
        if priv == PRV_M and not cfg & PMP_L:
            return True
        return bool(cfg & PMP_PERM[access])

    def pmp_page_uniform(self, paddr: int, access: int, priv: int) -> bool:
        if not self.cpu.pmp_active:
            return True
        page = paddr & ~0xFFF
        m = self._match(page, 4096)
        return m is None or m[1]
