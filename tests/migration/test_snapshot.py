"""Snapshots: to a file and back (``file:`` transport, also ``kvmpy -incoming file:``), and fast reset."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from kvmpy.lifecycle import RunState
from kvmpy.migration.destination import Incoming
from kvmpy.migration.snapshot import Snapshot
from kvmpy.migration.source import MigrationSource
from kvmpy.migration.transport import connect, parse_uri
from tests.migration.support import assert_invariant, assert_progress, dirtier_bytes, machine


@pytest.mark.parametrize("where", [pytest.param("host", marks=pytest.mark.kvm_host),
                                   pytest.param("full", marks=pytest.mark.kvm_full)])
def test_snapshot_to_file_then_restore_then_continue(where: str, tmp_path: Path) -> None:
    path = tmp_path / "vm.snap"
    with machine() as (src, sc):
        job = MigrationSource(src, connect(parse_uri(f"file:{path}")))
        assert job.run().status == "completed", job.stats.error
        assert src.lifecycle.state is RunState.POSTMIGRATE  # as in QEMU: saved, stopped; 'cont' would resume it
        src.lifecycle.resume()  # the user chooses to carry on with the original too
        assert_progress(src, sc)
    with machine(run=False) as (dst, dc):
        inc = Incoming(dst, f"file:{path}").start()
        assert inc.done.wait(60) and inc.error is None, inc.error
        assert_progress(dst, dc)
        assert_invariant(dst)


@pytest.mark.kvm_host
def test_exec_transport_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "vm.snap.gz"
    with machine() as (src, _):
        job = MigrationSource(src, connect(parse_uri(f"exec:gzip -1 > {path}")))
        assert job.run().status == "completed", job.stats.error
    with machine(run=False) as (dst, dc):
        inc = Incoming(dst, f"exec:gzip -dc {path}").start()
        assert inc.done.wait(60) and inc.error is None, inc.error
        assert_progress(dst, dc)
        assert_invariant(dst)


@pytest.mark.kvm_host
def test_fast_reset_rewrites_only_dirtied_pages() -> None:
    with machine() as (m, console):
        snap = Snapshot.take(m)
        with m.lifecycle.vcpus_parked():
            at_snapshot = dirtier_bytes(m).copy()
        time.sleep(0.2)
        n = snap.reset()
        assert 0 < n <= m.board.ram.npages // 4  # the dirtier's 2048 pages and a few others, not all of RAM
        with m.lifecycle.vcpus_parked():
            assert np.array_equal(dirtier_bytes(m), at_snapshot)
            snap.reset()
        assert_progress(m, console)  # still running after resets
        assert_invariant(m)


@pytest.mark.parametrize("pattern", ["none", "one run", "runs", "scattered"])
def test_reset_copies_exactly_the_dirty_pages(pattern: str) -> None:
    from kvmpy.migration.snapshot import MAX_SLICES, _restore_pages

    n = 4 * MAX_SLICES + 10
    live = np.zeros((n, 4096), dtype=np.uint8)
    saved = np.arange(n, dtype=np.uint8)[:, None].repeat(4096, axis=1)
    dirty = np.zeros(n, dtype=bool)
    if pattern == "one run":
        dirty[3:40] = True
    elif pattern == "runs":
        dirty[[0, 1, 5, 9, 10, 11, n - 1]] = True
    elif pattern == "scattered":  # more runs than MAX_SLICES: the gathered copy
        dirty[::2] = True
    assert _restore_pages(live, saved, dirty) == int(dirty.sum())
    assert np.array_equal(live[dirty], saved[dirty])
    assert not live[~dirty].any()
