"""QMP query-block, query-blockstats and block_resize, and HMP info block / info blockstats / block_resize, in QEMU 7.2's shapes.

The drives are the ones the board's devices use (each virtio-blk function's
``Drive``), listed in the board's device order, each with the QOM path QEMU
gives its device's backend: ``/machine/peripheral/<id>/virtio-backend`` for a
device with an id, ``/machine/peripheral-anon/device[N]/virtio-backend``
otherwise (N counting the anonymous -device functions). A drive from
``-drive`` is named by its id (``device``); one from ``-blockdev`` has an empty
``device`` and is found by its node name, as in QEMU.

``block_resize`` resizes the image and the device raises a configuration
change interrupt, so the guest sees the new capacity at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvmpy.block.backend import BlockBackend
from kvmpy.block.drive import BlockStats, Drive
from kvmpy.block.errors import BlockError
from kvmpy.block.img_info import image_info
from kvmpy.devices.virtio.blk import VirtioBlk
from kvmpy.devices.virtio.device import VirtioDevice
from kvmpy.monitor.protocol import QmpError
from kvmpy.monitor.removable import add_removable_commands, ide_block_entries
from kvmpy.monitor.schema import Arg, CommandTable

if TYPE_CHECKING:
    from kvmpy.monitor.context import Context


@dataclass(frozen=True)
class AttachedDrive:
    drive: Drive
    qdev: str  # the QOM path of the device's block backend


def attached_drives(board: Any) -> list[AttachedDrive]:
    """Every virtio-blk drive of the board with QEMU's QOM path, in QEMU's order: the -drive
    backends in command-line order, then the devices' own backends over -blockdev nodes."""
    out: list[AttachedDrive] = []
    anon = 0
    for fn in getattr(board, "devices", {}).values():
        model = getattr(fn, "device", None)
        if not isinstance(model, VirtioDevice):
            continue  # not a -device function
        qdev_id = getattr(fn, "qdev_id", "")
        if qdev_id:
            path = f"/machine/peripheral/{qdev_id}"
        else:
            path = f"/machine/peripheral-anon/device[{anon}]"
            anon += 1
        if isinstance(model, VirtioBlk):
            out.append(AttachedDrive(model.drive, f"{path}/virtio-backend"))
    order = [d.id for d in getattr(getattr(board, "config", None), "drives", ())]
    return sorted(out, key=lambda a: order.index(a.drive.id) if a.drive.id in order else len(order))


def _drives(ctx: "Context") -> list[AttachedDrive]:
    return attached_drives(ctx.machine.board)


def node_name(d: Drive, index: int, level: int = 0, file: bool = False) -> str:
    """A node's name: the -blockdev node-name, else an automatic ``#blockNNN`` as QEMU makes them
    (unique per drive, chain level and format/file node)."""
    if level == 0 and not file and d.node_name:
        return d.node_name
    if level == 0 and file and d.file_node_name:
        return d.file_node_name
    return f"#block{100 + 64 * index + 2 * level + int(file):03d}"


def _chain_info(img: BlockBackend) -> dict[str, Any]:
    info = image_info(img)
    if img.backing is not None:
        info["backing-image"] = _chain_info(img.backing)
    return info


def _cache(d: Drive) -> dict[str, bool]:
    return {"no-flush": d.cache.no_flush, "direct": d.cache.direct, "writeback": d.writeback}


def block_info(a: AttachedDrive, index: int) -> dict[str, Any]:
    d = a.drive
    img = d.image
    chain = d.chain()
    inserted: dict[str, Any] = {
        "iops_rd": 0, "detect_zeroes": "off", "image": _chain_info(img), "iops_wr": 0, "ro": d.readonly,
        "node-name": node_name(d, index), "backing_file_depth": len(chain) - 1, "drv": img.format_name,
        "iops": 0, "bps_wr": 0, "write_threshold": 0,
    }
    h = getattr(img, "h", None)
    if h is not None and h.backing_file:
        inserted["backing_file"] = h.backing_file
    inserted.update({"encrypted": False, "bps": 0, "bps_rd": 0, "cache": _cache(d), "file": str(img.path)})
    return {"io-status": "ok", "device": d.id, "locked": False, "removable": False, "inserted": inserted,
            "qdev": a.qdev, "type": "unknown"}


def query_block(ctx: "Context") -> list:
    with_index = list(enumerate(_drives(ctx)))
    ide = ide_block_entries(ctx, len(with_index), block_info, AttachedDrive)  # QEMU lists the IDE drives first
    return ide + [block_info(a, i) for i, a in with_index]


def _file_node(stats: dict[str, Any], name: str, discards: int = 0, discard_bytes: int = 0) -> dict[str, Any]:
    return {"stats": stats, "node-name": name,
            "driver-specific": {"discard-bytes-ok": discard_bytes, "discard-nb-ok": discards, "driver": "file",
                                "discard-nb-failed": 0}}


def _idle_stats(now: int) -> dict[str, Any]:
    s = BlockStats().as_qmp(now)
    s.update(account_invalid=False, account_failed=False)
    return s


