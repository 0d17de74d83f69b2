"""Native backend: compiles IR units (a block or a hot region) to x86-64 machine code.

The generated code works on ``S``, an array of 64-bit words owned by the tier:
the guest-state slots at the same indexes as the Python tier's list ``R``, then a
few private words (the trap flag, the retired-instruction count of the run) and
the block-local temporaries.  A small generated Python wrapper is the unit's
``fn(R)``, so the CPU loop, chaining and regions work unchanged: it copies the
registers the unit uses from ``R`` into ``S``, enters the code through cffi and
copies the written ones back (the tier boundary).

Semantics match backend_py exactly, exit for exit: the same instruction counts,
the same budget checks on the same edges of a region (so interrupts are taken at
the same points), the same exits with the same chainability.

Within a unit, its six most used guest registers live in host registers (rbp,
r15, r8-r11): loaded at its entry, stored back at its exits and around slow-path calls.
A temporary read only by the next op stays in rax.

Loads and stores take an inline TLB compare against a direct-mapped native copy
of the softmmu's TLB dicts (kept in step by ``MirrorTlb``); a miss, a misaligned
access, MMIO or a fault calls the softmmu's Python slow path through a cffi
callback, out of line at the end of the unit.  An exception there (a guest
trap, a machine exit) is parked, the code returns at once with ``TRAP_EXIT``
and the wrapper re-raises it with the same
instret accounting as backend_py.

Chaining in machine code: a native unit's exit to a constant pc reads its link cell
(set when the TB cache chains that exit) and an indirect jump looks its target up
in a native mirror of the current context's jump cache; either gives the target
TB's record, which holds the entry of its unit's machine code while that unit is
native and the TB has become hot (else 0).  The hop then goes straight into the
next unit: no return to Python.  The CPU loop's countdown is passed in and
counted down on each hop; the code returns to Python before the hop that would
end it, at a missing link, a miss or a non-native target, so the CPU loop polls
and counts exactly as when it follows the chains itself (``CompiledUnit.chained``).
The TB cache tells the tier of every link, unlink, jump-cache change and unit
change (``ChainObserver``): SMC invalidation, TLB flushes and privilege changes
(another context, another jump cache) reach the native tables where they reach
the Python ones.

Anything else (helper calls, an op this backend does not know) makes
``compile_unit`` return None, and the caller uses backend_py for that unit:
correct by construction.
"""

from __future__ import annotations

import logging
import time
from array import array
from dataclasses import dataclass
from typing import Any, Callable

from kvmpy.tcg.backend_py import BUDGET, INLINE_INDENT, SMALL_BLOCK, CompiledUnit, Exit, StateLayout
from kvmpy.tcg.backend_py import compile_unit as compile_unit_py
from kvmpy.tcg.backend_py import loops_to_itself
from kvmpy.tcg.ir import MASK64, PURE_OPS, Block, Insn, Temp, Value
from kvmpy.tcg.native.codebuf import CodeBuffer, ffi
from kvmpy.tcg.native.x86_64 import (R8, R9, R10, R11, R12, R13, R14, R15, RAX, RBP, RBX, RCX, RDI, RDX, RSI,
                                     RSP, Asm, Label, Mem)

log = logging.getLogger(__name__)

TLB_BITS = 10
TLB_ENTRIES = 1 << TLB_BITS
INVALID_TAG = 0xFFF           # no (page | alignment bits) key ever equals it
TRAP_EXIT = 0xFFFF           # the return code of a parked exception; others are unit id << 16 | exit
MAX_UNITS = 0xFFFF
JT_BITS = 10                 # entries of a native jump-cache mirror
JT_EMPTY = 1                 # no pc is odd
MAX_RECORDS = 1 << 16        # TBs that chains and jump-cache mirrors can point at
MAX_CELLS = 1 << 18          # link cells (one per chainable exit of a native unit)
MAX_TEMPS = 16384
CODE_LIMIT = 256 << 20        # code is never freed: past this much, new units stay in backend_py
CACHE_REGS = (RBP, R15, R8, R9, R10, R11)
# Ops that read their first operand into rax before anything else can clobber it, so a
# temporary computed just before and read only there need not be stored at all.
_TAKES_RAX = (PURE_OPS - {"mulhsu"}) | {"ld"}   # host registers that hold a unit's most used guest registers
_COND = {"eq": "e", "ne": "ne", "lt": "l", "ge": "ge", "ltu": "b", "geu": "ae"}
_INVERSE = {"e": "ne", "ne": "e", "l": "ge", "ge": "l", "b": "ae", "ae": "b"}
_SUPPORTED = frozenset({
    "mov", "add", "sub", "mul", "and", "or", "xor", "shl", "shr", "sar", "mulh", "mulhu", "mulhsu",
    "divs", "divu", "rems", "remu", "sext", "zext", "setcond", "ld", "st", "insn_start",
    "goto_tb", "brcond", "exit_tb"})


class Unsupported(Exception):
    """The unit uses something the native backend does not compile."""


