"""The migration QMP commands, dispatched through a command table on real machines (no server needed)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kvmpy.lifecycle import RunState
from kvmpy.migration.params import MigrationParameters
from kvmpy.migration.qmp import add_migration_commands
from kvmpy.monitor.context import Context
from kvmpy.monitor.protocol import QmpError
from kvmpy.monitor.schema import CommandTable
from tests.migration.support import machine

pytestmark = pytest.mark.kvm_host


def _qmp(m):
    table = CommandTable()
    add_migration_commands(table)
    ctx = Context(m, None, table)
    return lambda name, **args: table.dispatch(ctx, name, args)


def test_the_table_holds_qemus_migration_commands() -> None:
    table = CommandTable()
    add_migration_commands(table)
    assert table.names() == sorted(["migrate", "migrate_cancel", "query-migrate", "migrate-set-parameters",
                                    "query-migrate-parameters", "migrate-set-capabilities",
                                    "query-migrate-capabilities", "migrate-incoming"])


def test_parameters_and_capabilities() -> None:
    with machine(run=False) as (m, _):
        qmp = _qmp(m)
        assert qmp("query-migrate-parameters") == MigrationParameters().to_qmp()
        assert qmp("migrate-set-parameters", **{"downtime-limit": 50, "max-bandwidth": 1 << 20}) == {}
        params = qmp("query-migrate-parameters")
        assert params["downtime-limit"] == 50 and params["max-bandwidth"] == 1 << 20
        with pytest.raises(QmpError):
            qmp("migrate-set-parameters", **{"max-cpu-throttle": 1000})
        with pytest.raises(QmpError, match="does not accept value 'bogus'"):
            qmp("migrate-set-capabilities", capabilities=[{"capability": "bogus", "state": True}])
        with pytest.raises(QmpError, match="expected: boolean"):
            qmp("migrate-set-capabilities", capabilities=[{"capability": "events", "state": "yes"}])
        qmp("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True}])
        assert {"capability": "events", "state": True} in qmp("query-migrate-capabilities")
        assert qmp("query-migrate")["status"] == "none"
        assert qmp("migrate_cancel") == {}  # nothing to cancel


def test_unsupported_migrate_options_are_refused() -> None:
    with machine(run=False) as (m, _):
        qmp = _qmp(m)
        with pytest.raises(QmpError, match="block devices"):
            qmp("migrate", uri="file:/dev/null", blk=True)
        with pytest.raises(QmpError, match="postcopy"):
            qmp("migrate", uri="file:/dev/null", resume=True)


def test_migrate_to_a_file_completes_and_reports_events(tmp_path: Path) -> None:
    with machine() as (m, _):
        qmp = _qmp(m)
        events: list[tuple[str, object]] = []
        m.lifecycle.add_event_listener(lambda name, data: events.append((name, data)))
        qmp("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True}])
        qmp("migrate", uri=f"file:{tmp_path / 'snap'}")
        deadline = time.monotonic() + 60
        while qmp("query-migrate")["status"] not in ("completed", "failed") and time.monotonic() < deadline:
            time.sleep(0.05)
        info = qmp("query-migrate")
        assert info["status"] == "completed", info
        assert info["ram"]["transferred"] > 0
        assert ("MIGRATION", {"status": "completed"}) in events
        assert m.lifecycle.state is RunState.POSTMIGRATE
        with pytest.raises(QmpError, match="cannot migrate a VM in state postmigrate"):
            qmp("migrate", uri=f"file:{tmp_path / 'again'}")
        assert (tmp_path / "snap").stat().st_size > 0


def test_migrate_incoming_needs_incoming_defer() -> None:
    with machine(run=False) as (m, _):
        qmp = _qmp(m)
        with pytest.raises(QmpError, match="'-incoming' was not specified"):
            qmp("migrate-incoming", uri="tcp:127.0.0.1:0")
        m.migration.start_incoming("defer")
        assert m.lifecycle.state is RunState.INMIGRATE
        assert qmp("migrate-incoming", uri="tcp:127.0.0.1:0") == {}
        assert qmp("query-migrate")["status"] == "active"
        with pytest.raises(QmpError, match="already been started"):
            qmp("migrate-incoming", uri="tcp:127.0.0.1:0")
