"""Block-local IR optimizer: constant/copy propagation, folding, simplification, known bits, dead temps.

Known bits: for every value the pass tracks an upper bound on its width
(value < 2**width) and whether it is already a sign-extended 32-bit value; a
``sext``/``zext``/``and`` that cannot change its operand becomes a ``mov``.

Guest-state writes are never removed while a trap could still observe them: a
pure write of a guest slot dies only when the slot is rewritten before any
``ld``/``st``/``call`` (each may trap) or block end, and a trapping op's own
destination does not count as a rewrite (it is written only if the op does not
trap).  Block-local temporaries die when unused.  ``evaluate`` is also the
reference semantics of the pure ops, used by tests to check backends.
"""

from __future__ import annotations

from kvmpy.tcg.ir import MASK64, PURE_OPS, SIGN64, TERMINATORS, Block, Insn, Temp, Value


def _s(v: int) -> int:
    return v - (1 << 64) if v & SIGN64 else v


def _trunc_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def evaluate(op: str, args: list[int], attrs: dict) -> int:
    """Reference semantics of a pure op on 64-bit unsigned constants."""
    a = args[0]
    b = args[1] if len(args) > 1 else 0
    if op == "mov":
        return a
    if op == "add":
        return (a + b) & MASK64
    if op == "sub":
        return (a - b) & MASK64
    if op == "mul":
        return (a * b) & MASK64
    if op == "and":
        return a & b
    if op == "or":
        return a | b
    if op == "xor":
        return a ^ b
    if op == "shl":
        return (a << (b & 63)) & MASK64
    if op == "shr":
        return a >> (b & 63)
    if op == "sar":
        return (_s(a) >> (b & 63)) & MASK64
    if op == "mulh":
        return ((_s(a) * _s(b)) >> 64) & MASK64
    if op == "mulhu":
        return (a * b) >> 64
    if op == "mulhsu":
        return ((_s(a) * b) >> 64) & MASK64
    if op == "divu":
        return a // b if b else MASK64
    if op == "remu":
        return a % b if b else a
    if op == "divs":
        if b == 0:
            return MASK64
        if a == SIGN64 and b == MASK64:
            return SIGN64
        return _trunc_div(_s(a), _s(b)) & MASK64
    if op == "rems":
        if b == 0:
            return a
        if a == SIGN64 and b == MASK64:
            return 0
        sa, sb = _s(a), _s(b)
        return (sa - sb * _trunc_div(sa, sb)) & MASK64
    if op == "sext":
        bits = attrs["bits"]
        v = a & ((1 << bits) - 1)
        return (v - (1 << bits) if v >> (bits - 1) else v) & MASK64
    if op == "zext":
        return a & ((1 << attrs["bits"]) - 1)
    if op == "setcond":
        return int(compare(attrs["cond"], a, b))
    raise ValueError(f"not a pure op: {op}")


def compare(cond: str, a: int, b: int) -> bool:
    if cond == "eq":
        return a == b
    if cond == "ne":
        return a != b
    if cond == "ltu":
        return a < b
    if cond == "geu":
        return a >= b
    if cond == "lt":
        return _s(a) < _s(b)
    if cond == "ge":
        return _s(a) >= _s(b)
    raise ValueError(f"unknown condition {cond}")


def _simplify(ins: Insn) -> None:
    """Algebraic identities with one constant operand, rewriting ``ins`` in place."""
    op, args = ins.op, ins.args
    if len(args) != 2:
        return
    a, b = args
    if isinstance(a, int) and op in ("add", "mul", "and", "or", "xor"):
        a, b = b, a          # commutative: constant second
        ins.args = [a, b]
    if not isinstance(b, int):
        if op in ("sub", "xor") and a == b:
            ins.op, ins.args = "mov", [0]
        return
    if (op in ("add", "sub", "or", "xor", "shl", "shr", "sar") and b == 0) or \
            (op == "and" and b == MASK64) or (op == "mul" and b == 1):
        ins.op, ins.args = "mov", [a]
    elif (op == "and" or op == "mul") and b == 0:
        ins.op, ins.args = "mov", [0]
    elif op == "sub":
        ins.op, ins.args = "add", [a, (-b) & MASK64]


