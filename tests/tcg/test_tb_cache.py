"""TB caching, chaining, hot regions and SMC invalidation, observed through TB stats."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from tests.guests.riscv.oracle import guest
from kvmpy.config import MachineConfig
from kvmpy.boards.riscv_virt_run import build_board
from kvmpy.tcg.backend_py import StateLayout, runtime_namespace
from kvmpy.tcg.errors import GuestTrap
from kvmpy.tcg.ir import Builder, Temp
from kvmpy.tcg.tb_cache import TBCache


def _run(name: str):
    with ExitStack() as stack:
        board, _ = build_board(MachineConfig(arch="riscv64", kernel=guest(name), serial="none"), stack)
        ex = board.run()
        return ex, board


def test_workload_is_cached_chained_and_compiled_into_regions():
    ex, board = _run("coremark")
    s = board.cache.stats
    assert ex.status == 0
    assert s.translations < 200                   # each block translated about once
    assert s.chain_hits > s.translations          # most exits follow chains, no lookup
    assert s.regions > 0
    assert board.cpu.R[33] > 1_000_000 > s.units_run * 100 / 100   # many instructions per unit


def test_self_modifying_code_invalidates():
    ex, board = _run("smc")
    assert ex.status == 0
    assert board.cache.stats.invalidations >= 3


def _straight_line_cache(hits: list[int]) -> TBCache:
    """A cache whose blocks are three instructions of ``r0 += 1`` at pc, pc+4 and pc+8."""
    def translate(pc: int):
        b = Builder(pc)
        for k in range(3):
            b.insn_start(pc + 4 * k)
            b.emit("add", Temp(0, True), Temp(0, True), 1)
        b.emit("goto_tb", None, pc=pc + 12)
        b.block.size = 12
        return b.block, pc, (pc >> 12,)

    def breakpoint(pc: int, back: int) -> None:
        hits.append(pc)
        if pc == 0x1004:
            raise GuestTrap(3, 0, pc, back)

    ns = runtime_namespace()
    ns.update(h_breakpoint=breakpoint, _UnitExit=(GuestTrap,))
    return TBCache(StateLayout(3, 1, 2), ns, translate, lambda page: None)


def test_breakpoints_call_the_helper_before_their_instruction_and_flush_on_change():
    hits: list[int] = []
    cache = _straight_line_cache(hits)
    R = [0, 0, 0]
    cache.find(0x1000, "ctx", 0x1000).unit.fn(R)
    assert R == [3, 0x100C, 3] and hits == []
    cache.set_breakpoints(frozenset({0x1004, 0x1008}))
    assert not cache.store and cache.stats.invalidations == 1
    R = [0, 0, 0]
    with pytest.raises(GuestTrap) as exc:
        cache.find(0x1000, "ctx", 0x1000).unit.fn(R)
    assert hits == [0x1004] and exc.value.pc == 0x1004
    assert R[0] == 1 and R[2] == 1                 # the first instruction retired, not the second
    cache.set_breakpoints(frozenset({0x1004, 0x1008}))   # the same set: the TBs stay
    assert cache.store and cache.stats.invalidations == 1
