"""The core QMP commands kvmpy implements, with QEMU 7.2's reply shapes.

``add_core_commands(table)`` puts them in a CommandTable, which the caller
hands to the QMP server (no table is filled by importing a module). Every
handler takes a ``Context`` (the machine plus the calling session) and its
validated arguments. Run-state changes go through the machine's lifecycle; a
reset or quit is posted to the run loop, which performs it and emits the event.
"""

from __future__ import annotations

from kvmpy.lifecycle import RunState
from kvmpy.monitor.context import PACKAGE, QEMU_VERSION, Context
from kvmpy.monitor.hmp import run_hmp
from kvmpy.monitor.pci import query_pci
from kvmpy.monitor.protocol import COMMAND_NOT_FOUND, QmpError
from kvmpy.monitor.schema import Arg, CommandTable


def qmp_capabilities(ctx: Context, enable: list[str] | None = None) -> dict:
    # Reached only after negotiation: the session handles the first call itself.
    if enable:
        raise QmpError(f"Capability '{enable[0]}' not available")
    raise QmpError("Capabilities negotiation is already complete, command ignored", COMMAND_NOT_FOUND)


def query_version(ctx: Context) -> dict:
    return {"qemu": dict(QEMU_VERSION), "package": PACKAGE}


def query_commands(ctx: Context) -> list:
    assert ctx.commands is not None
    return [{"name": n} for n in ctx.commands.names()]


def query_status(ctx: Context) -> dict:
    state = ctx.machine.lifecycle.state
    return {"status": state.value, "singlestep": False, "running": state is RunState.RUNNING}


def stop(ctx: Context) -> dict:
    ctx.machine.lifecycle.pause()
    return {}


def cont(ctx: Context) -> dict:
    machine = ctx.machine
    if machine.lifecycle.state is not RunState.INMIGRATE:
        # After a completed (or stuck) outgoing migration the disk images were given up: take
        # them back first, as QEMU's cont does; refused while the destination holds them.
        from kvmpy.block.drive import activate_drives
        from kvmpy.block.errors import BlockError
        try:
            activate_drives(machine.drives)
        except BlockError as exc:
            raise QmpError(str(exc).split("\n")[0]) from None
    try:
        machine.lifecycle.resume()
    except RuntimeError as exc:
        raise QmpError(str(exc)) from None
    return {}


def system_reset(ctx: Context) -> dict:
    ctx.machine.lifecycle.request_reset()
    return {}


def system_powerdown(ctx: Context) -> dict:
    try:
        ctx.machine.system_powerdown()
    except RuntimeError as exc:
        raise QmpError(str(exc)) from None
    return {}


def quit_(ctx: Context) -> dict:
    ctx.machine.lifecycle.request_quit(0)
    return {}


def query_cpus_fast(ctx: Context) -> list:
    # QEMU 7.2 puts -smp N as N cores of one socket. x86 CPUs are unattached QOM devices, and
    # QEMU creates one other unattached device right after CPU 0, so CPU i>0 is device[i+1].
    return [{"thread-id": t.native_id or 0,
             "props": {"core-id": i, "thread-id": 0, "socket-id": 0},
             "qom-path": f"/machine/unattached/device[{i + 1 if i else 0}]",
             "cpu-index": i, "target": "x86_64"}
            for i, t in enumerate(ctx.machine.board.threads)]


def query_kvm(ctx: Context) -> dict:
    return {"enabled": True, "present": True}


def query_name(ctx: Context) -> dict:
    name = ctx.machine.config.name
    return {"name": name} if name is not None else {}


def query_memory_size_summary(ctx: Context) -> dict:
    memhp = ctx.machine.board.memhp
    return {"base-memory": ctx.machine.config.memory, "plugged-memory": memhp.plugged_size if memhp else 0}


def human_monitor_command(ctx: Context, command_line: str, cpu_index: int | None = None) -> str:
    if cpu_index is not None and not 0 <= cpu_index < len(ctx.machine.board.vcpus):
        raise QmpError(f"CPU {cpu_index} is not available" if cpu_index >= 0 else
                       "Parameter 'cpu-index' expects a CPU index")
    return run_hmp(ctx, command_line, cpu_index or 0)


def add_core_commands(table: CommandTable) -> None:
    """Put the core commands into ``table``."""
    table.command("qmp_capabilities",
                  enable=Arg("list", optional=True, items="str", choices=("oob",)))(qmp_capabilities)
    table.command("query-version")(query_version)
    table.command("query-commands")(query_commands)
    table.command("query-status")(query_status)
    table.command("stop")(stop)
    table.command("cont")(cont)
    table.command("system_reset")(system_reset)
    table.command("system_powerdown")(system_powerdown)
    table.command("quit")(quit_)
    table.command("query-cpus-fast")(query_cpus_fast)
    table.command("query-kvm")(query_kvm)
    table.command("query-name")(query_name)
    table.command("query-memory-size-summary")(query_memory_size_summary)
    table.command("query-pci")(query_pci)
    table.command("human-monitor-command", command_line=Arg("str"),
                  cpu_index=Arg("int", optional=True))(human_monitor_command)