_UNKNOWN = (64, False)
_UNSIGNED = {"lt": "ltu", "ge": "geu"}
_SX32_LO, _SX32_HI = 1 << 31, MASK64 - (1 << 31)


def _const_facts(v: int) -> tuple[int, bool]:
    return v.bit_length(), v < _SX32_LO or v >= _SX32_HI


def _known_bits(ins: Insn, facts: dict[Temp, tuple[int, bool]]) -> tuple[int, bool]:
    """Rewrite ``ins`` if its operand already has the result's form; return the result's facts.

    Facts are (width, sx32): value < 2**width, and value == sext32(value).
    """
    def f(v: Value) -> tuple[int, bool]:
        return _const_facts(v) if isinstance(v, int) else facts.get(v, _UNKNOWN)

    op, args = ins.op, ins.args
    if op == "ld":
        size = ins.attrs["size"]
        if ins.attrs["signed"]:
            return 64, size <= 4
        return 8 * size, size < 4
    if op not in PURE_OPS:
        return _UNKNOWN
    if op == "mov":
        return f(args[0])
    if op == "setcond":
        return 1, True
    wa, sa = f(args[0])
    if op == "sext":
        bits = ins.attrs["bits"]
        if wa < bits or (bits == 32 and sa):
            ins.op, ins.attrs = "mov", {}
            return wa, sa
        return 64, bits <= 32
    if op == "zext":
        bits = ins.attrs["bits"]
        if wa <= bits:
            ins.op, ins.attrs = "mov", {}
            return wa, sa
        return bits, bits < 32
    wb, sb = f(args[1]) if len(args) > 1 else _UNKNOWN
    w = 64
    if op == "and":
        if isinstance(args[1], int) and wa < 64 and (args[1] | ~((1 << wa) - 1)) & MASK64 == MASK64:
            ins.op, ins.args = "mov", [args[0]]
            return wa, sa
        w = min(wa, wb)
        return w, (sa and sb) or w < 32
    if op in ("or", "xor"):
        w = max(wa, wb)
        return w, (sa and sb) or w < 32
    if op == "shr":
        w = max(wa - args[1], 0) if isinstance(args[1], int) else wa
    elif op == "shl":
        w = min(wa + args[1], 64) if isinstance(args[1], int) else 64
    elif op == "add":
        w = min(max(wa, wb) + 1, 64)
    elif op == "mul":
        w = min(wa + wb, 64)
    elif op == "remu":
        w = wa                   # x % 0 == x, else smaller than x
    elif op == "sar":
        return (wa if wa < 64 else 64), sa
    return w, w < 32


Facts = dict[Temp, tuple[int, bool]]
_LOW32_HINT = frozenset({"add", "sub", "mul", "shl", "ld"})
_LOW_IF_RESULT_LOW = frozenset({"mov", "add", "sub", "mul", "and", "or", "xor"})


def _reads_low(ins: Insn, k: int, result_low: bool) -> bool:
    """Whether operand ``k`` of ``ins`` only matters through its low 32 bits."""
    op = ins.op
    if op in ("sext", "zext"):
        return ins.attrs["bits"] <= 32
    if op == "and" and isinstance(ins.args[1], int) and ins.args[1] < (1 << 32):
        return True
    if op in _LOW_IF_RESULT_LOW or (op == "shl" and k == 0):
        return result_low
    return False


