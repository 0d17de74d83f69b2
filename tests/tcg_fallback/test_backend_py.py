"""The Python backend's generated code against a real SoftMmu: fast paths really hit."""

from __future__ import annotations

from kvmpy.devices.bus import Bus
from kvmpy.tcg_fallback.backend_py import StateLayout, compile_unit, runtime_namespace
from kvmpy.tcg_fallback.errors import GuestTrap
from kvmpy.tcg_fallback.ir import MASK64, Builder, Temp
from kvmpy.tcg_fallback.optimizer import optimize
from kvmpy.tcg_fallback.softmmu import AccessFaults, SoftMmu

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
