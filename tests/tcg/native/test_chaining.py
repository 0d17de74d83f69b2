"""Chaining in machine code: a native unit jumps straight into the next one (a link
or a lookup in the jump-cache mirror) as the CPU loop would, stops before the hop
that ends the CPU loop's countdown, and forgets links and lookups when the TB cache
does (SMC invalidation, TLB flush), so whole guests still retire exactly what the
Python tier retires with far fewer returns to Python."""

from __future__ import annotations

import platform
from contextlib import ExitStack

import pytest

from kvmpy.tcg.backend_py import StateLayout, runtime_namespace
from kvmpy.tcg.errors import GuestTrap
from kvmpy.tcg.ir import Builder, Temp
from kvmpy.tcg.optimizer import optimize
from kvmpy.tcg.tb_cache import TBCache

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="the native tier emits x86-64 code")

LAYOUT = StateLayout(10, 8, 9)         # g0..g7 registers, pc, instret
CTX = "ctx"


def _blocks():
    """0x100: x1 += 1, then on to 0x200.  0x200: x2 += 1, x3 += 1, then to the pc in x7."""
    g = [Temp(i, True) for i in range(8)]
    a = Builder(0x100)
    a.insn_start(0x100)
    a.emit("add", g[1], g[1], 1)
    a.emit("goto_tb", None, pc=0x200)
    b = Builder(0x200)
    b.insn_start(0x200)
    b.emit("add", g[2], g[2], 1)
    b.insn_start(0x204)
    b.emit("add", g[3], g[3], 1)
    b.emit("exit_tb", None, g[7], lookup=True)
    return {0x100: a.block, 0x200: b.block}


def _cache():
    from kvmpy.devices.bus import Bus
    from kvmpy.tcg.native.backend import NativeTier
    from kvmpy.tcg.softmmu import AccessFaults, SoftMmu
    mem = SoftMmu(0x80000000, 1 << 16, Bus("mmio"), AccessFaults(5, 7, 1))
    tier = NativeTier(LAYOUT, mem.ram, mem.load, mem.store, (GuestTrap,), eager=True)
    blocks = _blocks()

    def translate(pc):
        return optimize(blocks[pc]), pc, (pc >> 4,)       # a "page" per block here

    ns = runtime_namespace()
    ns.update(mem.namespace())
    cache = TBCache(LAYOUT, ns, translate, lambda page: None, compile_fn=tier.compile_or_fallback,
                    observer=tier)
    return tier, cache


def _hot(tier, tb):
    tb.hot = 0              # as the CPU loop's count reaching 0 (without building a region)
    tier.retargeted(tb)


def test_units_hop_by_link_and_by_lookup_until_the_countdown_ends():
    tier, cache = _cache()
    a = cache.find(0x100, CTX, 0x100)
    b = cache.find(0x200, CTX, 0x200)
    assert a.unit.chained is not None and b.unit.chained is not None
    jc = cache.jump_cache(CTX)
    R = [0] * 7 + [0x100, 0x100, 0]
    # Not hot yet, not linked: the first unit returns at its exit.
    assert a.unit.chained(R, 64, jc) == (a.unit, 0, 0)
    assert R[1] == 1 and R[8] == 0x200 and R[9] == 1
    _hot(tier, a)
    _hot(tier, b)
    cache.link(a.unit, 0, b, False)
    # countdown 5: a, b, a, b, a and the return before the hop that would end it.
    R = [0] * 7 + [0x100, 0x100, 0]
    assert a.unit.chained(R, 5, jc) == (a.unit, 0, 4)
    assert R[1:4] == [3, 2, 2] and R[8] == 0x200 and R[9] == 3 + 2 * 2
    # The lookup exit returns when the pc misses, and hops when it hits.
    R = [0] * 7 + [0x300, 0x100, 0]
    assert a.unit.chained(R, 64, jc) == (b.unit, 0, 1)
    assert R[8] == 0x300 and R[9] == 3
    # A countdown of 1 (the CPU loop polls after this unit): no hop at all.
    R = [0] * 7 + [0x100, 0x100, 0]
    assert a.unit.chained(R, 1, jc) == (a.unit, 0, 0)
    assert tier.stats.hops == 5


