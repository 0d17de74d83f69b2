"""MigrationManager: a machine's migration component (parameters, capabilities, the current job, -incoming).

The machine creates one and owns it; QMP's migration commands and the CLI's
``-incoming`` act through it. It sees the machine only as a ``MigratableVm``
(RAM blocks, dirty log, vmstate, lifecycle). MIGRATION and MIGRATION_PASS
events are emitted only with the ``events`` capability, as in QEMU.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kvmpy.config import ConfigError
from kvmpy.lifecycle import RunState
from kvmpy.migration.errors import MigrationError
from kvmpy.migration.interface import MigratableVm
from kvmpy.migration.params import CAPABILITIES, MigrationParameters

if TYPE_CHECKING:  # imported when first used: a VM that never migrates starts without numpy & co.
    from kvmpy.migration.destination import Incoming
    from kvmpy.migration.source import MigrationSource

log = logging.getLogger(__name__)


class MigrationManager:
    def __init__(self, vm: MigratableVm) -> None:
        self.vm = vm
        self.params = MigrationParameters()
        self.caps = {c: False for c in CAPABILITIES}
        self.source: "MigrationSource | None" = None
        self.incoming: "Incoming | None" = None
        self.deferred = False  # -incoming defer: waiting for migrate-incoming
        self.autostart = True

    def emit(self, name: str, data: dict[str, Any] | None) -> None:
        if self.caps["events"]:
            self.vm.lifecycle.emit(name, data)

    @property
    def active(self) -> bool:
        return self.source is not None and not self.source.finished

    # ---- outgoing ----------------------------------------------------------------
    def migrate(self, uri: str) -> "MigrationSource":
        from kvmpy.migration.source import MigrationSource
        from kvmpy.migration.transport import connect, parse_uri

        if self.active:
            raise MigrationError("There's a migration process in progress")
        state = self.vm.lifecycle.state.value
        if state in ("inmigrate", "postmigrate", "shutdown", "internal-error"):
            raise MigrationError(f"cannot migrate a VM in state {state}")
        channel = connect(parse_uri(uri))
        src = MigrationSource(self.vm, channel, self.params, self.caps["auto-converge"], self.emit)
        self.source = src
        src.start()
        return src

    # ---- incoming ------------------------------------------------------------------
    def start_incoming(self, uri: str) -> None:
        """``-incoming URI``, before the machine runs: the vCPUs stay parked (INMIGRATE) until it arrives.

        A bad URI raises ConfigError (a usage error). The VM then starts unless -S was given.
        """
        lifecycle = self.vm.lifecycle
        self.autostart = not lifecycle.start_paused
        lifecycle.set_state(RunState.INMIGRATE)  # Lifecycle.start() runs only a PRELAUNCH machine
        if uri == "defer":
            self.deferred = True
            return
        try:
            self.listen(uri)
        except MigrationError as exc:
            raise ConfigError(f"-incoming {uri}: {exc}") from None

    def listen(self, uri: str) -> "Incoming":
        from kvmpy.migration.destination import Incoming

        def done(error: str | None) -> None:
            if error is not None:
                self.emit("MIGRATION", {"status": "failed"})
                # As QEMU: a destination whose load failed exits, so the half-loaded VM never runs.
                self.vm.lifecycle.request_quit(1)
            else:
                self.emit("MIGRATION", {"status": "completed"})

        self.incoming = Incoming(self.vm, uri, self.autostart, done).start()
        self.deferred = False
        return self.incoming
