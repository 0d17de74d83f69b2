"""The native backend against backend_py, the reference: random IR blocks (every
pure op, loads and stores through a real SoftMmu, faults), loop regions up to the
instruction budget, the TLB mirror, and whole guest programs with exact instret."""

from __future__ import annotations

import os
import platform
import random
from contextlib import ExitStack

import pytest

from kvmpy.devices.bus import Bus
from kvmpy.tcg.backend_py import BUDGET, StateLayout, compile_unit, runtime_namespace
from kvmpy.tcg.errors import GuestTrap
from kvmpy.tcg.ir import MASK64, Builder, Temp
from kvmpy.tcg.optimizer import optimize, optimize_region
from kvmpy.tcg.softmmu import AccessFaults, SoftMmu

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="the native tier emits x86-64 code")

BASE = 0x80000000
RAM = 1 << 16
LAYOUT = StateLayout(10, 8, 9)         # g0..g7 registers, pc, instret
CASES = int(os.environ.get("KVMPY_RANDOM_CASES", "300"))
SEED = int(os.environ.get("KVMPY_RANDOM_SEED", "1"))
SPECIALS = [0, 1, 2, 63, 64, 0x7F, 0x80, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32,
            (1 << 63) - 1, 1 << 63, MASK64, MASK64 - 1]
BINARY = ["add", "sub", "mul", "and", "or", "xor", "shl", "shr", "sar", "mulh", "mulhu", "mulhsu",
          "divs", "divu", "rems", "remu", "setcond"]


class _Tiers:
    """A SoftMmu each for backend_py and the native tier, same contents."""

    def __init__(self) -> None:
        from kvmpy.tcg.native.backend import NativeTier
        self.py_mem = SoftMmu(BASE, RAM, Bus("mmio"), AccessFaults(5, 7, 1))
        self.nat_mem = SoftMmu(BASE, RAM, Bus("mmio"), AccessFaults(5, 7, 1))
        self.tier = NativeTier(LAYOUT, self.nat_mem.ram, self.nat_mem.load, self.nat_mem.store, (GuestTrap,))
        self.nat_mem.tlb_read, self.nat_mem.tlb_write = self.tier.tlb_read, self.tier.tlb_write
        self.ns = runtime_namespace()
        self.ns.update(self.py_mem.namespace())
        self.ns["_UnitExit"] = (GuestTrap,)

    def units(self, blocks):
        py = compile_unit(blocks, LAYOUT, self.ns)
        nat = self.tier.compile_unit(blocks)
        assert nat is not None, "the native backend refused the unit"
        return py, nat

    def run(self, unit, R):
        try:
            return unit.fn(R), None
        except GuestTrap as e:
            return None, (e.cause, e.tval, e.pc, e.back)


def _value(rng: random.Random) -> int:
    return rng.choice(SPECIALS) if rng.random() < 0.5 else rng.getrandbits(64)


def _random_block(rng: random.Random, pc: int, with_memory: bool) -> Builder:
    b = Builder(pc)
    live: list[Temp] = [Temp(i, True) for i in range(8)]

    def operand():
        return rng.choice(live) if rng.random() < 0.7 else _value(rng)

    for k in range(rng.randint(1, 12)):
        b.insn_start(pc + 4 * k)
        for _ in range(rng.randint(1, 3)):
            d = rng.choice([Temp(rng.randint(1, 7), True), b.temp()])
            kind = rng.random()
            defined = True
            if kind < 0.6:
                op = rng.choice(BINARY)
                a, c = operand(), operand()
                attrs = {}
                if op in ("shl", "shr", "sar"):
                    c = rng.randint(0, 63) if rng.random() < 0.5 else b.op("and", c, 63)
                if op == "setcond":
                    attrs["cond"] = rng.choice(["eq", "ne", "lt", "ge", "ltu", "geu"])
                b.emit(op, d, a, c, **attrs)
            elif kind < 0.75:
                b.emit(rng.choice(["sext", "zext"]), d, operand(), bits=rng.choice([1, 8, 12, 16, 31, 32, 63]))
            elif kind < 0.8:
                b.emit("mov", d, operand())
            elif not with_memory:
                defined = False
            else:
                size = rng.choice([1, 2, 4, 8])
                # Mostly inside RAM, aligned or not; sometimes outside it (an access fault).
                addr = BASE + rng.randrange(0, RAM - 8) if rng.random() < 0.9 else rng.getrandbits(64)
                base = Temp(0, True)
                a = b.op("add", base, (addr - rng.choice([BASE, 0])) & MASK64) if rng.random() < 0.5 else addr
                if rng.random() < 0.5:
                    b.emit("ld", d, a, size=size, signed=rng.random() < 0.5)
                else:
                    b.emit("st", None, a, operand(), size=size)
                    defined = False
            if defined and (d.is_global or rng.random() < 0.5):
                live.append(d)
    end = rng.random()
    if end < 0.4:
        b.emit("brcond", None, operand(), operand(), cond=rng.choice(["eq", "ne", "lt", "ge", "ltu", "geu"]),
               taken=rng.getrandbits(12) * 4, fall=pc + 0x100)
    elif end < 0.7:
        b.emit("goto_tb", None, pc=pc + 0x200)
    else:
        b.emit("exit_tb", None, operand(), lookup=rng.random() < 0.5)
    return b


