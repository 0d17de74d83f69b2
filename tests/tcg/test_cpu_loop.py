"""The CPU loop's pairing of a CPU with its TB cache: breakpoints reach the cache, and are
checked before an instruction fetch that may fault."""

from __future__ import annotations

import pytest

from kvmpy.tcg.backend_py import StateLayout
from kvmpy.tcg.cpu_loop import CpuLoop
from kvmpy.tcg.errors import GuestTrap
from kvmpy.tcg.tb_cache import TBCache


class FetchFaultCpu:
    """A CPU whose every fetch faults (cause 1) and whose breakpoints fire at pc 0x40."""

    pc_slot = 1

    def __init__(self) -> None:
        self.R = [0, 0, 0]
        self.ctx = "ctx"
        self.irq_pending = self.halted = False
        self.on_breakpoints = lambda pcs: None

    def fetch_translate(self, pc: int) -> int:
        raise GuestTrap(1, pc)

    def check_breakpoint(self, pc: int, back: int = 0) -> None:
        if pc == 0x40:
            raise GuestTrap(3, 0, pc, back)


def test_breakpoints_reach_the_cache_and_come_before_a_fetch_fault():
    cpu = FetchFaultCpu()
    cache = TBCache(StateLayout(3, 1, 2), {}, lambda pc: pytest.fail("nothing can be translated"),
                    lambda page: None)
    loop = CpuLoop(cpu, cache)
    cpu.on_breakpoints(frozenset({0x40, 0x80}))
    assert cache.breakpoints == {0x40, 0x80}
    with pytest.raises(GuestTrap) as exc:
        loop.lookup(0x40)
    assert (exc.value.cause, exc.value.pc) == (3, 0x40)
    for pc in (0x80, 0xC0):            # a breakpoint that does not apply, and no breakpoint: the fault
        with pytest.raises(GuestTrap) as exc:
            loop.lookup(pc)
        assert (exc.value.cause, exc.value.pc) == (1, pc)
