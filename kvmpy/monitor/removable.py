"""QMP eject and blockdev-change-medium for the IDE CD-ROM, and the IDE drives' query-block entries.

A CD unit is named by its -drive id (``device``, e.g. ``ide1-cd0``) or by ``id``, the
``-device ide-cd,id=`` of a unit made that way. ``eject`` opens
the tray and removes the medium unless the guest locked it (PREVENT ALLOW MEDIUM REMOVAL):
then the guest is sent an eject request and the command fails with QEMU's message, unless
``force``. ``blockdev-change-medium`` opens the new image read-only and inserts it; the guest
sees a media event and a unit attention. query-block shows CDs as QEMU does: removable,
locked, tray_open, and ``inserted`` only while there is a medium.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvmpy.block.drive import open_drive
from kvmpy.block.errors import BlockError
from kvmpy.devices.ide.channel import IdeChannel, Unit
from kvmpy.devices.ide.piix import PiixIde
from kvmpy.monitor.protocol import QmpError
from kvmpy.monitor.schema import Arg, CommandTable

if TYPE_CHECKING:
    from kvmpy.monitor.context import Context

QDEV_BASE = "/machine/unattached/device"


def ide_units(board: Any) -> list[tuple[IdeChannel, int, Unit]]:
    """Every present IDE unit of the board, channel by channel, master first."""
    out = []
    for dev in getattr(board, "devices", {}).values():
        if isinstance(dev, PiixIde):
            for ch in dev.channels:
                out.extend((ch, i, u) for i, u in enumerate(ch.units) if u.present)
    return out


def _cd(ctx: "Context", device: str | None, qdev_id: str | None) -> tuple[IdeChannel, int, Unit]:
    name = device or qdev_id
    if not name:
        raise QmpError("Need exactly one of 'device' and 'id'")
    for ch, i, u in ide_units(ctx.machine.board):
        # id= is a -device unit's own id; a legacy unit has none, so kvmpy lets id= name its drive, as before
        if (u.id == device) if device else (u.qdev_id or u.id) == qdev_id:
            if u.kind != "cd":
                raise QmpError(f"Device '{name}' is not removable")
            return ch, i, u
    raise QmpError(f"Device '{name}' not found")


def _close(drive: Any) -> None:
    if drive is not None:
        drive.close()


def eject(ctx: "Context", device: str | None = None, id: str | None = None, force: bool = False) -> dict:
    ch, i, u = _cd(ctx, device, id)
    try:
        _close(ch.eject(i, force))
    except ValueError:
        raise QmpError(f"Device '{u.id}' is locked and force was not specified, wait for tray to open and "
                       "try again") from None
    return {}


def blockdev_change_medium(ctx: "Context", filename: str, device: str | None = None, id: str | None = None,
                           format: str | None = None, read_only_mode: str | None = None,
                           force: bool = False) -> dict:
    ch, i, u = _cd(ctx, device, id)
    assert u.atapi is not None
    if u.atapi.locked and not force and not u.atapi.tray_open:
        u.atapi.eject_request()
        raise QmpError(f"Device '{u.id}' is locked and force was not specified, wait for tray to open and "
                       "try again")
    readonly = read_only_mode != "read-write"
    try:
        drive = open_drive(filename, format, id=u.id, readonly=readonly)
    except BlockError as exc:
        raise QmpError(str(exc)) from None
    _close(ch.change_medium(i, drive))
    return {}


def ide_block_entries(ctx: "Context", first_index: int, info: Any, attached: Any) -> list[dict[str, Any]]:
    """query-block entries for the IDE units; ``info(AttachedDrive, index)`` renders an inserted medium."""
    out = []
    for n, (ch, i, u) in enumerate(ide_units(ctx.machine.board)):
        qdev = u.qdev or f"{QDEV_BASE}[{n}]"
        with ch.lock:
            drive = u.drive
            entry: dict[str, Any] = {"io-status": "ok", "device": u.id, "locked": False, "removable": False,
                                     "qdev": qdev, "type": "unknown"}
            if drive is not None:
                entry = info(attached(drive, qdev), first_index + n)
            if u.atapi is not None:
                entry.update({"removable": True, "locked": u.atapi.locked, "tray_open": u.atapi.tray_open})
        out.append(entry)
    return out


def add_removable_commands(table: CommandTable) -> None:
    table.command("eject", device=Arg("str", optional=True), id=Arg("str", optional=True),
                  force=Arg("bool", optional=True))(eject)
    table.command("blockdev-change-medium", device=Arg("str", optional=True), id=Arg("str", optional=True),
                  filename=Arg("str"), format=Arg("str", optional=True),
                  read_only_mode=Arg("str", optional=True, choices=("retain", "read-only", "read-write")),
                  force=Arg("bool", optional=True))(blockdev_change_medium)