def optimize(block: Block, entry: Facts | None = None, exit_facts: Facts | None = None) -> Block:
    """Optimize ``block`` in place and return it.

    ``entry``: known bits of guest-state slots when the block starts (only valid
    when every way into the block guarantees them); ``exit_facts`` is filled
    with those at the terminator.
    """
    known: dict[Temp, Value] = {}   # temp -> constant or temp it copies
    facts: Facts = dict(entry) if entry else {}

    def resolve(v: Value) -> Value:
        return known.get(v, v) if isinstance(v, Temp) else v

    copies: dict[Temp, list[Temp]] = {}    # temp -> temps recorded as copies of it

    def kill(t: Temp) -> None:
        known.pop(t, None)
        for k in copies.pop(t, ()):
            if known.get(k) == t:
                del known[k]

    out: list[Insn] = []
    for ins in block.insns:
        ins.args = [resolve(a) for a in ins.args]
        if ins.op in PURE_OPS:
            _simplify(ins)
            if all(isinstance(a, int) for a in ins.args):
                ins.args = [evaluate(ins.op, ins.args, ins.attrs)]
                ins.op = "mov"
                ins.attrs = {}
        elif ins.op == "brcond" and all(isinstance(a, int) for a in ins.args):
            target = ins.attrs["taken"] if compare(ins.attrs["cond"], *ins.args) else ins.attrs["fall"]
            ins = Insn("goto_tb", None, [], {"pc": target})
        if ins.op in ("brcond", "setcond") and ins.attrs["cond"] in _UNSIGNED:
            # Signed order equals unsigned order when neither operand has bit 63 set.
            if all((_const_facts(a) if isinstance(a, int) else facts.get(a, _UNKNOWN))[0] < 64
                   for a in ins.args):
                ins.attrs = {**ins.attrs, "cond": _UNSIGNED[ins.attrs["cond"]]}
        d = ins.dst
        if d is not None:
            facts[d] = _known_bits(ins, facts)
            if ins.op == "mov" and ins.args[0] == d:
                continue            # an extension of a value that already had its form
            kill(d)
            if ins.op == "mov":
                src = ins.args[0]
                known[d] = src          # a copy of a global is valid until the global changes
                if not isinstance(src, int):
                    copies.setdefault(src, []).append(d)
        out.append(ins)

    # Walk backwards: drop pure defs of unused temps, and pure writes of a global
    # that is written again before anything reads it or could trap.
    # Also demanded bits: a value is "low" when its later reads (up to the next
    # write) only look at its low 32 bits, and, for guest state, no trap point or
    # block end can observe it; a sign extension producing it becomes a mov.
    used: set[Temp] = set()
    shadowed: set[Temp] = set()
    full: set[Temp] = set()          # values some later read needs all 64 bits of
    quiet: set[Temp] = set()         # globals rewritten before any trap point / block end
    live: list[Insn] = []
    for ins in reversed(out):
        d = ins.dst
        if ins.op in PURE_OPS and d is not None:
            if (not d.is_global and d not in used) or (d.is_global and d in shadowed):
                continue
        if d is not None:
            result_low = d not in full and (not d.is_global or d in quiet)
            if result_low and ins.op == "sext" and ins.attrs["bits"] == 32:
                ins.op, ins.attrs = "mov", {}
            elif ins.op in _LOW32_HINT:
                # Backend hint: the result may be left unmasked (any integer with
                # the right low 32 bits).
                if result_low:
                    ins.attrs = {**ins.attrs, "low32": True}
                elif "low32" in ins.attrs:
                    ins.attrs = {k: v for k, v in ins.attrs.items() if k != "low32"}
            full.discard(d)          # the value before this write has no later readers yet
            if d.is_global:
                quiet.add(d)
            for k, a in enumerate(ins.args):
                if isinstance(a, Temp) and not _reads_low(ins, k, result_low):
                    full.add(a)
        else:
            for k, a in enumerate(ins.args):
                if isinstance(a, Temp) and not (ins.op == "st" and k == 1 and ins.attrs["size"] <= 4):
                    full.add(a)
        may_trap = ins.op in ("ld", "st", "call")
        if may_trap or ins.op in TERMINATORS:
            shadowed.clear()
            quiet.clear()            # a trap sees exact guest state
        if d is not None and d.is_global and not may_trap:
            # A load or helper that traps never writes its destination, so the
            # value before it is what the trap handler sees: not shadowed.
            shadowed.add(d)
        for a in ins.args:
            if isinstance(a, Temp):
                shadowed.discard(a)
        for a in ins.args:
            if isinstance(a, Temp):
                used.add(a)
        live.append(ins)
    live.reverse()
    block.insns = _coalesce(live)
    if exit_facts is not None:
        exit_facts.update((t, f) for t, f in facts.items() if t.is_global)
    return block