class MirrorTlb(dict):
    """A softmmu TLB dict (virtual page -> ram offset - virtual page) that keeps a
    direct-mapped native table of (tag, host addend) pairs in step with itself."""

    def __init__(self, ram_host: int, entries: int = TLB_ENTRIES) -> None:
        super().__init__()
        self.ram_host = ram_host
        self.mask = entries - 1
        self._empty = array("Q", [INVALID_TAG, 0] * entries)
        self.table = array("Q", self._empty)
        self.addr = self.table.buffer_info()[0]

    def __setitem__(self, vpage: int, delta: int) -> None:
        super().__setitem__(vpage, delta)
        i = 2 * ((vpage >> 12) & self.mask)
        self.table[i] = vpage
        self.table[i + 1] = (self.ram_host + delta) & MASK64

    def __delitem__(self, vpage: int) -> None:
        super().__delitem__(vpage)
        i = 2 * ((vpage >> 12) & self.mask)
        if self.table[i] == vpage:
            self.table[i] = INVALID_TAG

    def pop(self, vpage: int, *default: Any) -> Any:
        if vpage in self:
            value = self[vpage]
            del self[vpage]
            return value
        return super().pop(vpage, *default)

    def clear(self) -> None:
        super().clear()
        self.table[:] = self._empty

    def popitem(self) -> tuple[int, int]:
        raise TypeError("MirrorTlb does not support popitem")

    def update(self, *args: Any, **kw: Any) -> None:
        for k, v in dict(*args, **kw).items():
            self[k] = v

    def setdefault(self, key: int, default: int = 0) -> int:
        if key not in self:
            self[key] = default
        return self[key]


class MirrorJump(dict):
    """A jump cache (pc -> TB) that keeps a direct-mapped native table of (pc, TB
    record address) pairs in step with itself, for the indirect-jump lookup."""

    def __init__(self, record_addr: Callable[[Any], int], entries: int = 1 << JT_BITS) -> None:
        super().__init__()
        self._record_addr = record_addr
        self.mask = entries - 1
        self._empty = array("Q", [JT_EMPTY, 0] * entries)
        self.table = array("Q", self._empty)
        self.addr = self.table.buffer_info()[0]

    def __setitem__(self, pc: int, tb: Any) -> None:
        super().__setitem__(pc, tb)
        i = 2 * ((pc >> 1) & self.mask)
        rec = self._record_addr(tb)
        if rec:
            self.table[i] = pc
            self.table[i + 1] = rec
        elif self.table[i] == pc:
            self.table[i] = JT_EMPTY

    def __delitem__(self, pc: int) -> None:
        super().__delitem__(pc)
        i = 2 * ((pc >> 1) & self.mask)
        if self.table[i] == pc:
            self.table[i] = JT_EMPTY

    def pop(self, pc: int, *default: Any) -> Any:
        if pc in self:
            value = self[pc]
            del self[pc]
            return value
        return super().pop(pc, *default)

    def clear(self) -> None:
        if self:            # an empty dict has an empty table: every removal cleared its slot
            super().clear()
            self.table[:] = self._empty

    def popitem(self) -> tuple[int, Any]:
        raise TypeError("MirrorJump does not support popitem")

    def update(self, *args: Any, **kw: Any) -> None:
        for k, v in dict(*args, **kw).items():
            self[k] = v

    def setdefault(self, key: int, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]


@dataclass
class NativeStats:
    units: int = 0              # units compiled to machine code
    fallbacks: int = 0          # units left to the Python backend
    compile_s: float = 0.0      # time spent compiling native units
    slow_calls: int = 0         # softmmu slow-path calls from native code
    fallbacks_full: int = 0     # units left to the Python backend because the code buffer is full
    entries: int = 0            # calls from the CPU loop into machine code
    hops: int = 0               # units entered by a chained jump or a lookup in machine code

    def format(self, code_bytes: int) -> str:
        return (f"native: units={self.units} fallbacks={self.fallbacks} code={code_bytes}B "
                f"compile={self.compile_s * 1e3:.1f}ms"
                + (f" ({self.compile_s / self.units * 1e6:.0f}us/unit)" if self.units else "")
                + f" slow_calls={self.slow_calls} entries={self.entries} hops={self.hops}"
                + (f" left_to_py_buffer_full={self.fallbacks_full}" if self.fallbacks_full else ""))


