"""The optimizer and the Python backend agree with the IR reference semantics."""

from __future__ import annotations

import random

from kvmpy.tcg.backend_py import StateLayout, compile_unit, runtime_namespace
from kvmpy.tcg.errors import GuestTrap
from kvmpy.tcg.ir import MASK64, Builder, Temp
from kvmpy.tcg.optimizer import evaluate, optimize

OPS = ["add", "sub", "mul", "and", "or", "xor", "shl", "shr", "sar", "mulh", "mulhu", "mulhsu",
       "divs", "divu", "rems", "remu"]
EDGE = [0, 1, 2, 63, 64, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, (1 << 63) - 1, 1 << 63, MASK64, MASK64 - 1]
LAYOUT = StateLayout(6, 4, 5)


def _run(block, regs):
    ns = runtime_namespace()
    ns["GuestTrap"] = GuestTrap
    ns["_UnitExit"] = (GuestTrap,)
    unit = compile_unit([block], LAYOUT, ns)
    R = list(regs) + [0, 0]
    unit.fn(R)
    return R


def test_backend_matches_reference_semantics():
    rng = random.Random(3)
    for _ in range(300):
        op = rng.choice(OPS)
        a = rng.choice(EDGE) if rng.random() < 0.5 else rng.getrandbits(64)
        b = rng.choice(EDGE) if rng.random() < 0.5 else rng.getrandbits(64)
        if op in ("shl", "shr", "sar"):
            b &= 63
        bl = Builder(0x1000)
        bl.insn_start(0x1000)
        bl.emit(op, Temp(0, True), Temp(1, True), Temp(2, True))
        t = bl.op("sext", Temp(0, True), bits=32)
        bl.emit("zext", Temp(3, True), t, bits=16)
        bl.emit("goto_tb", None, pc=0x1004)
        R = _run(bl.block, [0, a, b, 0])
        want = evaluate(op, [a, b], {})
        assert R[0] == want, (op, hex(a), hex(b))
        assert R[3] == evaluate("zext", [evaluate("sext", [want], {"bits": 32})], {"bits": 16})
        assert R[4] == 0x1004 and R[5] == 1


def test_constants_fold_and_dead_writes_go():
    bl = Builder(0)
    bl.insn_start(0)
    g1, g2 = Temp(1, True), Temp(2, True)
    bl.emit("mov", g1, 5)
    bl.emit("add", g1, g1, 7)            # folds to 12; the first write is dead
    t = bl.op("mul", g1, 3)
    bl.emit("mov", g2, t)
    bl.emit("brcond", None, g1, 12, cond="eq", taken=0x40, fall=0x44)
    blk = optimize(bl.block)
    ops = [(i.op, i.args) for i in blk.insns if i.op != "insn_start"]
    assert ops == [("mov", [12]), ("mov", [36]), ("goto_tb", [])]
    assert blk.insns[-1].attrs["pc"] == 0x40


def test_known_bits_drop_redundant_extensions():
    bl = Builder(0)
    bl.insn_start(0)
    g1, g2, g3, g4 = (Temp(i, True) for i in (1, 2, 3, 4))
    bl.emit("ld", g1, g4, size=4, signed=True)
    bl.emit("sext", g2, g1, bits=32)                      # lw result is already sign-extended
    t = bl.op("shr", bl.op("zext", g3, bits=32), 7)       # srliw: < 2**25
    bl.emit("sext", g3, t, bits=32)
    bl.emit("and", g4, g3, 0xFFFFFFFF)
    bl.emit("sext", g1, bl.op("add", g1, g2), bits=32)    # may carry into bit 31: kept
    bl.emit("goto_tb", None, pc=4)
    ops = [i.op for i in optimize(bl.block).insns if i.op != "insn_start"]
    assert ops == ["ld", "mov", "zext", "shr", "mov", "add", "sext", "goto_tb"]   # shr writes g3


