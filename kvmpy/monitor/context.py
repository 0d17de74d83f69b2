"""What every QMP/HMP command handler is given (the machine, the session, the command table) and the QMP version.

query-version and the greeting report QEMU 7.2.0, the QMP dialect kvmpy
follows, with ``package`` naming kvmpy and its version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvmpy.version import __version__

if TYPE_CHECKING:
    from kvmpy.machine import Machine
    from kvmpy.monitor.schema import CommandTable

QEMU_VERSION = {"major": 7, "minor": 2, "micro": 0}
PACKAGE = f"kvmpy {__version__}"


@dataclass
class Context:
    machine: "Machine"
    session: Any = None  # the Session running the command (qmp_capabilities needs it)
    commands: "CommandTable | None" = None  # the table the command came from (query-commands, HMP)