class NativeTier:
    """The native code tier for one CPU: its state array, code buffer, TLB mirrors
    and slow-path callback.  ``load``/``store`` are the softmmu's slow paths;
    ``ram`` the guest RAM buffer the TLB's offsets index."""

    def __init__(self, layout: StateLayout, ram: Any, load: Callable[..., int],
                 store: Callable[..., None], unit_exit: tuple[type[BaseException], ...],
                 eager: bool = False) -> None:
        """``eager``: compile every new TB to machine code at once (tests), not only hot ones."""
        self.layout = layout
        self.eager = eager
        self.code_limit = CODE_LIMIT
        self._ram_ref = ffi.from_buffer(ram, require_writable=True)
        ram_host = int(ffi.cast("uintptr_t", self._ram_ref))
        self.tlb_read = MirrorTlb(ram_host)
        self.tlb_write = MirrorTlb(ram_host)
        self.flag_slot = layout.n_slots
        self.icount_local = layout.n_slots + 1      # instructions retired by this call, over its hops
        self.countdown_slot = layout.n_slots + 2    # the CPU loop's countdown: hop only while above 1
        self.hops_slot = layout.n_slots + 3
        self.jt_slot = layout.n_slots + 4           # the current context's jump-cache mirror
        self.temp_base = layout.n_slots + 5
        self.S = array("Q", bytes(8 * (self.temp_base + MAX_TEMPS)))
        self.S_addr = self.S.buffer_info()[0]
        # Chaining: native units by id, their chain entries and link cells; TB records.
        self.units: list[CompiledUnit] = []
        self._entry: dict[int, int] = {}           # id(native unit) -> chain entry address
        self._cells: dict[int, list[int]] = {}     # id(native unit) -> link cell per exit (-1: none)
        self.cells = array("Q", bytes(8 * MAX_CELLS))
        self.cells_addr = self.cells.buffer_info()[0]
        self.n_cells = 0
        self.records = array("Q", bytes(8 * MAX_RECORDS))
        self.records_addr = self.records.buffer_info()[0]
        self._record: dict[Any, int] = {}          # TB -> record index
        self._free_records: list[int] = []
        self._n_records = 0
        self.copy_hi = layout.pc_slot + 1           # the chained entry copies slots [0, copy_hi)
        self._no_jumps = MirrorJump(self.record_addr, 2)
        self.S[self.jt_slot] = self._no_jumps.addr
        self.code = CodeBuffer()
        self.stats = NativeStats()
        self._load, self._store = load, store
        self._unit_exit = unit_exit
        self._sites: list[tuple[bool, int, bool, int, int]] = []   # (store, size, signed, pc, back)
        self.pending: list[BaseException] = []
        self._callback = ffi.callback("uint64_t(uint64_t, uint64_t, uint64_t)", self._slow)
        self.callback_addr = int(ffi.cast("uintptr_t", self._callback))

    # ---- the slow path, called from machine code --------------------------
    def _slow(self, addr: int, value: int, site: int) -> int:
        is_store, size, signed, pc, back = self._sites[site]
        self.stats.slow_calls += 1
        try:
            if is_store:
                self._store(addr, size, value & ((1 << (8 * size)) - 1), pc, back)
                return 0
            return self._load(addr, size, signed, pc, back)
        except BaseException as exc:       # parked, re-raised by the wrapper  # noqa: BLE001
            self.pending.append(exc)
            self.S[self.flag_slot] = 1
            return 0

    # ---- compiling --------------------------------------------------------
    def compile_unit(self, blocks: list[Block], name: str = "unit") -> CompiledUnit | None:
        """Machine code for ``blocks`` (head first), or None if some op is not supported."""
        if self.code.size >= self.code_limit:
            if self.stats.fallbacks_full == 0:
                log.warning("native code buffer full (%d bytes): new units stay in the Python backend",
                            self.code.size)
            self.stats.fallbacks_full += 1
            return None
        t0 = time.perf_counter()
        cells = self.n_cells
        try:
            if len(self.units) >= MAX_UNITS:
                raise Unsupported("too many native units")
            unit = _Gen(self, blocks).compile(name)
        except Unsupported as why:
            self.n_cells = cells
            self.stats.fallbacks += 1
            log.debug("native: %#x left to the Python backend: %s", blocks[0].pc, why)
            return None
        self.stats.units += 1
        self.stats.compile_s += time.perf_counter() - t0
        return unit

    def compile_or_fallback(self, blocks: list[Block], layout: StateLayout, namespace: dict[str, Any],
                            name: str = "unit") -> CompiledUnit:
        """The TB cache's backend: native code for regions (and, when ``eager``, for every
        new TB) where possible, else backend_py's unit.  A new TB starts in backend_py,
        which translates faster; ``promote`` recompiles it once it is hot."""
        if name != "tb" or self.eager:
            unit = self.compile_unit(blocks, name)
            if unit is not None:
                return unit
        return compile_unit_py(blocks, layout, namespace, name)

    def promote(self, block: Block) -> CompiledUnit | None:
        """Machine code for a hot TB that heads no region (None: it stays in backend_py)."""
        return self.compile_unit([block], "tb")

    # ---- chaining (the TB cache's ChainObserver) ---------------------------
    def _entry_for(self, tb: Any) -> int:
        """Where a hop into ``tb`` goes: its unit's code once it is native and ``tb`` hot, else 0."""
        if not tb.valid or tb.hot > 0:
            return 0
        return self._entry.get(id(tb.unit), 0)

    def record_addr(self, tb: Any) -> int:
        """The address of ``tb``'s record (0: out of records, no native chaining into it)."""
        i = self._record.get(tb)
        if i is None:
            if not tb.valid:
                return 0
            if self._free_records:
                i = self._free_records.pop()
            elif self._n_records < MAX_RECORDS:
                i = self._n_records
                self._n_records += 1
            else:
                return 0
            self._record[tb] = i
            self.records[i] = self._entry_for(tb)
        return self.records_addr + 8 * i

    def new_jump_cache(self) -> MirrorJump:
        return MirrorJump(self.record_addr, 1 << JT_BITS)

    def linked(self, unit: CompiledUnit, ex: int, target: Any) -> None:
        cells = self._cells.get(id(unit))
        if cells is not None and cells[ex] >= 0:
            self.cells[cells[ex]] = self.record_addr(target)

    def unlinked(self, unit: CompiledUnit, ex: int) -> None:
        cells = self._cells.get(id(unit))
        if cells is not None and cells[ex] >= 0:
            self.cells[cells[ex]] = 0

    def retargeted(self, tb: Any) -> None:
        i = self._record.get(tb)
        if i is None:
            return
        if tb.valid:
            self.records[i] = self._entry_for(tb)
        else:           # the TB cache has dropped every link and jump-cache entry to it
            self.records[i] = 0
            del self._record[tb]
            self._free_records.append(i)

    def new_cell(self) -> int:
        if self.n_cells >= MAX_CELLS:
            return -1
        self.n_cells += 1
        return self.n_cells - 1

    def register(self, unit: CompiledUnit, entry: int, cells: list[int], slots: set[int]) -> None:
        self.units.append(unit)
        self._entry[id(unit)] = entry
        self._cells[id(unit)] = cells
        if slots:
            self.copy_hi = max(self.copy_hi, max(slots) + 1)

    def add_site(self, site: tuple[bool, int, bool, int, int]) -> int:
        self._sites.append(site)
        return len(self._sites) - 1

    def trap(self, R: list[int]) -> None:
        """Called by a wrapper whose code returned TRAP_EXIT: re-raise the parked exception."""
        self.S[self.flag_slot] = 0
        exc = self.pending.pop()
        if isinstance(exc, self._unit_exit):
            R[self.layout.icount_slot] -= exc.back     # type: ignore[attr-defined]
        raise exc


