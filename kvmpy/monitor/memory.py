"""QMP memory hotplug: object-add/object-del (memory backends), device_add/device_del (pc-dimm),
query-memory-devices, query-acpi-ospm-status, and HMP ``info memory-devices``, in QEMU 7.2's shapes.

``add_memory_commands(table)`` puts them in a CommandTable. They work through
the board's ``memhp`` (kvmpy.boards.pc_memhp), whose errors already carry
QEMU's messages; unknown ids are DeviceNotFound as in QEMU, everything else
GenericError, and a refused command leaves the running VM untouched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvmpy.boards.pc_memhp import NotFound, PcMemoryHotplug
from kvmpy.memory.backend import BackendError
from kvmpy.memory.dimm import DimmError
from kvmpy.monitor.protocol import DEVICE_NOT_FOUND, QmpError
from kvmpy.monitor.schema import Arg, Command, CommandTable, check_members

if TYPE_CHECKING:
    from kvmpy.monitor.context import Context

DIMM_DRIVER = "pc-dimm"


def _memhp(ctx: "Context") -> PcMemoryHotplug:
    memhp = ctx.machine.board.memhp
    if memhp is None:
        raise QmpError("memory hotplug is not enabled: missing acpi device or acpi disabled")
    return memhp


def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except NotFound as exc:
        raise QmpError(str(exc), DEVICE_NOT_FOUND) from None
    except (BackendError, DimmError) as exc:
        raise QmpError(str(exc)) from None


def object_add(ctx: "Context", qom_type: str, id: str, **props: Any) -> dict:
    _run(_memhp(ctx).object_add, qom_type, id, {k.replace("_", "-"): v for k, v in props.items()})
    return {}


def object_del(ctx: "Context", id: str) -> dict:
    _run(_memhp(ctx).object_del, id)
    return {}


class DeviceAddCommand(Command):
    """device_add takes any device's properties: the ones pc-dimm lacks are refused by the handler, after the
    driver and the id, with QEMU's "Property 'pc-dimm.x' not found" rather than the schema's message."""

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        known = {k: v for k, v in arguments.items() if k in self.args}
        check_members(self.args, known)
        return {**{k.replace("-", "_"): v for k, v in known.items()},
                **{k: v for k, v in arguments.items() if k not in self.args}}


def device_add(ctx: "Context", driver: str, id: str | None = None, memdev: str | None = None,
               addr: int | None = None, slot: int | None = None, node: int | None = None,
               **unknown: Any) -> dict:
    # Under the lifecycle lock: a snapshot reset or a loadvm, which hold it, sees the DIMM set before or after
    # the plug, never half of it. (The guest's eject runs on a vCPU thread and must not take it.)
    with ctx.machine.lifecycle.exclusive():
        if ctx.machine.migration.active:  # the RAM block list a migration sends is fixed when it starts
            raise QmpError("device_add not allowed while migrating")
        if driver != DIMM_DRIVER:
            raise QmpError(f"'{driver}' is not a valid device model name")
        memhp = _memhp(ctx)
        if id is not None and memhp.find(id) is not None:
            raise QmpError(f"Duplicate device ID '{id}'")
        if unknown:
            raise QmpError(f"Property '{driver}.{next(iter(unknown))[:64]}' not found")
        _run(memhp.plug, id, memdev, addr, slot, node or 0, hotplug=True)
    return {}


def device_del(ctx: "Context", id: str) -> dict:
    with ctx.machine.lifecycle.exclusive():  # as device_add
        if ctx.machine.migration.active:
            raise QmpError("device_del not allowed while migrating")
        _run(_memhp(ctx).request_unplug, id)
    return {}


def query_memory_devices(ctx: "Context") -> list:
    memhp = ctx.machine.board.memhp
    return [] if memhp is None else [{"type": "dimm", "data": d.info()} for d in memhp.dimms]


def query_acpi_ospm_status(ctx: "Context") -> list:
    memhp = ctx.machine.board.memhp
    return [] if memhp is None else memhp.controller.ospm_status()


def _memdev(obj_id: str, size: int, share: bool, prealloc: bool) -> dict:
    return {"share": share, "reserve": True, "prealloc": prealloc, "host-nodes": [], "size": size, "merge": True,
            "dump": True, "policy": "default", "id": obj_id}


def query_memdev(ctx: "Context") -> list:
    """Every memory backend, the newest first, then the machine's own RAM (pc.ram), as QEMU 7.2 lists them."""
    memhp = ctx.machine.board.memhp
    backends = list(memhp.backends) if memhp is not None else []
    return [_memdev(b.id, b.size, b.share, b.prealloc) for b in reversed(backends)] + \
        [_memdev("pc.ram", ctx.machine.config.memory, False, False)]


def info_memdev_text(ctx: "Context") -> str:
    out = []
    for m in query_memdev(ctx):
        out.append(f"memory backend: {m['id']}\n  size:  {m['size']}\n  merge: true\n  dump: true\n"
                   f"  prealloc: {str(m['prealloc']).lower()}\n  share: {str(m['share']).lower()}\n"
                   "  reserve: true\n  policy: default\n  host nodes: \n")
    return "".join(out) + "\n"


def info_memory_devices_text(ctx: "Context") -> str:
    out = []
    for dev in query_memory_devices(ctx):
        d = dev["data"]
        out.append(f"Memory device [{dev['type']}]: \"{d.get('id', '')}\"\n")
        out.append(f"  addr: {d['addr']:#x}\n  slot: {d['slot']}\n  node: {d['node']}\n  size: {d['size']}\n"
                   f"  memdev: {d['memdev']}\n  hotplugged: {str(d['hotplugged']).lower()}\n"
                   f"  hotpluggable: {str(d['hotpluggable']).lower()}\n")
    return "".join(out)


def add_memory_commands(table: CommandTable) -> None:
    """Put the memory-hotplug commands into ``table``."""
    table.command("object-add", qom_type=Arg("str"), id=Arg("str"), size=Arg("int", optional=True, min=0),
                  mem_path=Arg("str", optional=True), share=Arg("bool", optional=True),
                  prealloc=Arg("bool", optional=True))(object_add)
    table.command("object-del", id=Arg("str"))(object_del)
    table.add(DeviceAddCommand("device_add", device_add, {
        "driver": Arg("str"), "id": Arg("str", optional=True), "memdev": Arg("str", optional=True),
        "addr": Arg("int", optional=True, min=0), "slot": Arg("int", optional=True),
        "node": Arg("int", optional=True, min=0)}))
    table.command("device_del", id=Arg("str"))(device_del)
    table.command("query-memory-devices")(query_memory_devices)
    table.command("query-acpi-ospm-status")(query_acpi_ospm_status)
    table.command("query-memdev")(query_memdev)