@pytest.mark.parametrize("with_memory", [False, True])
def test_random_blocks_match_backend_py(with_memory):
    rng = random.Random(SEED)
    t = _Tiers()
    for case in range(CASES):
        blk = _random_block(rng, 0x1000, with_memory).block
        if rng.random() < 0.5:
            optimize(blk)
        py, nat = t.units([blk])
        ram = bytes(rng.getrandbits(8) for _ in range(256)) * (RAM // 256)
        t.py_mem.ram[:] = ram
        t.nat_mem.ram[:] = ram
        for _ in range(2):              # the second run hits the TLB the first one filled
            R = [BASE + rng.randrange(0, RAM - 8)] + [_value(rng) for _ in range(7)] + [0, 5]
            Rp, Rn = list(R), list(R)
            got_py, got_nat = t.run(py, Rp), t.run(nat, Rn)
            where = f"case {case} (seed {SEED}):\n" + "\n".join(map(repr, blk.insns))
            assert got_nat == got_py, where
            if got_py[1] is None:
                assert Rn == Rp, where
            else:       # backend_py leaves the pc slot alone on a trap
                assert Rn[:8] + Rn[9:] == Rp[:8] + Rp[9:], where
            assert t.nat_mem.ram == t.py_mem.ram, where


def _random_region(rng: random.Random) -> list:
    """2-6 blocks jumping among themselves (loops, tiny blocks with several
    predecessors, blocks with one) and out of the region."""
    n = rng.randint(2, 6)
    pcs = [0x100 * (i + 1) for i in range(n)]
    blocks = []
    for pc in pcs:
        b = _random_block(rng, pc, with_memory=rng.random() < 0.3)
        if rng.random() < 0.4:          # make it tiny: only the terminator's own ops
            b = Builder(pc)
            b.insn_start(pc)
            b.emit("add", Temp(1, True), Temp(1, True), rng.choice([1, MASK64]))
        else:
            b.block.insns.pop()
            b.closed = False
        g = Temp(rng.randint(1, 7), True)
        targets = pcs + [0x9000]
        if rng.random() < 0.8:
            b.emit("brcond", None, g, rng.choice([0, 1, Temp(1, True)]),
                   cond=rng.choice(["eq", "ne", "lt", "ge", "ltu", "geu"]),
                   taken=rng.choice(targets), fall=rng.choice(targets))
        else:
            b.emit("goto_tb", None, pc=rng.choice(targets))
        blocks.append(optimize(b.block))
    return optimize_region(blocks)


def test_random_regions_exit_where_backend_py_exits():
    """Loops, copied tiny blocks and inlined ones: every return from the unit has the
    same exit, registers and instruction count, budget exits included."""
    rng = random.Random(SEED)
    t = _Tiers()
    for case in range(max(CASES // 3, 20)):
        blocks = _random_region(rng)
        py, nat = t.units(blocks)
        ram = bytes(rng.getrandbits(8) for _ in range(256)) * (RAM // 256)
        t.py_mem.ram[:] = ram
        t.nat_mem.ram[:] = ram
        R = [BASE + rng.randrange(0, RAM - 8)] + [_value(rng) for _ in range(7)] + [0, 5]
        Rp, Rn = list(R), list(R)
        where = f"case {case} (seed {SEED}):\n" + "\n\n".join(
            "\n".join(map(repr, b.insns)) for b in blocks)
        for _ in range(4):
            got_py, got_nat = t.run(py, Rp), t.run(nat, Rn)
            if got_py[1] is None:
                assert py.exits[got_py[0]] == nat.exits[got_nat[0]], where
                assert Rn == Rp, where
            else:
                assert got_nat[1] == got_py[1], where
                assert Rn[:8] + Rn[9:] == Rp[:8] + Rp[9:], where
            assert t.nat_mem.ram == t.py_mem.ram, where
            if got_py[1] is not None or Rp[8] != blocks[0].pc:
                break


def _loop_block(n_body: int):
    """L: n_body times (x2 += x1; x3 = x3*3 + 1; store x3; load it back as a signed word);
    x1 -= 1; loop to L while x1 != 0, else on to 0x400."""
    g = [Temp(i, True) for i in range(8)]
    lp = Builder(0x10)
    for k in range(n_body):
        lp.insn_start(0x10 + 4 * k)
        lp.emit("add", g[2], g[2], g[1])
        lp.emit("add", g[3], lp.op("mul", g[3], 3), 1)
        lp.emit("st", None, lp.op("add", g[0], 8 * (k % 4)), g[3], size=8)
        lp.emit("ld", g[4], lp.op("add", g[0], 8 * (k % 4)), size=4, signed=True)
    lp.insn_start(0x10 + 4 * n_body)
    lp.emit("add", g[1], g[1], MASK64)
    lp.insn_start(0x14 + 4 * n_body)
    lp.emit("brcond", None, g[1], 0, cond="ne", taken=0x10, fall=0x400)
    return lp.block


def test_a_self_loop_exits_at_the_same_budget_points_with_the_same_counts():
    t = _Tiers()
    py, nat = t.units([optimize(_loop_block(3))])
    Rp = [BASE + 0x100, 20000, 0, 0, 0, 0, 0, 0, 0x10, 0]
    Rn = list(Rp)
    runs = 0
    while Rp[8] == 0x10:
        assert py.exits[py.fn(Rp)] == nat.exits[nat.fn(Rn)]
        assert Rp == Rn and t.nat_mem.ram == t.py_mem.ram
        runs += 1
    assert runs == 20000 * 5 // BUDGET + 1 and Rn[9] == 20000 * 5 and Rn[8] == 0x400


def test_the_tlb_mirror_follows_its_dict():
    from kvmpy.tcg.native.backend import INVALID_TAG, MirrorTlb
    m = MirrorTlb(0x10000)
    m[0x5000] = 0x100
    i = 2 * 5
    assert m.table[i:i + 2].tolist() == [0x5000, 0x10100]
    m[0x5000 + (1024 << 12)] = 0x200             # the same slot: the newest wins
    assert m.table[i] == 0x5000 + (1024 << 12)
    del m[0x5000]                                 # not the one in the slot: kept
    assert m.table[i] == 0x5000 + (1024 << 12)
    assert m.pop(0x5000 + (1024 << 12)) == 0x200
    assert m.table[i] == INVALID_TAG and not m
    m[0x7000] = -0x7000                           # negative offsets wrap to a host address
    assert m.table[14 + 1] == 0x10000 - 0x7000
    m.clear()
    assert set(m.table[0::2]) == {INVALID_TAG}


GUESTS = ["alu", "sha256", "qsort", "coremark", "interrupts", "paging", "smc", "traps", "atomics", "rvc"]


@pytest.mark.parametrize("name", GUESTS)
def test_guest_programs_retire_the_same_instructions_on_both_tiers(name, tmp_path):
    """Deterministic time (-icount): the tiers must agree on every register, the
    instret count, the console output and the exit, including timer interrupts."""
    from kvmpy.boards import riscv_virt_run
    from kvmpy.config import MachineConfig
    from tests.guests.riscv.oracle import guest
    elf = guest(name)
    seen = {}
    for tier in ("py", "native"):
        out = tmp_path / f"{tier}.serial"
        cfg = MachineConfig(arch="riscv64", kernel=elf, serial=f"file:{out}", icount=0, tcg_tier=tier)
        with ExitStack() as stack:
            board, _ = riscv_virt_run.build_board(cfg, stack)
            ex = board.run()
            seen[tier] = (ex.status, list(board.cpu.R), out.read_bytes())
            if tier == "native":
                assert board.native is not None and board.native.stats.units > 0
    assert seen["native"] == seen["py"]


def test_a_trap_raised_after_a_store_keeps_the_count_exact():
    t = _Tiers()
    hits = []

    def exit_on_write(paddr, size, value):
        hits.append(value)
        raise GuestTrap(99, paddr)

    for mem in (t.py_mem, t.nat_mem):
        mem.watch_page((BASE + 0x2000) >> 12, exit_on_write)
    b = Builder(0)
    for k in range(3):
        b.insn_start(4 * k)
        b.emit("add", Temp(1, True), Temp(1, True), 1)
    b.insn_start(12)
    b.emit("st", None, BASE + 0x2008, Temp(1, True), size=4)
    b.insn_start(16)
    b.emit("add", Temp(1, True), Temp(1, True), 1)
    b.emit("goto_tb", None, pc=20)
    py, nat = t.units([b.block])
    Rp, Rn = [0] * 10, [0] * 10
    assert t.run(py, Rp) == t.run(nat, Rn) == (None, (99, BASE + 0x2008, 12, 2))
    assert Rp == Rn and Rn[9] == 3 and Rn[1] == 3 and hits == [3, 3]


def test_a_full_code_buffer_leaves_new_units_to_backend_py():
    t = _Tiers()
    blk = optimize(_loop_block(2))
    assert t.tier.compile_unit([blk]) is not None
    t.tier.code_limit = t.tier.code.size
    assert t.tier.compile_unit([blk]) is None
    unit = t.tier.compile_or_fallback([blk], LAYOUT, t.ns, "region")
    assert unit.source.startswith("def region(R):")       # backend_py's
    assert t.tier.stats.fallbacks_full == 2
