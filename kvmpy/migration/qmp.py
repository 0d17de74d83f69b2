"""The migration QMP commands (QEMU 7.2 names and reply shapes) and ``-incoming`` start-up.

migrate, migrate_cancel, query-migrate, migrate-set-parameters,
query-migrate-parameters, migrate-set-capabilities, query-migrate-capabilities
and migrate-incoming. The per-machine migration state (parameters,
capabilities, the current or last job) lives in a MigrationManager attached to
the Machine on first use. MIGRATION and MIGRATION_PASS events are emitted only
with the ``events`` capability, as in QEMU.
"""

from __future__ import annotations

import dataclasses

import logging
import time
from typing import TYPE_CHECKING, Any

from kvmpy.config import ConfigError
from kvmpy.migration.destination import Incoming
from kvmpy.migration.errors import MigrationError
from kvmpy.migration.params import CAPABILITIES, MigrationParameters, MigrationStats
from kvmpy.migration.source import MigrationSource
from kvmpy.migration.transport import connect, parse_uri
from kvmpy.monitor.commands import Context, table
from kvmpy.monitor.protocol import QmpError
from kvmpy.monitor.schema import Arg

if TYPE_CHECKING:
    from kvmpy.machine import Machine

log = logging.getLogger(__name__)
ATTR = "migration_manager"


class MigrationManager:
    def __init__(self, machine: "Machine") -> None:
        self.machine = machine
        self.params = MigrationParameters()
        self.caps = {c: False for c in CAPABILITIES}
        self.source: MigrationSource | None = None
        self.incoming: Incoming | None = None
        self.deferred = False  # -incoming defer: waiting for migrate-incoming
        self.autostart = True

    @classmethod
    def of(cls, machine: "Machine") -> "MigrationManager":
        mgr = getattr(machine, ATTR, None)
        if mgr is None:
            mgr = cls(machine)
            setattr(machine, ATTR, mgr)
        return mgr

    def emit(self, name: str, data: dict[str, Any] | None) -> None:
        if self.caps["events"]:
            self.machine._emit(name, data)

    @property
    def active(self) -> bool:
        return self.source is not None and not self.source.finished

    # ---- outgoing ----------------------------------------------------------------
    def migrate(self, uri: str) -> MigrationSource:
        if self.active:
            raise MigrationError("There's a migration process in progress")
        state = self.machine.state.value
        if state in ("inmigrate", "postmigrate", "shutdown", "internal-error"):
            raise MigrationError(f"cannot migrate a VM in state {state}")
        channel = connect(parse_uri(uri))
        src = MigrationSource(self.machine, channel, self.params, self.caps["auto-converge"], self.emit)
        self.source = src
        src.start()
        return src

    # ---- incoming ------------------------------------------------------------------
    def listen(self, uri: str) -> Incoming:
        def done(error: str | None) -> None:
            if error is not None:
                self.emit("MIGRATION", {"status": "failed"})
                # As QEMU: a destination whose load failed exits, so the half-loaded VM never runs.
                self.machine.request_quit(1)
            else:
                self.emit("MIGRATION", {"status": "completed"})

        self.incoming = Incoming(self.machine, uri, self.autostart, done).start()
        self.deferred = False
        return self.incoming


def start_incoming(machine: "Machine", uri: str) -> MigrationManager:
    """Called by the CLI for ``-incoming URI`` before the machine runs: the vCPUs wait for the stream."""
    from kvmpy.machine import RunState

    mgr = MigrationManager.of(machine)
    mgr.autostart = not machine.config.start_paused
    # Machine.start() must not run the VM before it has arrived (the config is frozen: replace it)
    machine.config = dataclasses.replace(machine.config, start_paused=True)
    if uri == "defer":
        mgr.deferred = True
        machine.state = RunState.INMIGRATE
        return mgr
    try:
        mgr.listen(uri)
    except MigrationError as exc:
        raise ConfigError(f"-incoming {uri}: {exc}") from None
    return mgr


def _stats(mgr: MigrationManager) -> MigrationStats:
    return mgr.source.stats if mgr.source is not None else MigrationStats()


@table.command("migrate", uri=Arg("str"), blk=Arg("bool", optional=True), inc=Arg("bool", optional=True),
               detach=Arg("bool", optional=True), resume=Arg("bool", optional=True))
def migrate(ctx: Context, uri: str, blk: bool = False, inc: bool = False, detach: bool = True,
            resume: bool = False) -> dict:
    if blk or inc:
        raise QmpError("kvmpy does not migrate block devices (blk/inc)")
    if resume:
        raise QmpError("kvmpy has no postcopy, so there is nothing to resume")
    try:
        MigrationManager.of(ctx.machine).migrate(uri)
    except MigrationError as exc:
        raise QmpError(str(exc)) from None
    return {}


@table.command("migrate_cancel")
def migrate_cancel(ctx: Context) -> dict:
    mgr = MigrationManager.of(ctx.machine)
    if mgr.source is not None:
        mgr.source.cancel()
    return {}


@table.command("query-migrate")
def query_migrate(ctx: Context) -> dict:
    mgr = MigrationManager.of(ctx.machine)
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


@table.command("migrate-set-parameters", **_PARAM_ARGS)
def migrate_set_parameters(ctx: Context, **values: int) -> dict:
    mgr = MigrationManager.of(ctx.machine)
    try:
        mgr.params.update(**values)
    except ValueError as exc:
        raise QmpError(str(exc)) from None
    if "max_bandwidth" in values and mgr.active and mgr.source is not None:
        mgr.source.set_max_bandwidth(values["max_bandwidth"])
    return {}


@table.command("query-migrate-parameters")
def query_migrate_parameters(ctx: Context) -> dict:
    return MigrationManager.of(ctx.machine).params.to_qmp()


@table.command("migrate-set-capabilities", capabilities=Arg("list", items=Arg("dict", fields={
    "capability": Arg("str", choices=CAPABILITIES), "state": Arg("bool")})))
def migrate_set_capabilities(ctx: Context, capabilities: list[dict]) -> dict:
    mgr = MigrationManager.of(ctx.machine)
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


@table.command("query-migrate-capabilities")
def query_migrate_capabilities(ctx: Context) -> list:
    return [{"capability": c, "state": s} for c, s in MigrationManager.of(ctx.machine).caps.items()]


@table.command("migrate-incoming", uri=Arg("str"))
def migrate_incoming(ctx: Context, uri: str) -> dict:
    mgr = MigrationManager.of(ctx.machine)
    if not mgr.deferred:
        raise QmpError("'-incoming' was not specified on the command line" if mgr.incoming is None
                       else "The incoming migration has already been started")
    try:
        mgr.listen(uri)
    except MigrationError as exc:
        raise QmpError(str(exc)) from None
    return {}
