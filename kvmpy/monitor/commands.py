"""The QMP commands kvmpy implements, with QEMU 7.2's reply shapes.

Every handler takes a ``Context`` (the machine plus the calling session) and
its validated arguments. Run-state changes go through the Machine's own
thread-safe methods; a reset or quit is posted to the Machine's run loop,
which performs it and emits the event. query-version reports QEMU 7.2.0,
the QMP dialect kvmpy follows, with ``package`` naming kvmpy and its version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvmpy.version import __version__
from kvmpy.monitor.protocol import COMMAND_NOT_FOUND, QmpError
from kvmpy.monitor.schema import Arg, CommandTable

if TYPE_CHECKING:
    from kvmpy.machine import Machine

QEMU_VERSION = {"major": 7, "minor": 2, "micro": 0}
PACKAGE = f"kvmpy {__version__}"


@dataclass
class Context:
    machine: "Machine"
    session: Any = None  # the Session running the command (qmp_capabilities needs it)


table = CommandTable()


@table.command("qmp_capabilities", enable=Arg("list", optional=True, items="str", choices=("oob",)))
def qmp_capabilities(ctx: Context, enable: list[str] | None = None) -> dict:
    # Reached only after negotiation: the session handles the first call itself.
    if enable:
        raise QmpError(f"Capability '{enable[0]}' not available")
    raise QmpError("Capabilities negotiation is already complete, command ignored", COMMAND_NOT_FOUND)


@table.command("query-version")
def query_version(ctx: Context) -> dict:
    return {"qemu": dict(QEMU_VERSION), "package": PACKAGE}


@table.command("query-commands")
def query_commands(ctx: Context) -> list:
    return [{"name": n} for n in table.names()]


@table.command("query-status")
def query_status(ctx: Context) -> dict:
    from kvmpy.machine import RunState

    state = ctx.machine.state
    return {"status": state.value, "singlestep": False, "running": state is RunState.RUNNING}


@table.command("stop")
def stop(ctx: Context) -> dict:
    ctx.machine.pause()
    return {}


@table.command("cont")
def cont(ctx: Context) -> dict:
    try:
        ctx.machine.resume()
    except RuntimeError as exc:
        raise QmpError(str(exc)) from None
    return {}


@table.command("system_reset")
def system_reset(ctx: Context) -> dict:
    ctx.machine.request_reset()
    return {}


@table.command("system_powerdown")
def system_powerdown(ctx: Context) -> dict:
    try:
        ctx.machine.system_powerdown()
    except RuntimeError as exc:
        raise QmpError(str(exc)) from None
    return {}


@table.command("quit")
def quit_(ctx: Context) -> dict:
    ctx.machine.request_quit(0)
    return {}


@table.command("query-cpus-fast")
def query_cpus_fast(ctx: Context) -> list:
    # QEMU 7.2 puts -smp N as N cores of one socket. x86 CPUs are unattached QOM devices, and
    # QEMU creates one other unattached device right after CPU 0, so CPU i>0 is device[i+1].
    return [{"thread-id": t.native_id or 0,
             "props": {"core-id": i, "thread-id": 0, "socket-id": 0},
             "qom-path": f"/machine/unattached/device[{i + 1 if i else 0}]",
             "cpu-index": i, "target": "x86_64"}
            for i, t in enumerate(ctx.machine.threads)]


@table.command("query-kvm")
def query_kvm(ctx: Context) -> dict:
    return {"enabled": True, "present": True}


@table.command("query-name")
def query_name(ctx: Context) -> dict:
    name = ctx.machine.config.name
    return {"name": name} if name is not None else {}


@table.command("query-memory-size-summary")
def query_memory_size_summary(ctx: Context) -> dict:
    return {"base-memory": ctx.machine.config.memory, "plugged-memory": 0}


@table.command("human-monitor-command", command_line=Arg("str"), cpu_index=Arg("int", optional=True))
def human_monitor_command(ctx: Context, command_line: str, cpu_index: int | None = None) -> str:
    from kvmpy.monitor.hmp import run_hmp

    if cpu_index is not None and not 0 <= cpu_index < len(ctx.machine.vcpus):
        raise QmpError(f"CPU {cpu_index} is not available" if cpu_index >= 0 else
                       "Parameter 'cpu-index' expects a CPU index")
    return run_hmp(ctx, command_line, cpu_index or 0)
