"""Translation-block cache: lookup, chaining, hot regions and invalidation by page.

A ``TB`` is one translated guest block.  TBs are stored by (virtual pc, physical
pc), so a TLB flush or a privilege change does not force recompilation; a per
context "jump cache" (dict vpc -> TB) makes the common lookup one dict get.
Exits with a constant target are *chained*: the unit's ``links[exit]`` points
straight at the next TB and the dispatcher follows it without any lookup.  In a
paged context, chains and regions stay inside one virtual page, so a remapping
(which flushes the jump caches) can never leave a stale chain reachable.

When a TB has run ``HOT`` times it becomes the head of a region: it and the
already-translated blocks it jumps to are compiled into one unit (see
backend_py), after re-optimizing them with what is known about register values
on the jumps between them.  A store to a page that holds code invalidates every TB on it,
unlinks the chains into them and drops regions that contain them.

Breakpoints (as QEMU's, a generic list of guest pcs; the target's execute
triggers): before each instruction at a pc in ``breakpoints`` a block calls the
target's ``breakpoint`` helper, which decides at run time (privilege...) whether
to raise the guest's exception, so the block stays valid in every context.
Changing the set throws every TB away; with no breakpoints nothing changes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Protocol

from kvmpy.tcg.backend_py import CompiledUnit, StateLayout, compile_unit
from kvmpy.tcg.ir import Block, Insn
from kvmpy.tcg.optimizer import optimize, optimize_region

log = logging.getLogger(__name__)

HOT = 40                 # executions before a TB becomes a region head
REGION_MAX_BLOCKS = 24
PAGE_SHIFT = 12


@dataclass
class TBStats:
    translations: int = 0        # blocks translated and compiled
    regions: int = 0             # hot regions compiled
    lookups: int = 0             # dispatcher lookups (unchained exits)
    jump_cache_hits: int = 0     # lookups answered by the per-context jump cache
    store_hits: int = 0          # lookups answered by the (vpc, ppc) store after a flush
    chain_hits: int = 0          # exits that followed a chain link (no lookup at all)
    chains_made: int = 0
    invalidations: int = 0       # TBs thrown away because their code was written
    units_run: int = 0           # calls into generated code

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    def format(self) -> str:
        d = self.as_dict()
        return "TB stats: " + " ".join(f"{k}={v}" for k, v in d.items())


@dataclass(eq=False)
class TB:
    pc: int
    ppc: int
    pages: tuple[int, ...]               # physical pages the code came from
    block: Block
    single: CompiledUnit
    unit: CompiledUnit = field(init=False)
    hot: int = HOT
    valid: bool = True
    incoming: list[tuple[CompiledUnit, int]] = field(default_factory=list)
    regions: list["TB"] = field(default_factory=list)   # heads of regions containing self

    def __post_init__(self) -> None:
        self.unit = self.single


class ChainObserver(Protocol):
    """Follows the chains, the jump caches and which unit each TB runs (the native
    tier mirrors them in tables its machine code reads, to chain without the CPU loop)."""

    def new_jump_cache(self) -> dict[int, TB]: ...

    def linked(self, unit: CompiledUnit, ex: int, target: TB) -> None: ...

    def unlinked(self, unit: CompiledUnit, ex: int) -> None: ...

    def retargeted(self, tb: TB) -> None:
        """``tb``'s unit, hot count or validity changed."""