def _mem(slot: int) -> Mem:
    return Mem(RBX, 8 * slot)


class _Gen:
    def __init__(self, tier: NativeTier, blocks: list[Block]) -> None:
        self.tier = tier
        self.blocks = blocks
        self.a = Asm()
        self.internal = {b.pc: i for i, b in enumerate(blocks)}
        self.looped = len(blocks) > 1 or blocks[0].pc in blocks[0].successors()
        self.exits: list[Exit] = []
        self.cells: list[int] = []          # per exit: its link cell, -1 for none
        self.uid = len(tier.units)
        self.hop = Label()
        self.body = Label()
        self.stubs: list[tuple[Label, int]] = []
        self.cold: list[tuple[Label, Label, int]] = []      # slow paths: (entry, back to, site)
        self.reads: set[int] = set()
        self.writes: set[int] = set()
        self.epilogue = Label()
        self.trap_exit = Label()
        self.max_temp = 0
        self.avail: Temp | None = None     # the value rax holds right now, if known
        # DFS preorder from the head, as backend_py: an edge to a lower-or-equal
        # preorder may close a cycle and checks the budget.
        self.order = [0] * len(blocks)
        seen: set[int] = set()
        stack = [0]
        while stack:
            j = stack.pop()
            if j in seen:
                continue
            self.order[j] = len(seen)
            seen.add(j)
            for succ in reversed(blocks[j].successors()):
                k = self.internal.get(succ)
                if k is not None and k not in seen:
                    stack.append(k)
        self.preds = [0] * len(blocks)
        for blk in blocks:
            for succ in blk.successors():
                k = self.internal.get(succ)
                if k is not None:
                    self.preds[k] += 1
        # As backend_py: tiny blocks are copied into their jump sites, a block with one
        # predecessor is emitted there, and a block that loops back to itself through
        # those spins on its own (its back edge always checks the budget).
        self.small = [k != 0 and sum(i.op != "insn_start" for i in blk.insns) <= SMALL_BLOCK
                      for k, blk in enumerate(blocks)]
        self.targets: list[int] = [0]          # blocks entered by a jump to their own label
        self.labels: dict[int, Label] = {0: Label()}
        self.loop_j: int | None = None
        self.copying = False
        self.emitting: list[int] = []
        # The unit's most used guest registers live in host registers: loaded at its entry,
        # stored to S at its exits and around slow-path calls (which clobber r8-r11).
        # The most used get the callee-saved ones.
        uses: dict[int, int] = {}
        for blk in blocks:
            for ins in blk.insns:
                for v in (*ins.args, ins.dst):
                    if isinstance(v, Temp) and v.is_global and v.index != tier.layout.pc_slot:
                        uses[v.index] = uses.get(v.index, 0) + 1
        top = sorted((n, -i) for i, n in uses.items() if n >= 2)[::-1][:len(CACHE_REGS)]
        self.cached: dict[int, int] = {-i: CACHE_REGS[k] for k, (_, i) in enumerate(top)}
        self.temp_uses: dict[int, int] = {}
        for blk in blocks:
            for ins in blk.insns:
                for v in ins.args:
                    if isinstance(v, Temp) and not v.is_global:
                        self.temp_uses[v.index] = self.temp_uses.get(v.index, 0) + 1
        self.elide: Temp | None = None      # the temporary being computed is only read by the next op
        self.dirty_all = {ins.dst.index for blk in blocks for ins in blk.insns
                          if ins.dst is not None and ins.dst.is_global and ins.dst.index in self.cached}

    # ---- operands --------------------------------------------------------
    def slot(self, t: Temp) -> int:
        if t.is_global:
            return t.index
        if t.index >= MAX_TEMPS:
            raise Unsupported("too many temporaries")
        self.max_temp = max(self.max_temp, t.index)
        return self.tier.temp_base + t.index

    def get(self, reg: int, v: Value) -> None:
        if isinstance(v, Temp) and v == self.avail:      # just computed: no reload
            if reg != RAX:
                self.a.mov_rr(reg, RAX)
            return
        if isinstance(v, int):
            self.a.mov_ri(reg, v)
        else:
            if v.is_global:
                self.reads.add(v.index)
                host = self.cached.get(v.index)
                if host is not None:
                    self.a.mov_rr(reg, host)
                    if reg == RAX:
                        self.avail = v
                    return
            self.a.load(reg, _mem(self.slot(v)))
        if reg == RAX:
            self.avail = v if isinstance(v, Temp) else None

    def put(self, d: Temp, reg: int) -> None:
        if d == self.elide and reg == RAX:
            self.avail = d
            return
        host = None
        if d.is_global:
            self.writes.add(d.index)
            host = self.cached.get(d.index)
        if host is not None:
            self.a.mov_rr(host, reg)
        else:
            self.a.store(_mem(self.slot(d)), reg)
        self.avail = d if reg == RAX else None

    def spill(self) -> None:
        """Cached guest registers the unit writes back to S (at exits, before slow paths)."""
        for i in sorted(self.dirty_all):
            self.a.store(_mem(i), self.cached[i])

    def fill(self, after_call: bool = False) -> None:
        """Load the cached registers (``after_call``: those a call clobbers)."""
        for i, host in sorted(self.cached.items()):
            self.reads.add(i)
            if not (after_call and host in (RBP, R15)):
                self.a.load(host, _mem(i))

    def alu(self, op: str, reg: int, v: Value) -> None:
        """reg = reg op v, for the group-1 ops and cmp."""
        a = self.a
        if isinstance(v, int):
            s = v - (1 << 64) if v >> 63 else v
            if -(1 << 31) <= s < (1 << 31):
                a.alu_ri(op, reg, s)
                return
            a.mov_ri(RCX if reg != RCX else RDX, v)
            a.alu_rr(op, reg, RCX if reg != RCX else RDX)
            return
        if v.is_global:
            self.reads.add(v.index)
            host = self.cached.get(v.index)
            if host is not None:
                a.alu_rr(op, reg, host)
                return
        a.alu_rm(op, reg, _mem(self.slot(v)))

    # ---- ops -------------------------------------------------------------
    def pure(self, ins: Insn) -> None:
        a, op, d = self.a, ins.op, ins.dst
        if d is None:
            return
        args = ins.args
        if op == "mov":
            self.get(RAX, args[0])
        elif op in ("add", "sub", "and", "or", "xor"):
            self.get(RAX, args[0])
            self.alu(op, RAX, args[1])
        elif op == "mul":
            self.get(RAX, args[0])
            self.get(RCX, args[1])
            a.imul_rr(RAX, RCX)
        elif op in ("shl", "shr", "sar"):
            self.get(RAX, args[0])
            b = args[1]
            if isinstance(b, int):
                if b > 63:
                    raise Unsupported("constant shift count above 63")
                if b:
                    a.shift_ri(op, RAX, b)
            else:
                self.get(RCX, b)
                a.shift_rcl(op, RAX)
        elif op in ("mulh", "mulhu"):
            self.get(RAX, args[0])
            self.get(RCX, args[1])
            (a.imul_r if op == "mulh" else a.mul_r)(RCX)
            a.mov_rr(RAX, RDX)
        elif op == "mulhsu":
            # signed a * unsigned b: the unsigned high half, less b when a < 0
            self.get(RAX, args[0])
            self.get(RCX, args[1])
            a.mul_r(RCX)
            self.avail = None
            self.get(RAX, args[0])
            a.shift_ri("sar", RAX, 63)
            a.alu_rr("and", RAX, RCX)
            a.alu_rr("sub", RDX, RAX)
            a.mov_rr(RAX, RDX)
        elif op in ("divu", "remu", "divs", "rems"):
            self.division(op, args)
        elif op in ("sext", "zext"):
            self.get(RAX, args[0])
            bits = ins.attrs["bits"]
            if bits in (8, 16, 32):
                (a.movsx_rr if op == "sext" else a.movzx_rr)(RAX, RAX, bits)
            elif bits < 64:
                a.shift_ri("shl", RAX, 64 - bits)
                a.shift_ri("sar" if op == "sext" else "shr", RAX, 64 - bits)
        elif op == "setcond":
            self.get(RAX, args[0])
            self.alu("cmp", RAX, args[1])
            a.setcc(_COND[ins.attrs["cond"]], RAX)
            a.movzx_rr(RAX, RAX, 8)
        else:
            raise Unsupported(op)
        self.put(d, RAX)

    def division(self, op: str, args: list[Value]) -> None:
        """x/0 = all ones, x%0 = x, MIN/-1 = MIN, MIN%-1 = 0; result in rax."""
        a = self.a
        zero, special, done = Label(), Label(), Label()
        self.get(RCX, args[1])
        self.get(RAX, args[0])
        a.test_rr(RCX, RCX)
        a.jcc("e", zero)
        if op in ("divs", "rems"):
            a.alu_ri("cmp", RCX, -1)
            a.jcc("e", special)
            a.cqo()
            a.idiv_r(RCX)
        else:
            a.mov_ri(RDX, 0)
            a.div_r(RCX)
        if op in ("remu", "rems"):
            a.mov_rr(RAX, RDX)
        a.jmp(done)
        a.bind(zero)
        if op in ("divu", "divs"):
            a.mov_ri(RAX, -1)
        a.jmp(done)                 # x % 0 = x: rax holds it
        if op in ("divs", "rems"):
            a.bind(special)         # x / -1 = -x (MIN stays MIN), x % -1 = 0
            if op == "divs":
                a.neg_r(RAX)
            else:
                a.mov_ri(RAX, 0)
        a.bind(done)

    def access(self, ins: Insn, pc: int, back: int) -> None:
        """ld / st: inline TLB compare, host access on a hit, the slow path otherwise."""
        a = self.a
        size = ins.attrs["size"]
        is_store = ins.op == "st"
        signed = bool(ins.attrs.get("signed")) and not is_store
        self.get(RDI, ins.args[0])
        if is_store:
            self.get(RSI, ins.args[1])
        tlb = R14 if is_store else R13
        slow, done = Label(), Label()
        a.mov_rr(RAX, RDI)
        a.shift_ri("shr", RAX, 12)
        a.alu_ri("and", RAX, TLB_ENTRIES - 1)
        a.shift_ri("shl", RAX, 4)
        a.alu_rr("add", RAX, tlb)
        a.mov_rr(RCX, RDI)
        a.alu_ri("and", RCX, -4096 | (size - 1))
        a.alu_rm("cmp", RCX, Mem(RAX))
        a.jcc("ne", slow)
        a.load(RCX, Mem(RAX, 8))
        if is_store:
            a.store_sized(Mem(RDI, 0, RCX), RSI, size)
        else:
            a.load_sized(RAX, Mem(RDI, 0, RCX), size, signed)
        a.bind(done)
        self.cold.append((slow, done, self.tier.add_site((is_store, size, signed, pc, back))))
        self.avail = None
        if not is_store and ins.dst is not None:
            self.put(ins.dst, RAX)

    # ---- control flow ----------------------------------------------------
    def exit(self, target: int | None, chainable: bool, lookup: bool = False) -> None:
        """Leave the unit: the pc is already in S[pc] unless ``target`` is given.  While the
        countdown allows a hop, a chained exit follows its link cell and a lookup exit the
        jump-cache mirror to the next unit's code; else (or when they give no code) return."""
        a, tier = self.a, self.tier
        k = len(self.exits)
        self.exits.append(Exit(target, chainable, lookup))
        cell = tier.new_cell() if chainable and target is not None else -1
        self.cells.append(cell)
        if target is not None:
            a.mov_ri(RAX, target)
            a.store(_mem(tier.layout.pc_slot), RAX)
        self.spill()
        if cell < 0 and not lookup:
            a.mov_ri(RAX, self.uid << 16 | k)
            a.jmp(self.epilogue)
            return
        if cell >= 0:
            a.mov_ri(RAX, self.uid << 16 | k)
            a.alu_mi("cmp", _mem(tier.countdown_slot), 1)
            a.jcc("be", self.epilogue)
            a.mov_ri(RCX, tier.cells_addr + 8 * cell)
            a.load(RCX, Mem(RCX))                       # the target TB's record, or 0
        else:
            a.load(RAX, _mem(tier.layout.pc_slot))
            a.alu_mi("cmp", _mem(tier.countdown_slot), 1)
            a.jcc("be", self.ret_code(k))
            a.load(RCX, _mem(tier.jt_slot))
            a.mov_rr(RDX, RAX)
            a.shift_ri("shr", RDX, 1)
            a.alu_ri("and", RDX, (1 << JT_BITS) - 1)
            a.shift_ri("shl", RDX, 4)
            a.alu_rr("add", RCX, RDX)
            a.alu_rm("cmp", RAX, Mem(RCX))
            a.mov_ri(RAX, self.uid << 16 | k)
            a.jcc("ne", self.epilogue)
            a.load(RCX, Mem(RCX, 8))
        a.test_rr(RCX, RCX)
        a.jcc("e", self.epilogue)
        a.load(RDX, Mem(RCX))                           # its unit's code, or 0
        a.test_rr(RDX, RDX)
        a.jcc("ne", self.hop)
        a.jmp(self.epilogue)

    def ret_code(self, k: int) -> Label:
        """A stub that returns exit ``k`` (mov does not touch the flags)."""
        out = Label()
        self.stubs.append((out, k))
        return out

    def label(self, j: int) -> Label:
        if j not in self.labels:
            self.labels[j] = Label()
            self.targets.append(j)
        return self.labels[j]

    def jump(self, pc: int, cur: int, level: int) -> None:
        """backend_py's jump, decision for decision (``level``: its indentation depth)."""
        self.avail = None
        j = self.internal.get(pc)
        if j is not None and self.looped:
            if j != 0 and self.preds[j] == 1 and level < INLINE_INDENT:
                self.block(j, level)                    # only way in: emitted right here
                return
            if (self.small[j] and not self.copying and j != self.loop_j and j not in self.emitting
                    and level < INLINE_INDENT):
                self.copy_small(j, pc, cur, level)
                return
            target = self.label(j)
            if j != self.loop_j and self.order[j] > self.order[cur]:
                self.a.jmp(target)                      # forward edge: no cycle closes here
                return
            out = Label()
            self.a.alu_ri("cmp", R12, BUDGET)
            self.a.jcc("ae", out)
            self.a.jmp(target)
            self.a.bind(out)
        self.exit(pc, chainable=True)

    def copy_small(self, j: int, pc: int, cur: int, level: int) -> None:
        check = self.order[j] <= self.order[cur]
        out = Label()
        if check:
            self.a.alu_ri("cmp", R12, BUDGET)
            self.a.jcc("ae", out)
            level += 1
        self.copying = True
        try:
            self.block(j, level)
        finally:
            self.copying = False
        if check:
            self.a.bind(out)
            self.exit(pc, chainable=True)

    def block(self, j: int, level: int) -> None:
        self.emitting.append(j)
        try:
            self._block(j, level)
        finally:
            self.emitting.pop()

    def _block(self, j: int, level: int) -> None:
        a, blk = self.a, self.blocks[j]
        self.avail = None
        a.alu_ri("add", R12, blk.n_guest)
        n, k, pc = blk.n_guest, -1, blk.pc
        insns = blk.insns
        for p, ins in enumerate(insns):
            op = ins.op
            self.elide = None
            d = ins.dst
            if d is not None and not d.is_global and self.temp_uses.get(d.index) == 1:
                q = p + 1
                while q < len(insns) and insns[q].op == "insn_start":
                    q += 1
                if q < len(insns):
                    nxt = insns[q]
                    if nxt.op in _TAKES_RAX and nxt.args and nxt.args[0] == d and d not in nxt.args[1:]:
                        self.elide = d
            if op not in _SUPPORTED:
                raise Unsupported(op)
            if op not in PURE_OPS and op not in ("ld", "insn_start"):
                self.avail = None       # control flow: labels and other paths join here
            if op == "insn_start":
                k += 1
                pc = ins.attrs["pc"]
            elif op in ("ld", "st"):
                self.access(ins, pc, n - k)
            elif op == "goto_tb":
                self.jump(ins.attrs["pc"], j, level)
            elif op == "brcond":
                fall = Label()      # taken first: the exits come in backend_py's order
                self.get(RAX, ins.args[0])
                self.alu("cmp", RAX, ins.args[1])
                a.jcc(_INVERSE[_COND[ins.attrs["cond"]]], fall)
                self.jump(ins.attrs["taken"], j, level + 1)
                a.bind(fall)
                self.jump(ins.attrs["fall"], j, level + 1)
            elif op == "exit_tb":
                self.get(RAX, ins.args[0])
                a.store(_mem(self.tier.layout.pc_slot), RAX)
                lookup = bool(ins.attrs.get("lookup"))
                if self.looped and lookup:
                    out = Label()
                    a.mov_ri(RCX, self.blocks[0].pc)
                    a.alu_rr("cmp", RAX, RCX)
                    a.jcc("ne", out)
                    a.alu_ri("cmp", R12, BUDGET)
                    a.jcc("b", self.labels[0])       # back to the head: backend_py's _goto(0)
                    a.bind(out)
                self.exit(None, chainable=False, lookup=lookup)
            else:
                self.pure(ins)

    def compile(self, name: str) -> CompiledUnit:
        a, tier = self.a, self.tier
        for r in (RBX, RBP, R12, R13, R14, R15):
            a.push(r)
        a.alu_ri("sub", RSP, 8)                    # keeps rsp 16-aligned for calls
        a.mov_ri(RBX, tier.S_addr)
        a.mov_ri(R12, 0)
        a.mov_ri(R13, tier.tlb_read.addr)
        a.mov_ri(R14, tier.tlb_write.addr)
        a.bind(self.body)                   # the chain entry: a hop has set up all of the above
        self.fill()
        k = 0
        while k < len(self.targets):        # targets are found while emitting, as in backend_py
            j = self.targets[k]
            self.a.bind(self.labels[j])
            loops = len(self.blocks) > 1 and loops_to_itself(self.blocks, self.internal, self.preds, self.small, j)
            self.loop_j = j if loops else None
            self.block(j, 1 if self.loop_j is not None else 0)
            self.loop_j = None
            k += 1
        for slow, done, site in self.cold:     # out of line: the fast paths fall through
            a.bind(slow)
            self.spill()            # the slow path clobbers r8-r11, and a trap returns from here
            a.mov_ri(RDX, site)
            a.mov_ri(RAX, tier.callback_addr)
            a.call_r(RAX)
            a.alu_mi("cmp", _mem(tier.flag_slot), 0)
            a.jcc("ne", self.trap_exit)
            self.fill(after_call=True)
            a.jmp(done)
        for out, k in self.stubs:
            a.bind(out)
            a.mov_ri(RAX, self.uid << 16 | k)
            a.jmp(self.epilogue)
        # A hop (rdx: the next unit's chain entry): one unit ends, the next starts counting.
        a.bind(self.hop)
        a.alu_mi("add", _mem(tier.countdown_slot), -1)
        a.alu_mi("add", _mem(tier.hops_slot), 1)
        a.alu_mr("add", _mem(tier.icount_local), R12)
        a.mov_ri(R12, 0)
        a.jmp_r(RDX)
        a.bind(self.trap_exit)
        a.mov_ri(RAX, TRAP_EXIT)
        a.bind(self.epilogue)
        a.alu_mr("add", _mem(tier.icount_local), R12)
        a.alu_ri("add", RSP, 8)
        for r in (R15, R14, R13, R12, RBP, RBX):
            a.pop(r)
        a.ret()
        code = a.finish()
        addr = tier.code.write(code)
        fn = self.wrapper(name, CodeBuffer.entry(addr))
        unit = CompiledUnit(fn, self.exits, [b.pc for b in self.blocks],
                            f"native {name} {self.blocks[0].pc:#x}: {len(code)} bytes at {addr:#x}\n")
        unit.chained = self.chained_wrapper(name, CodeBuffer.entry(addr))
        tier.register(unit, addr + self.body.pos, self.cells, self.reads | self.writes)
        return unit

    def wrapper(self, name: str, entry: Any) -> Callable[[list[int]], int]:
        """The Python side of the tier boundary: R -> S, run, S -> R."""
        lay = self.tier.layout
        regs = sorted(self.reads | self.writes)
        lines = [f"def {name}(R):"]
        if regs:
            lines.append("    " + "; ".join(f"S[{r}] = R[{r}]" for r in regs))
        lines.append(f"    S[{self.tier.icount_local}] = 0; S[{self.tier.countdown_slot}] = 1")
        lines.append("    ex = F()")
        if self.writes:
            lines.append("    " + "; ".join(f"R[{r}] = S[{r}]" for r in sorted(self.writes)))
        lines.append(f"    R[{lay.icount_slot}] += S[{self.tier.icount_local}]")
        lines.append(f"    if ex == {TRAP_EXIT}:")
        lines.append("        trap(R)")
        lines.append(f"    R[{lay.pc_slot}] = S[{lay.pc_slot}]")
        lines.append("    return ex & 0xFFFF")
        ns: dict[str, Any] = {"S": self.tier.S, "F": entry, "trap": self.tier.trap}
        exec(compile("\n".join(lines) + "\n", f"<native {name} {self.blocks[0].pc:#x}>", "exec"), ns)
        return ns[name]

    def chained_wrapper(self, name: str, entry: Any) -> Callable[[list[int], int, Any], tuple[Any, int, int]]:
        """The CPU loop's entry (``CompiledUnit.chained``): any native unit may run before
        the return, so every slot any of them uses goes in and comes back."""
        tier = self.tier
        ic, cd, hops, icl, jt = (tier.layout.icount_slot, tier.countdown_slot, tier.hops_slot,
                                 tier.icount_local, tier.jt_slot)
        src = f"""def {name}_chained(R, countdown, jc):
    hi = T.copy_hi
    S[0:hi] = A("Q", R[0:hi])
    S[{cd}] = countdown; S[{hops}] = 0; S[{icl}] = 0; S[{jt}] = jc.addr
    code = F()
    n = R[{ic}] + S[{icl}]
    R[0:hi] = S[0:hi]
    R[{ic}] = n
    st = T.stats
    st.entries += 1
    h = S[{hops}]
    st.hops += h
    if code == {TRAP_EXIT}:
        T.trap(R)
    return U[code >> 16], code & 0xFFFF, h
"""
        ns: dict[str, Any] = {"S": tier.S, "F": entry, "T": tier, "A": array, "U": tier.units}
        exec(compile(src, f"<native chained {name} {self.blocks[0].pc:#x}>", "exec"), ns)
        return ns[f"{name}_chained"]
