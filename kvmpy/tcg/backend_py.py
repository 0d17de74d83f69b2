"""Python backend: compiles IR blocks into one generated Python function ("unit").

A unit is either one translation block or a *region*: a hot block plus the
blocks it jumps to, compiled together so that loops among them run inside one
Python ``while`` loop with guest registers kept in local variables.  Control
transfers between blocks of a region are direct (``L = n; continue`` into a
balanced if-tree on ``L``); a budget
on the instruction counter bounds the time spent inside, so the dispatcher still
polls interrupts.

Generated function contract::

    unit(R) -> exit index
        R:   the guest state list (registers, pc slot, instret slot)
        on return: registers written back, R[pc_slot] = next pc,
                   R[icount_slot] += retired instructions
        on GuestTrap (or another exception in ``_UnitExit`` that carries
                   ``back``, such as a machine exit from a device): the same
                   write-back, instret excludes the instructions not retired,
                   and the exception propagates

The names the code refers to (softmmu views and slow paths, helpers) come from
a ``Runtime`` namespace; the backend only knows the names, which keeps it
independent of the guest architecture.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from kvmpy.tcg.ir import MASK64, PURE_OPS, Block, Insn, Temp, Value
from kvmpy.tcg.optimizer import evaluate

log = logging.getLogger(__name__)

M = "0xffffffffffffffff"
S = "0x8000000000000000"
BUDGET = 16384            # instructions a unit may run before returning to the dispatcher
INLINE_INDENT = 40        # nesting limit for blocks emitted at their only jump site
SMALL_BLOCK = 4           # IR ops (besides insn_start) of a block copied into each jump site

# Key masks: page bits plus the bits that must be zero for an aligned access,
# so one dict lookup checks both the TLB and the alignment.
_KEYMASK = {1: -4096, 2: -4095, 4: -4093, 8: -4089}
_VIEW = {(1, False): "_B", (2, False): "_H", (4, False): "_I", (8, False): "_Q",
         (1, True): "_b", (2, True): "_h", (4, True): "_i", (8, True): "_q"}
_SHIFT = {1: "", 2: " >> 1", 4: " >> 2", 8: " >> 3"}
_VMASK = {1: " & 0xff", 2: " & 0xffff", 4: " & 0xffffffff", 8: ""}


def _simple(expr: str) -> bool:
    return expr.isidentifier() or expr.startswith("0x")


def _sx(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v


def _mulh(a: int, b: int) -> int:
    return ((_sx(a) * _sx(b)) >> 64) & MASK64


def _mulhsu(a: int, b: int) -> int:
    return ((_sx(a) * b) >> 64) & MASK64


def _divs(a: int, b: int) -> int:
    return evaluate("divs", [a, b], {})


def _rems(a: int, b: int) -> int:
    return evaluate("rems", [a, b], {})


@dataclass
class StateLayout:
    """Where the backend finds the pc and the instruction counter in the state list."""

    n_slots: int
    pc_slot: int
    icount_slot: int


@dataclass
class Exit:
    target: int | None     # constant next pc, or None for a computed one
    chainable: bool
    lookup: bool = False   # a computed jump the dispatcher may look up without polling first


@dataclass
class CompiledUnit:
    fn: Callable[[list[int]], int]
    exits: list[Exit]
    pcs: list[int]                      # block start pcs, head first
    source: str
    links: list[Any] = field(default_factory=list)   # chained successor TBs, per exit
    lookups: list[bool] = field(default_factory=list)   # per exit: Exit.lookup
    # Native units: run(R, countdown, jump_cache) -> (unit that exited, its exit, units chained
    # to in machine code, at most countdown - 1 of them); see CpuLoop.run.
    chained: Callable[[list[int], int, Any], tuple[Any, int, int]] | None = None

    def __post_init__(self) -> None:
        self.links = [None] * len(self.exits)
        self.lookups = [e.lookup for e in self.exits]


def runtime_namespace() -> dict[str, Any]:
    """Names every generated unit may use besides the softmmu and helpers."""
    return {"_mulh": _mulh, "_mulhsu": _mulhsu, "_divs": _divs, "_rems": _rems}


class _Gen:
    def __init__(self, layout: StateLayout, internal: dict[int, int], blocks: list[Block]) -> None:
        self.layout = layout
        self.internal = internal
        self.blocks = blocks
        self.cur = 0
        self.loop_j: int | None = None     # block whose body is being emitted as an inner loop
        # Internal edges per target, and DFS preorder from the head: every cycle has
        # an edge to a lower-or-equal preorder, so only those check the budget.
        self.preds = [0] * len(blocks)
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
                k = internal.get(succ)
                if k is not None and k not in seen:
                    stack.append(k)
        for blk in blocks:
            for succ in blk.successors():
                k = internal.get(succ)
                if k is not None:
                    self.preds[k] += 1
        # Tiny blocks (a few ops and a branch, e.g. a loop's condition) are copied into
        # their jump sites instead of going through the dispatcher, one level deep.
        self.small = [i != 0 and _small(b) for i, b in enumerate(blocks)]
        self.copying = False
        self.emitting: list[int] = []      # blocks being emitted, outermost first
        self.targets: list[int] = []       # blocks entered through the dispatcher, in first-use order
        self.exits: list[Exit] = []
        self.lines: list[str] = []
        self.reads: set[int] = set()
        self.writes: set[int] = set()
        self.uses_budget = False
        self._pending_reads: dict = {}     # temp -> guest registers its pending expression reads

    # ---- operands ------------------------------------------------------
    def name(self, t: Temp) -> str:
        if t.is_global:
            self.reads.add(t.index)
            return f"r{t.index}"
        return f"t{t.index}"

    def val(self, v: Value, pending: dict, raw: bool = False) -> str:
        if isinstance(v, int):
            return hex(v)
        if v in pending:
            masked, unmasked, _ = pending.pop(v)
            return f"({unmasked})" if raw and unmasked else f"({masked})"
        return self.name(v)

    # ---- expressions ---------------------------------------------------
    def expr(self, ins: Insn, pending: dict) -> tuple[str, str | None]:
        """(masked expression, optional unmasked form usable as a load/store address)."""
        op = ins.op
        # Ops that only look at low bits may take an operand's unmasked form.
        low = op in ("sext", "zext") or (op == "and" and isinstance(ins.args[1], int))
        a = self.val(ins.args[0], pending, raw=low)
        b = self.val(ins.args[1], pending) if len(ins.args) > 1 else ""
        if op == "mov":
            return a, None
        if ins.attrs.get("low32") and op in ("add", "sub", "mul", "shl"):
            m, raw = self._arith(ins, a, b)
            return raw, raw
        return self._arith(ins, a, b)

    def _arith(self, ins: Insn, a: str, b: str) -> tuple[str, str | None]:
        op = ins.op
        if op == "add":
            c = ins.args[1]
            if isinstance(c, int) and c >> 63:
                # A negative offset: subtracting keeps the unmasked form (an address)
                # below 2**64, where a TLB key can hit.
                b = hex(MASK64 + 1 - c)
                return f"({a} - {b}) & {M}", f"{a} - {b}"
            return f"({a} + {b}) & {M}", f"{a} + {b}"
        if op == "sub":
            return f"({a} - {b}) & {M}", f"{a} - {b}"
        if op == "mul":
            return f"({a} * {b}) & {M}", f"{a} * {b}"
        if op == "and":
            return f"{a} & {b}", None
        if op == "or":
            return f"{a} | {b}", None
        if op == "xor":
            return f"{a} ^ {b}", None
        if op == "shl":
            return f"({a} << {b}) & {M}", f"{a} << {b}"
        if op == "shr":
            return f"{a} >> {b}", None
        if op == "sar":
            return f"((({a} ^ {S}) - {S}) >> {b}) & {M}", None
        if op == "mulhu":
            return f"({a} * {b}) >> 64", None
        if op in ("mulh", "mulhsu", "divs", "rems"):
            return f"_{op}({a}, {b})", None
        if op == "divu":
            return f"{a} // {b} if {b} else {M}", None
        if op == "remu":
            return f"{a} % {b} if {b} else {a}", None
        if op == "sext":
            bits = ins.attrs["bits"]
            low_mask = (1 << bits) - 1
            # A conditional is cheaper than xor/sub/mask in CPython; s_ is evaluated
            # before any enclosing use, so nested forms do not clash.
            return (f"s_ if (s_ := {a} & {hex(low_mask)}) < {hex(1 << (bits - 1))} "
                    f"else s_ | {hex(MASK64 ^ low_mask)}"), None
        if op == "zext":
            return f"{a} & {hex((1 << ins.attrs['bits']) - 1)}", None
        if op == "setcond":
            return f"1 if {self.cond(ins.attrs['cond'], ins.args, a, b)} else 0", None
        raise ValueError(f"backend: unknown op {op}")

    @staticmethod
    def cond(cond: str, args: list[Value], a: str, b: str) -> str:
        if cond == "eq":
            return f"{a} == {b}"
        if cond == "ne":
            return f"{a} != {b}"
        if cond == "ltu":
            return f"{a} < {b}"
        if cond == "geu":
            return f"{a} >= {b}"
        zero = isinstance(args[1], int) and args[1] == 0
        if cond == "lt":
            return f"{a} >= {S}" if zero else f"({a} ^ {S}) < ({b} ^ {S})"
        if cond == "ge":
            return f"{a} < {S}" if zero else f"({a} ^ {S}) >= ({b} ^ {S})"
        raise ValueError(f"backend: unknown condition {cond}")

    # ---- blocks --------------------------------------------------------
    def block(self, blk: Block, ind: str, looped: bool) -> None:
        saved, cur = self._pending_reads, self.cur
        self._pending_reads = {}
        self.cur = self.internal.get(blk.pc, 0)
        self.emitting.append(self.cur)
        try:
            self._block(blk, ind, looped)
        finally:
            self._pending_reads, self.cur = saved, cur
            self.emitting.pop()

    def _block(self, blk: Block, ind: str, looped: bool) -> None:
        emit = self.lines.append
        uses: dict[Temp, int] = {}
        for ins in blk.insns:
            for a in ins.args:
                if isinstance(a, Temp) and not a.is_global:
                    uses[a] = uses.get(a, 0) + 1
        pending: dict[Temp, tuple[str, str | None, frozenset[int]]] = {}
        emit(f"{ind}ic += {blk.n_guest}")
        n, k = blk.n_guest, -1
        pc = blk.pc
        ic = self.layout.icount_slot

        def back() -> int:
            return n - k

        def flush_readers(g: int) -> None:
            for t, (masked, _, rd) in list(pending.items()):
                if g in rd:
                    del pending[t]
                    emit(f"{ind}t{t.index} = {masked}")

        def target(v: Value) -> str:
            return self.name(v) if isinstance(v, Temp) and v.is_global else f"t{v.index}"

        def assign(d: Temp, rhs: str) -> None:
            if d.is_global:
                flush_readers(d.index)
                self.writes.add(d.index)
            emit(f"{ind}{target(d)} = {rhs}")

        for ins in blk.insns:
            op = ins.op
            if op == "insn_start":
                k += 1
                pc = ins.attrs["pc"]
                continue
            if op in PURE_OPS:
                d = ins.dst
                if d is None:
                    continue
                before = set(pending)
                masked, unmasked = self.expr(ins, pending)
                if not d.is_global and uses.get(d, 0) == 1:
                    rd = frozenset(a.index for a in ins.args if isinstance(a, Temp) and a.is_global)
                    rd = rd | self._inlined_reads(ins, before, pending)
                    pending[d] = (masked, unmasked, rd)
                    self._pending_reads[d] = rd
                else:
                    assign(d, masked)
                continue
            if op == "ld":
                size, signed = ins.attrs["size"], ins.attrs["signed"]
                a = self._addr(ins.args[0], pending, ind)
                d = ins.dst
                if d.is_global:
                    flush_readers(d.index)
                    self.writes.add(d.index)
                # A TLB miss is a KeyError: in 3.11 the try costs nothing on a hit.
                fast = f"{_VIEW[(size, signed)]}[({a} + _tr[{a} & {_KEYMASK[size]}]){_SHIFT[size]}]"
                wrap = signed and not ins.attrs.get("low32")
                emit(f"{ind}try: {target(d)} = {fast}" + (f" & {M}" if wrap else ""))
                emit(f"{ind}except KeyError: {target(d)} = _ld({a}, {size}, {signed}, {hex(pc)}, {back()})")
                continue
            if op == "st":
                size = ins.attrs["size"]
                a = self._addr(ins.args[0], pending, ind)
                value = self.val(ins.args[1], pending)
                if _VMASK[size]:
                    emit(f"{ind}v_ = {value}{_VMASK[size]}")
                    value = "v_"
                elif not _simple(value):
                    emit(f"{ind}v_ = {value}")
                    value = "v_"
                emit(f"{ind}try: {_VIEW[(size, False)]}[({a} + _tw[{a} & {_KEYMASK[size]}]){_SHIFT[size]}] = {value}")
                emit(f"{ind}except KeyError: _st({a}, {size}, {value}, {hex(pc)}, {back()})")
                continue
            if op == "call":
                args = [self.val(a, pending) for a in ins.args]
                if ins.attrs.get("sync"):
                    emit(f"{ind}R[{ic}] += ic - {back()}")
                    emit(f"{ind}ic = {back()}")
                if ins.attrs.get("raises"):
                    args += [hex(pc), str(back())]
                call = f"h_{ins.attrs['helper']}({', '.join(args)})"
                if ins.dst is None:
                    emit(f"{ind}{call}")
                else:
                    assign(ins.dst, call)
                continue
            if op == "goto_tb":
                self.jump(ins.attrs["pc"], ind, looped)
                continue
            if op == "brcond":
                a = self.val(ins.args[0], pending)
                b = self.val(ins.args[1], pending)
                emit(f"{ind}if {self.cond(ins.attrs['cond'], ins.args, a, b)}:")
                self.jump(ins.attrs["taken"], ind + "    ", looped)
                emit(f"{ind}else:")
                self.jump(ins.attrs["fall"], ind + "    ", looped)
                continue
            if op == "exit_tb":
                v = self.val(ins.args[0], pending)
                if looped and ins.attrs.get("lookup"):
                    # An indirect jump back to the head (a return into the loop that
                    # called out) stays inside; other blocks' entry facts assume
                    # they are only reached by direct jumps, so only the head.
                    if not _simple(v):
                        emit(f"{ind}x_ = {v}")
                        v = "x_"
                    head = self.blocks[0].pc
                    self.uses_budget = True
                    emit(f"{ind}if {v} == {hex(head)} and ic < {BUDGET}:")
                    self._goto(0, ind + "    ")
                self.exit(None, v, ind, looped, chainable=False, lookup=bool(ins.attrs.get("lookup")))
                continue
            raise ValueError(f"backend: unknown op {op}")

    def _addr(self, v: Value, pending: dict, ind: str) -> str:
        """An address operand as a plain name, binding expressions to ``a_`` first."""
        addr = self.val(v, pending, raw=True)
        if _simple(addr):
            return addr
        self.lines.append(f"{ind}a_ = {addr}")
        return "a_"

    def _inlined_reads(self, ins: Insn, before: set, pending: dict) -> frozenset[int]:
        out: set[int] = set()
        for a in ins.args:
            if isinstance(a, Temp) and not a.is_global and a in before and a not in pending:
                out |= self._pending_reads.get(a, frozenset())
        return frozenset(out)

    def jump(self, pc: int, ind: str, looped: bool) -> None:
        j = self.internal.get(pc)
        if j is not None and looped:
            if j != 0 and self.preds[j] == 1 and len(ind) < 4 * INLINE_INDENT:
                self.block(self.blocks[j], ind, looped)    # only way in: emit it right here
                return
            if (self.small[j] and not self.copying and j != self.loop_j and j not in self.emitting
                    and len(ind) < 4 * INLINE_INDENT):
                self._copy_small(j, pc, ind, looped)
                return
            if j not in self.targets:
                self.targets.append(j)
            if j != self.loop_j and self.order[j] > self.order[self.cur]:
                self._goto(j, ind)                      # forward edge: no cycle closes here
                return
            self.uses_budget = True
            self.lines.append(f"{ind}if ic < {BUDGET}:")
            self._goto(j, ind + "    ")
        self.exit(pc, hex(pc), ind, looped, chainable=True)

    def _copy_small(self, j: int, pc: int, ind: str, looped: bool) -> None:
        """Emit tiny block ``j`` at this jump site.  An edge that may close a cycle
        keeps its budget check, in front of the copy."""
        inner = ind
        check = self.order[j] <= self.order[self.cur]
        if check:
            self.uses_budget = True
            self.lines.append(f"{ind}if ic < {BUDGET}:")
            inner = ind + "    "
        self.copying = True
        try:
            self.block(self.blocks[j], inner, looped)
        finally:
            self.copying = False
        if check:
            self.exit(pc, hex(pc), ind, looped, chainable=True)

    def _goto(self, j: int, ind: str) -> None:
        """Transfer to region block ``j``: the inner loop of a self-looping block
        continues in place; anything else goes through the dispatcher."""
        if j == self.loop_j:
            self.lines.append(f"{ind}continue")
            return
        self.lines.append(f"{ind}L = {j}" if len(self.internal) > 1 else f"{ind}pass")
        self.lines.append(f"{ind}{'break' if self.loop_j is not None else 'continue'}")

    def exit(self, pc: int | None, value: str, ind: str, looped: bool, chainable: bool,
             lookup: bool = False) -> None:
        k = len(self.exits)
        self.exits.append(Exit(pc, chainable, lookup))
        self.lines.append(f"{ind}R[{self.layout.pc_slot}] = {value}")
        self.lines.append(f"{ind}ex = {k}")
        if self.loop_j is not None:
            self.lines.append(f"{ind}L = -1")          # leave the inner loop and the unit
        if looped:
            self.lines.append(f"{ind}break")


def _dispatch(keys: list[int], bodies: dict[int, list[str]], ind: str, out: list[str]) -> None:
    """Emit the bodies as a balanced if-tree on ``L``."""
    if len(keys) == 1:
        out.extend(ind + line for line in bodies[keys[0]])
        return
    if len(keys) == 2:
        out.append(f"{ind}if L == {keys[0]}:")
        out.extend(ind + "    " + line for line in bodies[keys[0]])
        out.append(f"{ind}else:")
        out.extend(ind + "    " + line for line in bodies[keys[1]])
        return
    mid = len(keys) // 2
    out.append(f"{ind}if L < {keys[mid]}:")
    _dispatch(keys[:mid], bodies, ind + "    ", out)
    out.append(f"{ind}else:")
    _dispatch(keys[mid:], bodies, ind + "    ", out)


def _small(blk: Block) -> bool:
    n = 0
    for ins in blk.insns:
        if ins.op == "call":
            return False
        if ins.op != "insn_start":
            n += 1
    return n <= SMALL_BLOCK


def loops_to_itself(blocks: list[Block], internal: dict[int, int], preds: list[int], small: list[bool],
                    j: int) -> bool:
    """Whether block ``j`` jumps back to itself, directly or through blocks that are
    emitted inline (at their only jump site, or copied when tiny), so that the back
    edge is inside its body. ``internal`` maps a pc to its block's index, ``preds``
    counts each block's jump sites and ``small`` marks the tiny ones. The native tier
    lays regions out by the same decision, so it calls this too."""
    pc = blocks[j].pc
    seen: set[tuple[int, bool]] = set()
    stack = [(succ, False) for succ in blocks[j].successors()]
    while stack:
        succ, copied = stack.pop()
        if succ == pc:
            return True
        k = internal.get(succ)
        if k is None or k == 0:
            continue
        if preds[k] != 1:
            if copied or not small[k]:
                continue
            copied = True
        if (k, copied) in seen:
            continue
        seen.add((k, copied))
        stack.extend((s, copied) for s in blocks[k].successors())
    return False


def compile_unit(blocks: list[Block], layout: StateLayout, namespace: dict[str, Any],
                 name: str = "unit") -> CompiledUnit:
    """Compile ``blocks`` (head first) into one function."""
    internal = {b.pc: i for i, b in enumerate(blocks)}
    looped = len(blocks) > 1 or blocks[0].pc in blocks[0].successors()
    g = _Gen(layout, internal, blocks)
    bodies: dict[int, list[str]] = {}
    g.targets.append(0)
    k = 0
    while k < len(g.targets):          # blocks never jumped to inside the region get no entry
        j = g.targets[k]
        g.lines = []
        if len(blocks) > 1 and loops_to_itself(g.blocks, g.internal, g.preds, g.small, j):
            # A self-looping block spins in its own while loop, skipping the dispatcher.
            g.loop_j = j
            g.block(blocks[j], "    ", looped)
            g.loop_j = None
            g.lines = ["while True:"] + g.lines + ["if L < 0:", "    break"]
        else:
            g.block(blocks[j], "", looped)
        bodies[j] = g.lines
        k += 1
    body: list[str] = []
    base = "            " if looped else "        "
    if len(blocks) > 1:
        _dispatch(sorted(bodies), bodies, base, body)
    else:
        body.extend(base + line for line in bodies[0])
    regs = sorted(g.reads | g.writes)
    written = sorted(g.writes)
    ic = layout.icount_slot
    out = [f"def {name}(R):"]
    if regs:
        out.append("    " + "; ".join(f"r{r} = R[{r}]" for r in regs))
    out.append("    ic = 0")
    if len(blocks) > 1:
        out.append("    L = 0")
    out.append("    try:")
    if looped:
        out.append("        while True:")
    out.extend(body)
    out.append("    except _UnitExit as e:")
    store = "; ".join(f"R[{r}] = r{r}" for r in written)
    if store:
        out.append(f"        {store}")
    out.append(f"        R[{ic}] += ic - e.back")
    out.append("        raise")
    if store:
        out.append(f"    {store}")
    out.append(f"    R[{ic}] += ic")
    out.append("    return ex")
    source = "\n".join(out) + "\n"
    code = compile(source, f"<tcg {name} {blocks[0].pc:#x}>", "exec")
    local: dict[str, Any] = {}
    exec(code, namespace, local)
    return CompiledUnit(local[name], g.exits, [b.pc for b in blocks], source)