class TBCache:
    def __init__(self, layout: StateLayout, namespace: dict[str, Any],
                 translate: Callable[[int], tuple[Block, int, tuple[int, ...]]],
                 on_new_page: Callable[[int], None], trace: Callable[[str], None] | None = None,
                 trace_ir: bool = False, chaining: bool = True, trace_out: bool = False,
                 compile_fn: Callable[[list[Block], StateLayout, dict[str, Any], str], CompiledUnit]
                 = compile_unit, promote: Callable[[Block], CompiledUnit | None] | None = None,
                 observer: ChainObserver | None = None) -> None:
        """``compile_fn``: the backend (backend_py's ``compile_unit``, or the native tier's,
        which falls back to it per unit); ``promote``: recompiles a hot TB that heads no
        region (the native tier: None when it cannot); ``observer``: told of every change
        to chains, jump caches and TB units."""
        self.layout = layout
        self._compile = compile_fn
        self._promote = promote
        self.namespace = namespace
        self._translate = translate          # vpc -> (block, ppc, physical pages)
        self._on_new_page = on_new_page
        self._trace = trace
        self._trace_ir = trace_ir
        self._trace_out = trace_out
        self.chaining = chaining
        self._observer = observer
        self.store: dict[tuple[int, int], TB] = {}
        self.page_tbs: dict[int, set[TB]] = {}
        self.jump: dict[Hashable, dict[int, TB]] = {}
        self.breakpoints: frozenset[int] = frozenset()
        self.stats = TBStats()

    # ---- lookup ----------------------------------------------------------
    def jump_cache(self, ctx: Hashable) -> dict[int, TB]:
        jc = self.jump.get(ctx)
        if jc is None:
            jc = self.jump[ctx] = {} if self._observer is None else self._observer.new_jump_cache()
        return jc

    def find(self, pc: int, ctx: Hashable, ppc: int) -> TB:
        """Slow lookup: the jump cache missed; ``ppc`` is the fetch translation of ``pc``."""
        tb = self.store.get((pc, ppc))
        if tb is not None and len(tb.pages) > 1:
            tb = None      # straddles a page: its second page may map elsewhere now
        if tb is None:
            tb = self._new_tb(pc)
        else:
            self.stats.store_hits += 1
        self.jump_cache(ctx)[pc] = tb
        return tb

    def _new_tb(self, pc: int) -> TB:
        block, ppc, pages = self._translate(pc)
        if self.breakpoints:
            _insert_breakpoints(block, self.breakpoints)
        if self._trace is not None and block.disasm:
            self._trace("IN:\n" + "\n".join(block.disasm) + "\n")
        optimize(block)
        if self._trace is not None and self._trace_ir:
            self._trace(f"OP after optimization {pc:#x}:\n" +
                        "\n".join(f"  {i!r}" for i in block.insns) + "\n")
        unit = self._compile([block], self.layout, self.namespace, "tb")
        if self._trace is not None and self._trace_out:
            self._trace(f"OUT: [{pc:#x}]\n{unit.source}\n")
        tb = TB(pc, ppc, pages, block, unit)
        self.stats.translations += 1
        old = self.store.get((pc, ppc))
        if old is not None:
            self.invalidate(old)
        self.store[(pc, ppc)] = tb
        for p in pages:
            if p not in self.page_tbs:
                self.page_tbs[p] = set()
                self._on_new_page(p)
            self.page_tbs[p].add(tb)
        return tb

    # ---- chaining --------------------------------------------------------
    def link(self, unit: CompiledUnit, ex: int, target: TB, same_page_only: bool) -> None:
        if not self.chaining or not unit.exits[ex].chainable or not target.valid:
            return
        if same_page_only and (unit.pcs[0] >> PAGE_SHIFT) != (target.pc >> PAGE_SHIFT):
            return
        unit.links[ex] = target
        target.incoming.append((unit, ex))
        self.stats.chains_made += 1
        if self._observer is not None:
            self._observer.linked(unit, ex, target)

    # ---- regions ---------------------------------------------------------
    def make_region(self, head: TB, ctx: Hashable, same_page_only: bool) -> None:
        """``head`` became hot (its count reached 0): a region, a promoted unit or nothing."""
        self._make_region(head, ctx, same_page_only)
        if self._observer is not None:
            self._observer.retargeted(head)

    def _make_region(self, head: TB, ctx: Hashable, same_page_only: bool) -> None:
        if not self.chaining or head.unit is not head.single:
            return
        jc = self.jump_cache(ctx)
        members = [head]
        seen = {head.pc}
        i = 0
        while i < len(members) and len(members) < REGION_MAX_BLOCKS:
            for succ in members[i].block.successors():
                if succ in seen:
                    continue
                seen.add(succ)
                tb = jc.get(succ)
                if tb is None or not tb.valid:
                    continue
                if same_page_only and (succ >> PAGE_SHIFT) != (head.pc >> PAGE_SHIFT):
                    continue
                members.append(tb)
            i += 1
        if len(members) == 1 and head.pc not in head.block.successors():
            # No loop and no successor known yet: no region, but a faster unit may do.
            if self._promote is not None and head.valid:
                unit = self._promote(head.block)
                if unit is not None:
                    head.single = head.unit = unit
            return
        blocks = optimize_region([m.block for m in members])
        unit = self._compile(blocks, self.layout, self.namespace, "region")
        head.unit = unit
        if self._trace is not None and self._trace_out:
            self._trace(f"OUT region: [{head.pc:#x}] {len(members)} blocks\n{unit.source}\n")
        for m in members:
            m.regions.append(head)
        self.stats.regions += 1
        log.debug("region at %#x: %d blocks", head.pc, len(members))

    # ---- invalidation ----------------------------------------------------
    def invalidate(self, tb: TB) -> None:
        if not tb.valid:
            return
        tb.valid = False
        self.stats.invalidations += 1
        if self.store.get((tb.pc, tb.ppc)) is tb:
            del self.store[(tb.pc, tb.ppc)]
        for jc in self.jump.values():
            if jc.get(tb.pc) is tb:
                del jc[tb.pc]
        for unit, ex in tb.incoming:
            if unit.links[ex] is tb:
                unit.links[ex] = None
                if self._observer is not None:
                    self._observer.unlinked(unit, ex)
        tb.incoming.clear()
        for head in tb.regions:
            if head.unit is not head.single:
                head.unit = head.single
                head.hot = HOT
                if self._observer is not None:
                    self._observer.retargeted(head)
        tb.regions.clear()
        if self._observer is not None:
            self._observer.retargeted(tb)
        for p in tb.pages:
            s = self.page_tbs.get(p)
            if s is not None:
                s.discard(tb)

    def invalidate_page(self, page: int) -> None:
        """Guest code on physical page ``page`` was written."""
        tbs = self.page_tbs.pop(page, set())
        for tb in list(tbs):
            self.invalidate(tb)
        if tbs:
            log.debug("SMC: invalidated %d TBs on page %#x", len(tbs), page << PAGE_SHIFT)

    def flush_jump_caches(self, keep: Callable[[Hashable], bool]) -> None:
        """Forget virtual->TB mappings of contexts that may have been remapped."""
        for ctx, jc in self.jump.items():
            if not keep(ctx):
                jc.clear()

    def set_breakpoints(self, pcs: frozenset[int]) -> None:
        """Check for breakpoints before the instructions at ``pcs`` from now on."""
        if pcs != self.breakpoints:
            self.breakpoints = pcs
            self.flush_all()

    def flush_all(self) -> None:
        for tb in list(self.store.values()):
            self.invalidate(tb)
        self.page_tbs.clear()
        for jc in self.jump.values():
            jc.clear()


def _insert_breakpoints(block: Block, pcs: frozenset[int]) -> None:
    """Call the ``breakpoint`` helper first thing in every instruction of ``block`` at one of ``pcs``."""
    out: list[Insn] = []
    for ins in block.insns:
        out.append(ins)
        if ins.op == "insn_start" and ins.attrs["pc"] in pcs:
            out.append(Insn("call", None, [], {"helper": "breakpoint", "raises": True}))
    block.insns = out
