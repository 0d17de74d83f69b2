"""Live migration between two Machines over real sockets: the dirtier guest's memory survives intact,
and every failure before the switchover leaves the source running as if nothing happened."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from kvmpy.lifecycle import RunState
from kvmpy.migration.destination import Incoming
from kvmpy.migration.errors import MigrationError
from kvmpy.migration.params import MigrationParameters
from kvmpy.migration.source import MigrationSource
from kvmpy.migration.transport import connect, parse_uri
from tests.migration.support import (CuttingProxy, assert_frozen, assert_invariant, assert_progress, machine)

PATTERN_GPA = 0x2000000  # 32 MiB: outside the dirtier's range, written by the VMM during the migration


def _migrate(src, dst, uri_listen: str, params: MigrationParameters, during=None):
    inc = Incoming(dst, uri_listen).start()
    uri = f"tcp:127.0.0.1:{inc.address[1]}" if uri_listen.startswith("tcp") else uri_listen
    job = MigrationSource(src, connect(parse_uri(uri)), params)
    job.start()
    if during is not None:
        during(job)
    assert job.wait(120)
    assert inc.done.wait(30)
    return job, inc


@pytest.mark.parametrize("where", [pytest.param("host", marks=pytest.mark.kvm_host),
                                   pytest.param("full", marks=pytest.mark.kvm_full)])
def test_tcp_migration_under_load_keeps_memory_intact(where: str) -> None:
    pattern = np.random.default_rng(7).integers(0, 256, 1 << 20, dtype=np.uint8)
    with machine() as (src, sc), machine(run=False) as (dst, dc):
        def write_pattern(job):
            # Device-style writes, mid-migration: only the VMM-side dirty bitmap knows about these.
            while job.stats.rounds < 2 and not job.finished:
                time.sleep(0.01)
            src.board.memory.write(PATTERN_GPA, pattern)

        # A slow link and a tight downtime limit: the dirtier cannot converge on any KVM
        # (on a fast complete KVM it otherwise fits a 300 ms window after two rounds).
        params = MigrationParameters(max_bandwidth=24 << 20, downtime_limit=20, x_max_rounds=4)
        job, inc = _migrate(src, dst, "tcp:127.0.0.1:0", params, write_pattern)
        assert job.stats.status == "completed", job.stats.error
        assert inc.error is None
        assert job.stats.rounds >= 3  # the bandwidth limit forced several rounds
        assert job.stats.duplicate > 0 and job.stats.downtime_ms is not None
        assert src.lifecycle.state is RunState.POSTMIGRATE and dst.lifecycle.state is RunState.RUNNING
        assert_frozen(src)
        assert_progress(dst, dc)  # RAM moves and serial output continues on the destination
        assert dc.output.strip(b"B") == b""
        assert_invariant(dst)
        assert dst.board.memory.read(PATTERN_GPA, len(pattern)) == pattern.tobytes()
        with pytest.raises(MigrationError):  # a migrated-away VM is not migrated again...
            src.migration.migrate("file:/dev/null")
        assert src.lifecycle.state is RunState.POSTMIGRATE  # ...and nothing resumed it


@pytest.mark.kvm_host
def test_unix_socket_migration() -> None:
    with machine() as (src, sc), machine(run=False) as (dst, dc):
        sock = f"/tmp/kvmpy-mig-{time.monotonic_ns()}.sock"
        job, inc = _migrate(src, dst, f"unix:{sock}", MigrationParameters())
        assert job.stats.status == "completed", job.stats.error
        assert_progress(dst, dc)
        assert_invariant(dst)


@pytest.mark.kvm_host
def test_cancel_leaves_the_source_running_and_the_destination_stopped() -> None:
    with machine() as (src, sc), machine(run=False) as (dst, dc):
        def cancel(job):
            while job.stats.rounds < 2 and not job.finished:
                time.sleep(0.01)
            job.cancel()

        job, inc = _migrate(src, dst, "tcp:127.0.0.1:0", MigrationParameters(max_bandwidth=16 << 20), cancel)
        assert job.stats.status == "cancelled"
        assert src.lifecycle.state is RunState.RUNNING
        assert_progress(src, sc)
        assert inc.error and dst.lifecycle.state is RunState.INMIGRATE
        assert_frozen(dst)


@pytest.mark.kvm_host
def test_connection_cut_at_random_points_source_survives_and_migrates_again() -> None:
    rng = random.Random(1234)
    with machine() as (src, sc):
        for _ in range(3):
            with machine(run=False) as (dst, _):
                inc = Incoming(dst, "tcp:127.0.0.1:0").start()
                proxy = CuttingProxy(("127.0.0.1", inc.address[1]), rng.randrange(1, 12 << 20))
                job = MigrationSource(src, connect(parse_uri(f"tcp:127.0.0.1:{proxy.port}")),
                                      MigrationParameters(max_bandwidth=64 << 20, x_max_rounds=3))
                job.run()
                assert inc.done.wait(30)
                assert job.stats.status == "failed", (proxy.limit, job.stats)
                assert inc.error is not None and dst.lifecycle.state is RunState.INMIGRATE
                assert src.lifecycle.state is RunState.RUNNING
                assert_progress(src, sc)
        with machine(run=False) as (dst, dc):
            job, inc = _migrate(src, dst, "tcp:127.0.0.1:0", MigrationParameters(x_max_rounds=3))
            assert job.stats.status == "completed", job.stats.error
            assert_progress(dst, dc)
            assert_invariant(dst)


@pytest.mark.kvm_host
def test_destination_death_before_the_ack_keeps_the_source_running() -> None:
    with machine() as (src, sc):
        # A "destination" that reads everything, then dies instead of acknowledging.
        import socket
        import threading

        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)

        def sink() -> None:
            conn, _ = lsock.accept()
            total = 0
            while (data := conn.recv(1 << 20)):
                total += len(data)
                if total > (2 << 20):
                    break
            conn.close()

        threading.Thread(target=sink, daemon=True).start()
        job = MigrationSource(src, connect(parse_uri(f"tcp:127.0.0.1:{lsock.getsockname()[1]}")))
        job.run()
        lsock.close()
        assert job.stats.status == "failed"
        assert src.lifecycle.state is RunState.RUNNING
        assert_progress(src, sc)


@pytest.mark.kvm_host
def test_auto_converge_throttles_a_guest_that_outruns_the_link() -> None:
    # 48 MiB dirtied far faster than 64 MiB/s can carry: only throttling lets it converge.
    with machine(size_mb=48) as (src, sc), machine(run=False, size_mb=48) as (dst, dc):
        inc = Incoming(dst, "tcp:127.0.0.1:0").start()
        params = MigrationParameters(max_bandwidth=64 << 20, cpu_throttle_initial=60, cpu_throttle_increment=20)
        job = MigrationSource(src, connect(parse_uri(f"tcp:127.0.0.1:{inc.address[1]}")), params,
                              auto_converge=True)
        job.run()
        assert inc.done.wait(30)
        assert job.stats.status == "completed", job.stats.error
        assert job.stats.throttle_percentage >= 60
        assert_progress(dst, dc)
        assert_invariant(dst, size_mb=48)


def test_an_extra_round_only_when_it_would_halve_the_stop_time_work() -> None:
    worth = MigrationSource._worth_another_round
    gib = float(1 << 30)
    # 16384 pages (64 MiB) left, sent in ~62 ms at 1 GiB/s.
    assert worth(16384, 16384.0, gib)  # ~1000 pages dirtied meanwhile
    assert worth(16384, 0.0, gib)  # an idle guest
    assert not worth(16384, 160000.0, gib)  # ~10000 dirtied: not half
    assert not worth(16384, 1e6, gib)  # the guest outruns the link
