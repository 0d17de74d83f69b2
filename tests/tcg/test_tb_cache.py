"""TB caching, chaining, hot regions and SMC invalidation, observed through TB stats."""

from __future__ import annotations

from contextlib import ExitStack

from tests.guests.riscv.oracle import guest
from kvmpy.config import MachineConfig
from kvmpy.boards.riscv_virt_run import build_board


def _run(name: str):
    with ExitStack() as stack:
        board, _ = build_board(MachineConfig(arch="riscv64", kernel=guest(name), serial="none"), stack)
        ex = board.run()
        return ex, board


def test_workload_is_cached_chained_and_compiled_into_regions():
    ex, board = _run("coremark")
    s = board.cache.stats
    assert ex.status == 0
    assert s.translations < 200                   # each block translated about once
    assert s.chain_hits > s.translations          # most exits follow chains, no lookup
    assert s.regions > 0
    assert board.cpu.R[33] > 1_000_000 > s.units_run * 100 / 100   # many instructions per unit


def test_self_modifying_code_invalidates():
    ex, board = _run("smc")
    assert ex.status == 0
    assert board.cache.stats.invalidations >= 3