def _coalesce(insns: list[Insn]) -> list[Insn]:
    """``t = op ...; ...; mov g, t`` -> ``g = op ...``, later reads of t read g.

    Only when nothing between the two reads or writes g or can trap (the write
    to g moves earlier), and g is not rewritten while t is still read.
    """
    defs: dict[Temp, int] = {}
    out = list(insns)
    for y, ins in enumerate(out):
        if ins is None:
            continue
        if ins.dst is not None and not ins.dst.is_global:
            defs[ins.dst] = y
        if ins.op != "mov" or not ins.dst.is_global or not isinstance(ins.args[0], Temp):
            continue
        t, g = ins.args[0], ins.dst
        x = defs.get(t)
        if t.is_global or x is None or not (out[x].op in PURE_OPS or out[x].op == "ld"):
            continue
        between = [i for i in out[x + 1:y] if i is not None]
        if any(i.op in ("ld", "st", "call") or i.dst == g or g in i.args for i in between):
            continue
        later = [i for i in out[y + 1:] if i is not None]
        ok = True
        g_rewritten = False
        for i in later:
            if g_rewritten and t in i.args:
                ok = False
                break
            if i.dst == g:
                g_rewritten = True
        if not ok:
            continue
        out[x] = Insn(out[x].op, g, out[x].args, out[x].attrs)
        out[y] = None
        for i in between + later:      # reads between the two: g is not touched there
            if t in i.args:
                i.args = [g if a == t else a for a in i.args]
    return [i for i in out if i is not None]


def _meet(a: Facts, b: Facts) -> Facts:
    # Differing widths widen straight to unknown, so the fixpoint below is reached quickly.
    out: Facts = {}
    for t, (w, s) in a.items():
        other = b.get(t)
        if other is None:
            continue
        w2, s2 = other
        f = (w if w == w2 else 64, s and s2)
        if f != _UNKNOWN:
            out[t] = f
    return out


def _copy(block: Block) -> Block:
    return Block(block.pc, [Insn(i.op, i.dst, list(i.args), dict(i.attrs)) for i in block.insns],
                 block.n_guest, block.size, block.disasm)


def optimize_region(blocks: list[Block], max_rounds: int = 8) -> list[Block]:
    """Re-optimize copies of a region's blocks (head first) with the known bits
    that hold on entry to each block from its predecessors inside the region.

    Only the head is entered from outside; the others are reached through
    internal jumps only, which is what makes their entry facts valid.  Returns
    the blocks unchanged if the fixpoint takes more than ``max_rounds`` passes
    per block.
    """
    index = {b.pc: i for i, b in enumerate(blocks)}
    entry: list[Facts | None] = [None] * len(blocks)
    entry[0] = {}
    result = list(blocks)
    work = [0]                      # blocks whose entry facts changed since their last pass
    budget = max_rounds * len(blocks)
    while work:
        budget -= 1
        if budget < 0:
            return list(blocks)
        i = work.pop()
        out: Facts = {}
        result[i] = optimize(_copy(blocks[i]), entry[i], out)
        for succ in result[i].successors():
            j = index.get(succ)
            if j is None or j == 0:
                continue
            new = dict(out) if entry[j] is None else _meet(entry[j], out)
            if new != entry[j]:
                entry[j] = new
                if j not in work:
                    work.append(j)
    return result