def test_known_bits_random_chains_match_reference():
    rng = random.Random(11)
    unary = [("sext", 8), ("sext", 16), ("sext", 32), ("zext", 8), ("zext", 16), ("zext", 32)]
    for _ in range(400):
        regs = [rng.choice(EDGE) if rng.random() < 0.5 else rng.getrandbits(64) for _ in range(4)]
        bl = Builder(0)
        bl.insn_start(0)
        vals = {i: regs[i] for i in range(4)}
        for _ in range(6):
            d, a = rng.randrange(4), rng.randrange(4)
            if rng.random() < 0.5:
                op, bits = rng.choice(unary)
                bl.emit(op, Temp(d, True), Temp(a, True), bits=bits)
                vals[d] = evaluate(op, [vals[a]], {"bits": bits})
            else:
                op = rng.choice(["add", "sub", "mul", "and", "or", "xor", "shl", "shr", "sar", "remu", "divu"])
                b = rng.choice([Temp(rng.randrange(4), True), rng.randrange(64), 0xFFFFFFFF])
                bv = vals[b.index] if isinstance(b, Temp) else b
                if op in ("shl", "shr", "sar"):
                    b, bv = rng.randrange(64), None
                    bv = b
                bl.emit(op, Temp(d, True), Temp(a, True), b)
                vals[d] = evaluate(op, [vals[a], bv], {})
        bl.emit("goto_tb", None, pc=4)
        R = _run(optimize(bl.block), regs)
        assert R[:4] == [vals[i] for i in range(4)]


def _blk(pc, body, term):
    bl = Builder(pc)
    bl.insn_start(pc)
    body(bl)
    bl.emit(*term[0], **term[1])
    return optimize(bl.block)


def test_region_facts_flow_between_blocks_only_when_all_paths_agree():
    g1, g2, g3 = Temp(1, True), Temp(2, True), Temp(3, True)
    head = _blk(0x0, lambda b: b.emit("ld", g1, g3, size=4, signed=True),
                (("brcond", None, g3, 0), {"cond": "eq", "taken": 0x10, "fall": 0x20}))
    other = _blk(0x20, lambda b: b.emit("mov", g2, g3), (("goto_tb", None), {"pc": 0x10}))
    tail = _blk(0x10, lambda b: (b.emit("sext", g2, g1, bits=32), b.emit("sext", g3, g3, bits=32)),
                (("goto_tb", None), {"pc": 0x0}))
    from kvmpy.tcg.optimizer import optimize_region
    out = optimize_region([head, tail])
    assert [i.op for i in out[1].insns] == ["insn_start", "mov", "sext", "goto_tb"]
    out = optimize_region([head, tail, other])    # other reaches tail too, g1 unchanged: still known
    assert [i.op for i in out[1].insns] == ["insn_start", "mov", "sext", "goto_tb"]
    clobber = _blk(0x20, lambda b: b.emit("mov", g1, g3), (("goto_tb", None), {"pc": 0x10}))
    out = optimize_region([head, tail, clobber])
    assert [i.op for i in out[1].insns] == ["insn_start", "sext", "sext", "goto_tb"]
    assert [i.op for i in tail.insns] == ["insn_start", "sext", "sext", "goto_tb"]   # originals untouched


def test_signed_compare_of_narrow_values_becomes_unsigned():
    bl = Builder(0)
    bl.insn_start(0)
    g1, g2 = Temp(1, True), Temp(2, True)
    bl.emit("ld", g1, g2, size=2, signed=False)
    bl.emit("setcond", g2, g1, 0x7FFF, cond="lt")
    bl.emit("brcond", None, g1, g2, cond="ge", taken=8, fall=4)
    ins = optimize(bl.block).insns
    assert [i.attrs.get("cond") for i in ins[2:]] == ["ltu", "geu"]


def test_sign_extension_only_read_through_low_bits_is_dropped():
    g1, g2, g3 = Temp(1, True), Temp(2, True), Temp(3, True)
    bl = Builder(0)
    bl.insn_start(0)
    bl.emit("sext", g1, bl.op("add", g1, g2), bits=32)     # addw a,a,b: only feeds the next addw
    bl.emit("sext", g1, bl.op("add", g1, g3), bits=32)     # live out: kept
    bl.emit("sext", g2, bl.op("add", g2, g3), bits=32)     # observed by the load's possible trap
    bl.emit("ld", g3, g3, size=8, signed=False)
    bl.emit("sext", g2, bl.op("add", g2, g3), bits=32)
    bl.emit("goto_tb", None, pc=4)
    ops = [i.op for i in optimize(bl.block).insns if i.op not in ("insn_start", "add")]
    assert ops == ["sext", "sext", "ld", "sext", "goto_tb"]    # the first add writes g1 itself
    for regs in ([0, 0x7FFFFFFF, 1, 0], [0, 0xFFFFFFFF00000005, 0x123456789, 0x80000000]):
        bl2 = Builder(0)
        bl2.insn_start(0)
        bl2.emit("sext", g1, bl2.op("add", g1, g2), bits=32)
        bl2.emit("sext", g1, bl2.op("add", g1, g3), bits=32)
        bl2.emit("goto_tb", None, pc=4)
        R = _run(optimize(bl2.block), regs)
        want = evaluate("sext", [evaluate("sext", [regs[1] + regs[2]], {"bits": 32}) + regs[3]], {"bits": 32})
        assert R[1] == want


