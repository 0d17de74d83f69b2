"""The CPU loop: runs generated units, follows chains, looks up and translates TBs.

A native unit may run on into the units it is chained to (``CompiledUnit.chained``)
with the same countdown, so interrupts are still looked at on the same TB boundaries.

Interrupts and devices are looked at on TB boundaries only: on every unchained
exit and every ``POLL_PERIOD`` chained ones (an indirect jump whose target is in
the jump cache counts as chained).  A unit never runs more than the
backend's instruction budget, so a guest spinning in a hot region still sees
its timer interrupt within a few thousand instructions.

The loop is architecture-neutral; the guest CPU implements ``TargetCpu``.  The
loop pairs the CPU with its TB cache: the CPU's ``on_breakpoints`` goes to the
cache's ``set_breakpoints``.  A breakpoint is checked before the instruction is
fetched (as QEMU does), so one on a pc that cannot be fetched still fires: the
lookup that would translate a TB there checks it first.
"""

from __future__ import annotations

import logging
from typing import Callable, Hashable, Protocol

from kvmpy.tcg.errors import GuestTrap
from kvmpy.tcg.tb_cache import TBCache

log = logging.getLogger(__name__)

POLL_PERIOD = 64


class TargetCpu(Protocol):
    R: list[int]
    pc_slot: int
    ctx: Hashable          # everything that changes what an instruction fetch at a pc means
    irq_pending: bool      # some interrupt is pending and enabled in the per-source mask
    halted: bool           # waiting for an interrupt (WFI)
    on_breakpoints: Callable[[frozenset[int]], None]   # the pcs to check before (debug triggers)

    def paged(self, ctx: Hashable) -> bool: ...

    def fetch_translate(self, pc: int) -> int: ...

    def check_breakpoint(self, pc: int, back: int = 0) -> None:
        """Raise the guest's exception if a breakpoint at ``pc`` applies now."""

    def take_interrupt(self) -> bool: ...

    def enter_trap(self, trap: GuestTrap) -> None: ...

    def wait_for_interrupt(self) -> None: ...

    def poll(self) -> None: ...


class CpuLoop:
    def __init__(self, cpu: TargetCpu, cache: TBCache,
                 trace_exec: Callable[[int], None] | None = None) -> None:
        self.cpu = cpu
        self.cache = cache
        self.trace_exec = trace_exec
        cpu.on_breakpoints = cache.set_breakpoints

    def lookup(self, pc: int):
        cpu, cache = self.cpu, self.cache
        ctx = cpu.ctx
        cache.stats.lookups += 1
        tb = cache.jump_cache(ctx).get(pc)
        if tb is not None:
            cache.stats.jump_cache_hits += 1
            return tb
        try:
            if pc in cache.breakpoints:
                cpu.check_breakpoint(pc)
            return cache.find(pc, ctx, cpu.fetch_translate(pc))
        except GuestTrap as trap:
            trap.pc, trap.back = pc, 0
            raise

    def run(self) -> None:
        """Run until a ``MachineExit`` propagates."""
        cpu, cache = self.cpu, self.cache
        R = cpu.R
        pc_slot = cpu.pc_slot
        stats = cache.stats
        trace = self.trace_exec
        # Indirect jumps (Exit.lookup) go straight to the jump cache and, like chains,
        # poll only every POLL_PERIOD units; not with chaining off or exec tracing,
        # where every TB goes through the dispatcher.
        fast_lookup = cache.chaining and trace is None
        chain_hits = units = fast_hits = 0
        try:
            while True:
                try:
                    tb = self._resume()
                    # Valid until the next unchained exit: the context only changes
                    # on traps and on exits that are not plain indirect jumps.
                    jc = cache.jump_cache(cpu.ctx)
                    countdown = POLL_PERIOD
                    while True:
                        u = tb.unit
                        run_chained = u.chained
                        if run_chained is None:
                            ex = u.fn(R)
                        else:
                            # Machine code that follows chains and looked-up jumps itself, as
                            # this loop would, and returns before the hop that ends the countdown.
                            u, ex, hops = run_chained(R, countdown if fast_lookup else 1, jc)
                            if hops:
                                units += hops
                                chain_hits += hops
                                countdown -= hops
                        units += 1
                        nxt = u.links[ex]
                        if nxt is None and fast_lookup and u.lookups[ex]:
                            nxt = jc.get(R[pc_slot])
                            if nxt is not None:
                                fast_hits += 1
                                chain_hits -= 1
                        if nxt is not None:
                            chain_hits += 1
                            countdown -= 1
                            h = nxt.hot - 1
                            nxt.hot = h
                            if h == 0:
                                cache.make_region(nxt, cpu.ctx, cpu.paged(cpu.ctx))
                            if countdown:
                                tb = nxt
                                continue
                        # Unchained exit, or time to poll: back to the dispatcher proper.
                        countdown = POLL_PERIOD
                        cpu.poll()
                        if cpu.halted:
                            cpu.wait_for_interrupt()
                        if cpu.irq_pending and cpu.take_interrupt():
                            tb = self._resume()
                            jc = cache.jump_cache(cpu.ctx)
                            continue
                        if nxt is None:
                            nxt = self.lookup(R[pc_slot])
                            cache.link(u, ex, nxt, cpu.paged(cpu.ctx))
                            h = nxt.hot - 1
                            nxt.hot = h
                            if h == 0:
                                cache.make_region(nxt, cpu.ctx, cpu.paged(cpu.ctx))
                        if trace is not None:
                            trace(nxt.pc)
                        jc = cache.jump_cache(cpu.ctx)
                        tb = nxt
                except GuestTrap as trap:
                    cpu.enter_trap(trap)
        finally:
            stats.chain_hits += chain_hits
            stats.lookups += fast_hits
            stats.jump_cache_hits += fast_hits
            stats.units_run += units

    def _resume(self):
        """Find the TB at the current pc, taking interrupts and fetch faults first."""
        cpu = self.cpu
        while True:
            if cpu.halted:
                cpu.wait_for_interrupt()
            if cpu.irq_pending:
                cpu.take_interrupt()
            try:
                tb = self.lookup(cpu.R[cpu.pc_slot])
            except GuestTrap as trap:
                cpu.enter_trap(trap)
                continue
            if self.trace_exec is not None:
                self.trace_exec(tb.pc)
            return tb