def _node_stats(d: Drive, index: int, level: int, top: dict[str, Any] | None,
                discards: tuple[int, int], now: int) -> dict[str, Any]:
    """One node of query-blockstats: its stats, its file child ("parent"), its backing node."""
    entry: dict[str, Any] = {"parent": _file_node(_idle_stats(now), node_name(d, index, level, True), *discards)}
    entry["stats"] = top if top is not None else _idle_stats(now)
    if level + 1 < len(d.chain()):
        entry["backing"] = _node_stats(d, index, level + 1, None, (0, 0), now)
    entry["node-name"] = node_name(d, index, level)
    return entry


def query_blockstats(ctx: "Context", query_nodes: bool = False) -> list:
    now = time.monotonic_ns()
    out = []
    for i, a in enumerate(_drives(ctx)):
        d = a.drive
        unmapped = (d.stats.unmap_operations, d.stats.unmap_bytes) if d.discard == "unmap" else (0, 0)
        entry = _node_stats(d, i, 0, d.stats.as_qmp(now), unmapped, now)
        if query_nodes:
            out.append(entry)
        else:
            out.append({"device": d.id, **entry, "qdev": a.qdev})
    return out


def _find(ctx: "Context", device: str | None, node: str | None) -> Drive:
    for i, a in enumerate(_drives(ctx)):
        if device and a.drive.id == device or node and node_name(a.drive, i) == node:
            return a.drive
    raise QmpError(f"Cannot find device='{device or ''}' nor node-name='{node or ''}'")


def block_resize(ctx: "Context", size: int, device: str | None = None, node_name: str | None = None) -> dict:
    drive = _find(ctx, device, node_name)
    if size < 0:
        raise QmpError("Parameter 'size' expects a >0 size")
    if drive.readonly:
        raise QmpError("Image is read-only")
    if drive.image.format_name == "qcow2" and size % 512:
        raise QmpError("The new size must be a multiple of 512")
    try:
        drive.resize(size)
    except BlockError as exc:
        raise QmpError(str(exc)) from None
    return {}


def _cache_text(d: Drive) -> str:
    text = "writeback" if d.writeback else "writethrough"
    if d.cache.direct:
        text += ", direct"
    if d.cache.no_flush:
        text += ", ignore flushes"
    return text


def info_block_text(ctx: "Context", device: str | None = None) -> str:
    out: list[str] = []
    for i, info in enumerate(query_block(ctx)):
        name = info["device"] or info["inserted"]["node-name"]
        if device is not None and name != device:
            continue
        ins = info["inserted"]
        if i:
            out.append("\n")
        head = f"{info['device']} ({ins['node-name']})" if info["device"] else ins["node-name"]
        flags = ins["drv"] + (", read-only" if ins["ro"] else "")
        out.append(f"{head}: {ins['file']} ({flags})\n")
        out.append(f"    Attached to:      {info['qdev']}\n")
        out.append(f"    Cache mode:       {_cache_text(_drive_at(ctx, i))}\n")
        if "backing_file" in ins:
            out.append(f"    Backing file:     {ins['backing_file']} (chain depth: {ins['backing_file_depth']})\n")
    return "".join(out)


def _drive_at(ctx: "Context", index: int) -> Drive:
    return _drives(ctx)[index].drive


def info_blockstats_text(ctx: "Context") -> str:
    out = []
    for e in query_blockstats(ctx):
        s = e["stats"]
        out.append(f"{e['device']}: rd_bytes={s['rd_bytes']} wr_bytes={s['wr_bytes']} "
                   f"rd_operations={s['rd_operations']} wr_operations={s['wr_operations']} "
                   f"flush_operations={s['flush_operations']} wr_total_time_ns={s['wr_total_time_ns']} "
                   f"rd_total_time_ns={s['rd_total_time_ns']} flush_total_time_ns={s['flush_total_time_ns']} "
                   f"rd_merged={s['rd_merged']} wr_merged={s['wr_merged']} idle_time_ns={s.get('idle_time_ns', 0)}\n")
    return "".join(out)


def hmp_block_resize(ctx: "Context", args: list[str]) -> str:
    """HMP ``block_resize device size`` (size with QEMU's suffixes: k, M, G, T)."""
    from kvmpy.units import parse_size

    if len(args) != 2:
        return "block_resize: wrong number of arguments (device size)\n"
    try:
        size = parse_size(args[1], default_unit=1 << 20)  # QEMU's 'o' argument: a bare number is MiB
    except ValueError as exc:
        return f"Error: {exc}\n"
    block_resize(ctx, size, device=args[0])
    return ""


def add_block_commands(table: CommandTable) -> None:
    """Put query-block, query-blockstats and block_resize into ``table``."""
    table.command("query-block")(query_block)
    add_removable_commands(table)  # eject, blockdev-change-medium (the IDE CD-ROM)
    table.command("query-blockstats", query_nodes=Arg("bool", optional=True))(query_blockstats)
    table.command("block_resize", device=Arg("str", optional=True), node_name=Arg("str", optional=True),
                  size=Arg("int"))(block_resize)