def test_low32_values_left_unmasked_still_give_exact_results():
    rng = random.Random(5)
    hinted = 0
    for _ in range(300):
        regs = [rng.choice(EDGE) if rng.random() < 0.5 else rng.getrandbits(64) for _ in range(4)]
        bl = Builder(0)
        bl.insn_start(0)
        vals = {Temp(i, True): regs[i] for i in range(4)}
        pool = list(vals)
        for _ in range(5):           # a chain of temps only read through their low 32 bits
            op = rng.choice(["add", "sub", "mul", "shl", "xor", "or", "and"])
            a, b = rng.choice(pool), rng.choice(pool + [0xFFFFFFFFFFFFFFF0, 3])
            if op == "shl":
                b = rng.randrange(64)
            bv = b if isinstance(b, int) else vals[b]
            t = bl.op(op, a, b)
            vals[t] = evaluate(op, [vals[a], bv], {})
            pool.append(t)
        g = Temp(rng.randrange(4), True)
        bl.emit("sext", g, pool[-1], bits=32)
        want = evaluate("sext", [vals[pool[-1]]], {"bits": 32})
        bl.emit("goto_tb", None, pc=4)
        blk = optimize(bl.block)
        hinted += sum(1 for i in blk.insns if i.attrs.get("low32"))
        R = _run(blk, regs)
        assert R[g.index] == want
    assert hinted > 300


def test_coalesce_keeps_temps_whose_register_is_rewritten_first():
    g1, g2 = Temp(1, True), Temp(2, True)
    for regs in ([0, 5, 7, 0], [0, MASK64, 3, 0]):
        bl = Builder(0)
        bl.insn_start(0)
        t = bl.op("add", g1, g2)
        bl.emit("mov", g1, t)
        bl.emit("mov", g1, 9)            # g1 rewritten while t is still needed
        bl.emit("xor", g2, t, 1)
        bl.emit("goto_tb", None, pc=4)
        R = _run(optimize(bl.block), regs)
        assert R[1:3] == [9, ((regs[1] + regs[2]) & MASK64) ^ 1]


def test_a_register_write_before_a_possibly_trapping_write_of_it_is_kept():
    # ``li a0,255; ld a0,0(a1)``: if the load faults, the trap handler must see a0 == 255,
    # so the first write is not dead although the load also writes a0.
    g0, g1 = Temp(0, True), Temp(1, True)
    for op, args, attrs in (("ld", [g1], {"size": 8, "signed": False}),
                            ("call", [g1], {"helper": "csr", "raises": True})):
        bl = Builder(0)
        bl.insn_start(0)
        bl.emit("mov", g0, 255)
        bl.insn_start(4)
        bl.emit(op, g0, *args, **attrs)
        bl.emit("goto_tb", None, pc=8)
        blk = optimize(bl.block)
        assert [(i.op, i.dst, i.args) for i in blk.insns if i.op == "mov"] == [("mov", g0, [255])], op


def test_coalescing_a_temp_into_a_register_renames_its_reads_before_the_copy():
    """``t = g1 >> 63; g2 = t + 5; g3 = t & 0x7f`` (t is 0 or 1, so the and is a copy):
    the shift now writes g3, and the add in between must read g3, not the gone t."""
    b = Builder(0)
    b.insn_start(0)
    t = b.temp()
    b.emit("shr", t, Temp(1, True), 63)
    b.emit("add", Temp(2, True), t, 5)
    b.emit("and", Temp(3, True), t, 0x7F)
    b.emit("goto_tb", None, pc=4)
    blk = optimize(b.block)
    assert all(not (isinstance(a, Temp) and not a.is_global) for i in blk.insns for a in i.args), blk.insns
    R = _run(blk, [0, 1 << 63, 0, 0])
    assert R[3] == 1 and R[2] == 6