def test_invalidation_and_jump_cache_flushes_stop_the_hops():
    tier, cache = _cache()
    a = cache.find(0x100, CTX, 0x100)
    b = cache.find(0x200, CTX, 0x200)
    _hot(tier, a)
    _hot(tier, b)
    cache.link(a.unit, 0, b, False)
    jc = cache.jump_cache(CTX)
    R = [0] * 7 + [0x100, 0x100, 0]
    assert a.unit.chained(R, 3, jc)[2] == 2                 # a -> b -> a
    # The jump caches flushed (sfence.vma, satp): b's lookup of 0x100 now misses.
    cache.flush_jump_caches(lambda ctx: False)
    R = [0] * 7 + [0x100, 0x100, 0]
    assert a.unit.chained(R, 64, jc) == (b.unit, 0, 1)
    # b's code written (SMC): the link from a into it is gone, and so is its record.
    cache.invalidate_page(0x200 >> 4)
    assert not b.valid
    R = [0] * 7 + [0x100, 0x100, 0]
    assert a.unit.chained(R, 64, jc) == (a.unit, 0, 0)
    assert R[8] == 0x200
    # A new TB at 0x200 starts cold: no hop into it until it is hot again.
    b2 = cache.find(0x200, CTX, 0x200)
    cache.link(a.unit, 0, b2, False)
    assert a.unit.chained([0] * 7 + [0x100, 0x100, 0], 64, jc)[2] == 0
    _hot(tier, b2)
    assert a.unit.chained([0] * 7 + [0x300, 0x100, 0], 64, jc) == (b2.unit, 0, 1)


def test_a_region_head_that_cools_down_is_not_entered():
    tier, cache = _cache()
    a = cache.find(0x100, CTX, 0x100)
    b = cache.find(0x200, CTX, 0x200)
    _hot(tier, b)
    jc = cache.jump_cache(CTX)
    a.hot = 1
    cache.link(a.unit, 0, b, False)
    R = [0] * 7 + [0x100, 0x100, 0]
    assert b.unit.chained(R, 64, jc) == (b.unit, 0, 0)     # a is not hot: the CPU loop counts it
    a.hot = 0                                               # as the CPU loop counts it down
    cache.make_region(a, CTX, False)                        # hot: a region of a and b
    assert a.unit is not a.single and a.unit.chained is not None
    R = [0] * 7 + [0x100, 0x100, 0]
    assert b.unit.chained(R, 2, jc) == (a.unit, 0, 1)       # into the region
    cache.invalidate(b)                                     # a member written: a's region is gone
    assert a.unit is a.single and a.hot > 0
    R = [0] * 7 + [0x100, 0x100, 0]
    assert b.unit.chained(R, 64, jc)[2] == 0


@pytest.mark.parametrize("name", ["qsort", "coremark", "smc"])
def test_guests_chain_in_machine_code_and_match_the_python_tier(name, tmp_path):
    """-icount: the same registers, instret, output and exit with and without native hops;
    with them, most units are entered without a return to Python."""
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
            stats = board.cache.stats
            if tier == "native":
                nat = board.native
                assert nat is not None and nat.stats.units > 0
                if name != "smc":           # smc's hot code is one region: nothing to hop to
                    assert nat.stats.hops > 0
                if name == "qsort":         # its returns (ret) are looked up natively
                    assert nat.stats.entries * 10 < stats.units_run
                if name == "smc":
                    assert stats.invalidations >= 3
    assert seen["native"] == seen["py"]


def test_the_jump_cache_mirror_follows_its_dict():
    from kvmpy.tcg.native.backend import JT_EMPTY, MirrorJump
    records = {"a": 0x1000, "b": 0x2000, "c": 0}
    m = MirrorJump(records.get, 4)
    m[0x100] = "a"
    i = 2 * ((0x100 >> 1) & 3)
    assert m.table[i:i + 2].tolist() == [0x100, 0x1000]
    m[0x108] = "b"                                # the same slot: the newest wins
    assert m.table[i:i + 2].tolist() == [0x108, 0x2000]
    del m[0x100]                                  # not the one in the slot: kept
    assert m.table[i] == 0x108
    m[0x108] = "c"                                # no record: the slot is emptied
    assert m.table[i] == JT_EMPTY and m[0x108] == "c"
    m[0x102] = "a"
    assert m.pop(0x102) == "a" and m.table[2 * ((0x102 >> 1) & 3)] == JT_EMPTY
    m[0x104] = "b"
    m.clear()
    assert not m and set(m.table[0::2]) == {JT_EMPTY}
