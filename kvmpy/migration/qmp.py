"""The migration QMP commands (QEMU 7.2 names and reply shapes), as a table the QMP server is given.

migrate, migrate_cancel, query-migrate, migrate-set-parameters,
query-migrate-parameters, migrate-set-capabilities, query-migrate-capabilities
and migrate-incoming. ``add_migration_commands(table)`` puts them in a
CommandTable; each acts on the machine's own MigrationManager
(``ctx.machine.migration``), which holds the parameters, capabilities and the
current or last job.
"""

from __future__ import annotations

import time

from kvmpy.migration.errors import MigrationError
from kvmpy.migration.manager import MigrationManager
from kvmpy.migration.params import CAPABILITIES, MigrationStats
from kvmpy.monitor.context import Context
from kvmpy.monitor.protocol import QmpError
from kvmpy.monitor.schema import Arg, CommandTable


def _stats(mgr: MigrationManager) -> MigrationStats:
    return mgr.source.stats if mgr.source is not None else MigrationStats()


def migrate(ctx: Context, uri: str, blk: bool = False, inc: bool = False, detach: bool = True,
            resume: bool = False) -> dict:
    if blk or inc:
        raise QmpError("kvmpy does not migrate block devices (blk/inc)")
    if resume:
        raise QmpError("kvmpy has no postcopy, so there is nothing to resume")
    try:
        ctx.machine.migration.migrate(uri)
    except MigrationError as exc:
        raise QmpError(str(exc)) from None
    return {}


def migrate_cancel(ctx: Context) -> dict:
    mgr = ctx.machine.migration
    if mgr.source is not None:
        mgr.source.cancel()
    return {}


def query_migrate(ctx: Context) -> dict:
    mgr = ctx.machine.migration
    st = _stats(mgr)
    if mgr.source is None and mgr.incoming is not None:
        inc = mgr.incoming
        status = "failed" if inc.error else "completed" if inc.done.is_set() else "active"
        return {"status": status, **({"error-desc": inc.error} if inc.error else {})}
    now_ms = int((time.monotonic() - st.start) * 1000) if st.start else 0
    return st.to_qmp(now_ms, mgr.caps["auto-converge"])


_PARAM_ARGS = {name: Arg("int", optional=True) for name in
               ("downtime_limit", "max_bandwidth", "cpu_throttle_initial", "cpu_throttle_increment",
                "max_cpu_throttle", "throttle_trigger_threshold", "x_max_rounds")}


def migrate_set_parameters(ctx: Context, **values: int) -> dict:
    mgr = ctx.machine.migration
    try:
        mgr.params.update(**values)
    except ValueError as exc:
        raise QmpError(str(exc)) from None
    if "max_bandwidth" in values and mgr.active and mgr.source is not None:
        mgr.source.set_max_bandwidth(values["max_bandwidth"])
    return {}


def query_migrate_parameters(ctx: Context) -> dict:
    return ctx.machine.migration.params.to_qmp()


def migrate_set_capabilities(ctx: Context, capabilities: list[dict]) -> dict:
    mgr = ctx.machine.migration
    if mgr.active:
        raise QmpError("There's a migration process in progress")
    wanted = {}
    for item in capabilities:
        name, state = item.get("capability"), item.get("state")
        if set(item) != {"capability", "state"} or not isinstance(state, bool):
            raise QmpError("Each capability needs exactly 'capability' and 'state' (a boolean)")
        if name not in mgr.caps:
            raise QmpError(f"Parameter 'capability' does not accept value '{name}'")
        wanted[name] = state
    mgr.caps.update(wanted)
    return {}


def query_migrate_capabilities(ctx: Context) -> list:
    return [{"capability": c, "state": s} for c, s in ctx.machine.migration.caps.items()]


def migrate_incoming(ctx: Context, uri: str) -> dict:
    mgr = ctx.machine.migration
    if not mgr.deferred:
        raise QmpError("'-incoming' was not specified on the command line" if mgr.incoming is None
                       else "The incoming migration has already been started")
    try:
        mgr.listen(uri)
    except MigrationError as exc:
        raise QmpError(str(exc)) from None
    return {}


def add_migration_commands(table: CommandTable) -> None:
    """Put the migration commands into ``table``."""
    table.command("migrate", uri=Arg("str"), blk=Arg("bool", optional=True), inc=Arg("bool", optional=True),
                  detach=Arg("bool", optional=True), resume=Arg("bool", optional=True))(migrate)
    table.command("migrate_cancel")(migrate_cancel)
    table.command("query-migrate")(query_migrate)
    table.command("migrate-set-parameters", **_PARAM_ARGS)(migrate_set_parameters)
    table.command("query-migrate-parameters")(query_migrate_parameters)
    table.command("migrate-set-capabilities", capabilities=Arg("list", items=Arg("dict", fields={
        "capability": Arg("str", choices=CAPABILITIES), "state": Arg("bool")})))(migrate_set_capabilities)
    table.command("query-migrate-capabilities")(query_migrate_capabilities)
    table.command("migrate-incoming", uri=Arg("str"))(migrate_incoming)
