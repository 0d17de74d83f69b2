"""Harts of the virt board: an engine each, sharing RAM, code pages and the bus; code written by
one hart is re-translated by every hart (fence.i / self-modifying code seen by all)."""

from __future__ import annotations

import pytest

from kvmpy.boards.riscv_virt import DRAM_BASE, MAX_HARTS, BootImage, BootSpec, VirtBoard
from kvmpy.tcg.errors import TcgUserError
from kvmpy.tcg.target.riscv.translate import PC

CODE = DRAM_BASE + 0x3000
ADDI_A0_A0_1 = 0x00150513
JALR_ZERO_RA = 0x00008067


@pytest.mark.parametrize("tier", ["py", "native"])
def test_a_store_by_one_hart_drops_code_another_hart_translated(tier):
    board = VirtBoard(1 << 20, harts=2, tier=tier)
    h0, h1 = board.harts
    assert h0.mem.ram is h1.mem.ram and h0.cache is not h1.cache and h0.mem.tlb_write is not h1.mem.tlb_write
    h0.mem.store(CODE + 0x100, 8, 0, 0, 0)                   # hart 0 may write the page fast: a TLB entry
    assert h0.mem.tlb_write
    for i, insn in enumerate((ADDI_A0_A0_1, JALR_ZERO_RA)):
        h0.mem.store(CODE + 4 * i, 4, insn, 0, 0)
    tb = h1.loop.lookup(CODE)                                # hart 1 translates it
    assert tb.valid and not h0.mem.tlb_write                 # hart 0 lost its write entry onto the code
    assert h1.loop.lookup(CODE) is tb
    h0.mem.store(CODE, 4, 0x00250513, 0, 0)                  # hart 0 rewrites the code: addi a0, a0, 2
    assert not tb.valid and h1.loop.lookup(CODE) is not tb


@pytest.mark.parametrize("harts", [0, MAX_HARTS + 1])
def test_hart_count_is_bounded(harts):
    with pytest.raises(TcgUserError, match="Invalid SMP CPUs"):
        VirtBoard(1 << 20, harts=harts, tier="py")


def test_every_hart_starts_at_the_entry_with_its_hartid_and_the_dtb():
    board = VirtBoard(8 << 20, harts=3, tier="py")
    info = board.boot(BootSpec(kernel=None, firmware=BootImage("fw", raw=bytes(4096))))
    assert [(h.cpu.R[PC], h.cpu.R[10], h.cpu.R[11]) for h in board.harts] == \
        [(DRAM_BASE, i, info.fdt_addr) for i in range(3)]
