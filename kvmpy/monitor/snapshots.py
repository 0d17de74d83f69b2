"""VM snapshots in qcow2 images from the monitor: HMP savevm, loadvm, delvm, info snapshots and the QMP
jobs snapshot-save, snapshot-load, snapshot-delete, with QEMU 7.2's wording and shapes.

The work is ``kvmpy.migration.savevm``'s. HMP runs it in the command and prints
an error as ``Error: ...``; the QMP commands start a job (``kvmpy.monitor.jobs``)
whose ``error`` carries the message. QMP names disks by node name
(``-blockdev node-name``, or QEMU's automatic ``#blockNNN`` for a ``-drive``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmpy.block.drive import Drive
from kvmpy.block.img_info import snapshot_table_text
from kvmpy.migration.savevm import (SnapshotError, SnapshotInfo, can_snapshot, delete_vm, device_name,
                                    list_snapshots, load_vm, loadable, save_vm, vmstate_drive)
from kvmpy.monitor.block import attached_drives, node_name
from kvmpy.monitor.jobs import JobFailed
from kvmpy.monitor.removable import ide_units
from kvmpy.monitor.schema import Arg, CommandTable

if TYPE_CHECKING:
    from kvmpy.machine import Machine
    from kvmpy.monitor.context import Context


def _usage(cmd: str, problem: str) -> str:
    return f"{cmd}: {problem}\nTry \"help {cmd}\" for more information\n"


def refuse_ide_disks(machine: "Machine") -> None:
    """The snapshot covers the machine's virtio-blk disks (``Machine.drives``); a writable IDE disk would be
    left out, and not reverted by a loadvm, so it is refused instead of silently skipped."""
    for _, _, unit in ide_units(machine.board):
        d = unit.drive
        if d is not None and not d.readonly:
            raise SnapshotError(f"Device '{device_name(d)}' is a writable IDE disk, which kvmpy's savevm "
                                "does not cover yet")


def _not_migrating(ctx: "Context") -> None:
    if ctx.machine.migration.active:
        raise SnapshotError("There's a migration process in progress")
    refuse_ide_disks(ctx.machine)


# ---- HMP ------------------------------------------------------------------------------------
def hmp_savevm(ctx: "Context", args: list[str]) -> str:
    if len(args) > 1:
        return _usage("savevm", "extraneous characters at the end of line")
    try:
        _not_migrating(ctx)
        save_vm(ctx.machine, args[0] if args else None, overwrite=True)
    except SnapshotError as exc:
        return f"Error: {exc}\n"
    return ""


def hmp_loadvm(ctx: "Context", args: list[str]) -> str:
    if len(args) != 1:
        return _usage("loadvm", "string expected" if not args else "extraneous characters at the end of line")
    try:
        _not_migrating(ctx)
        load_vm(ctx.machine, args[0])
    except SnapshotError as exc:
        return f"Error: {exc}\n"
    return ""


def hmp_delvm(ctx: "Context", args: list[str]) -> str:
    if len(args) != 1:
        return _usage("delvm", "string expected" if not args else "extraneous characters at the end of line")
    try:
        delete_vm(ctx.machine, args[0])
    except SnapshotError as exc:
        return f"Error: {exc}\n"
    return ""


def _table(snaps: list[SnapshotInfo], ids: bool = True) -> str:
    return snapshot_table_text([{
        "id": s.id if ids else "--", "name": s.name, "vm-state-size": s.vm_state_size, "date-sec": s.date_sec,
        "vm-clock-sec": s.vm_clock_nsec // 1_000_000_000, "vm-clock-nsec": s.vm_clock_nsec % 1_000_000_000,
        **({"icount": s.icount} if s.icount is not None else {})} for s in snaps])


def info_snapshots_text(ctx: "Context", args: list[str]) -> str:
    """QEMU's hmp_info_snapshots: the tags every disk has (loadable), then each disk's partial ones."""
    if args:
        return _usage("info snapshots", "extraneous characters at the end of line").replace(
            "info snapshots:", "snapshots:", 1)
    drives = ctx.machine.drives
    try:
        vs = vmstate_drive(drives)
    except SnapshotError as exc:
        return f"{exc}\n"
    images = [("" if d.node_name else d.id, list_snapshots(d)) for d in drives if can_snapshot(d)]
    images = [(name, snaps) for name, snaps in images if snaps]
    if not images:
        return "There is no snapshot available.\n"
    everywhere = []
    for s in list_snapshots(vs):
        if loadable(ctx.machine, s.name):
            everywhere.append(s)
            images = [(name, [x for x in snaps if x.name != s.name]) for name, snaps in images]
    out = "List of snapshots present on all disks:\n"
    out += _table(everywhere, ids=False) if everywhere else "None\n"
    for name, snaps in images:
        if snaps:
            out += f"\nList of partial (non-loadable) snapshots on '{name}':\n" + _table(snaps)
    return out


# ---- QMP jobs ------------------------------------------------------------------------------
def _nodes(ctx: "Context", names: list[str]) -> list[Drive]:
    found = {node_name(a.drive, i): a.drive for i, a in enumerate(attached_drives(ctx.machine.board))}
    out = []
    for n in names:
        if n not in found:
            raise SnapshotError(f"No block device node '{n}'")
        out.append(found[n])
    return out


def _vmstate(drives: list[Drive], ctx: "Context", name: str) -> Drive | None:
    by_name = {node_name(a.drive, i): a.drive for i, a in enumerate(attached_drives(ctx.machine.board))}
    d = by_name.get(name)
    return d if d in drives else None


def _job(ctx: "Context", job_id: str, kind: str, work) -> dict:  # type: ignore[no-untyped-def]
    def run() -> None:
        try:
            work()
        except SnapshotError as exc:
            raise JobFailed(str(exc)) from None
    ctx.machine.jobs.start(job_id, kind, run)
    return {}


def snapshot_save(ctx: "Context", job_id: str, tag: str, vmstate: str, devices: list[str]) -> dict:
    def work() -> None:
        _not_migrating(ctx)
        drives = _nodes(ctx, devices) if devices else []
        save_vm(ctx.machine, tag, overwrite=False, devices=drives, vmstate=_vmstate(drives, ctx, vmstate),
                vmstate_name=vmstate)
    return _job(ctx, job_id, "snapshot-save", work)


def snapshot_load(ctx: "Context", job_id: str, tag: str, vmstate: str, devices: list[str]) -> dict:
    def work() -> None:
        _not_migrating(ctx)
        drives = _nodes(ctx, devices) if devices else []
        load_vm(ctx.machine, tag, devices=drives, vmstate=_vmstate(drives, ctx, vmstate), vmstate_name=vmstate)
    return _job(ctx, job_id, "snapshot-load", work)


def snapshot_delete(ctx: "Context", job_id: str, tag: str, devices: list[str]) -> dict:
    def work() -> None:
        delete_vm(ctx.machine, tag, devices=_nodes(ctx, devices) if devices else [])
    return _job(ctx, job_id, "snapshot-delete", work)


def add_snapshot_commands(table: CommandTable) -> None:
    """Put snapshot-save, snapshot-load and snapshot-delete into ``table``."""
    names = Arg("list", items="str")
    table.command("snapshot-save", job_id=Arg("str"), tag=Arg("str"), vmstate=Arg("str"),
                  devices=names)(snapshot_save)
    table.command("snapshot-load", job_id=Arg("str"), tag=Arg("str"), vmstate=Arg("str"),
                  devices=names)(snapshot_load)
    table.command("snapshot-delete", job_id=Arg("str"), tag=Arg("str"), devices=names)(snapshot_delete)

