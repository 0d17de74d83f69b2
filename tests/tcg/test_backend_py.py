"""The Python backend's generated code against a real SoftMmu: fast paths really hit."""

from __future__ import annotations

from kvmpy.devices.bus import Bus
from kvmpy.tcg.backend_py import StateLayout, compile_unit, runtime_namespace
from kvmpy.tcg.errors import GuestTrap
from kvmpy.tcg.ir import MASK64, Builder, Temp
from kvmpy.tcg.optimizer import optimize
from kvmpy.tcg.softmmu import AccessFaults, SoftMmu

BASE = 0x80000000


def _unit(block):
    mem = SoftMmu(BASE, 1 << 16, Bus("mmio"), AccessFaults(5, 7, 1))
    ns = runtime_namespace()
    ns.update(mem.namespace())
    ns["_UnitExit"] = (GuestTrap,)
    return mem, compile_unit([optimize(block)], StateLayout(6, 4, 5), ns)


def test_negative_offsets_take_the_tlb_fast_path():
    bl = Builder(0)
    bl.insn_start(0)
    g1, g2, g3 = Temp(1, True), Temp(2, True), Temp(3, True)
    bl.emit("st", None, bl.op("add", g1, MASK64 - 7), g2, size=8)      # sd x2, -8(x1)
    bl.emit("ld", g3, bl.op("add", g1, MASK64 - 7), size=4, signed=True)
    bl.emit("goto_tb", None, pc=4)
    mem, unit = _unit(bl.block)
    for i in range(3):
        R = [0, BASE + 0x1008, 0xFFFFFFFF80000000 + i, 0, 0, 0]
        unit.fn(R)
        assert R[3] == 0xFFFFFFFF80000000 + i
    assert mem.stats_slow == 2          # one fill per TLB, then only hits


def _loop_region():
    """H -> X or Y; X: x1 -= 1, x2 += 3, x4 = x1 ^ x2, x5 = x4 + x1, then Y or Z;
    Y (tiny, two predecessors): X or Z."""
    x1, x2, x3, x4, x5 = (Temp(i, True) for i in range(1, 6))
    h = Builder(0x0)
    h.insn_start(0x0)
    h.emit("brcond", None, x1, 0, cond="eq", taken=0x20, fall=0x10)
    x = Builder(0x10)
    x.insn_start(0x10)
    x.emit("add", x1, x1, MASK64)
    x.insn_start(0x14)
    x.emit("add", x2, x2, 3)
    x.insn_start(0x18)
    x.emit("xor", x4, x1, x2)
    x.emit("add", x5, x4, x1)
    x.insn_start(0x1c)
    x.emit("brcond", None, x1, 0, cond="ne", taken=0x20, fall=0x30)
    y = Builder(0x20)
    y.insn_start(0x20)
    y.emit("brcond", None, x3, 0, cond="ne", taken=0x10, fall=0x30)
    z = Builder(0x30)
    z.insn_start(0x30)
    z.emit("goto_tb", None, pc=0x40)
    mem = SoftMmu(BASE, 1 << 16, Bus("mmio"), AccessFaults(5, 7, 1))
    ns = runtime_namespace()
    ns.update(mem.namespace())
    ns["_UnitExit"] = (GuestTrap,)
    blocks = [optimize(b.block) for b in (h, x, y, z)]
    return compile_unit(blocks, StateLayout(8, 6, 7), ns, "region")


def test_tiny_block_is_copied_into_its_jump_sites():
    unit = _loop_region()
    assert "L = 2" not in unit.source          # Y never goes through the dispatcher
    R = [0, 10, 0, 1, 0, 0, 0, 0]
    unit.fn(R)
    assert (R[1], R[2], R[4], R[5], R[6]) == (0, 30, 30, 30, 0x40)
    assert R[7] == 1 + 10 * 4 + 9 + 1          # H, X ten times, Y nine times, Z


def test_copied_tiny_block_keeps_the_budget_on_loops():
    from kvmpy.tcg.backend_py import BUDGET
    unit = _loop_region()
    R = [0, 10 ** 6, 0, 1, 0, 0, 0, 0]
    unit.fn(R)
    assert R[6] in (0x10, 0x20)                # left mid-loop, resumable at a block start
    assert BUDGET <= R[7] < BUDGET + 8
    assert R[2] == 3 * (10 ** 6 - R[1])
