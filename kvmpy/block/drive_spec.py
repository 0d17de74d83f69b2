"""Opening the drive a device names (``drive=``) from the machine config: a -drive or a -blockdev node graph.

``-drive file=,format=,cache=,readonly=,discard=,snapshot=,file.locking=`` and
``-blockdev driver=qcow2|raw,node-name=,file=<node or {driver: file, filename: ..}>``
(``read-only``, ``cache.direct``, ``cache.no-flush``, ``discard``,
``locking`` on the file node) both end in ``open_drive``. QEMU's option
meanings are kept: ``cache=`` sets the three cache switches and the
``cache.*`` keys override them; ``file.locking=auto`` (the default) means on;
``snapshot=on`` puts the writes in a temporary qcow2 overlay that is deleted
when the drive closes, leaving the image untouched.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvmpy.block.cache import CacheMode
from kvmpy.block.drive import Drive, open_drive
from kvmpy.block.errors import BlockError

if TYPE_CHECKING:
    from kvmpy.config_devices import BlockdevSpec, DriveSpec

_TRUE = ("on", "yes", "true", True)
_FALSE = ("off", "no", "false", False)


def _flag(value: Any, what: str, default: bool) -> bool:
    if value is None:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BlockError(f"Parameter '{what}' expects 'on' or 'off'")


def _locking(value: Any) -> bool:
    if value in (None, "auto"):
        return True
    return _flag(value, "locking", True)


def cache_mode(name: str, direct: Any = None, no_flush: Any = None, writeback: Any = None) -> CacheMode:
    """A cache= mode with QEMU's cache.direct / cache.no-flush / write-cache overrides applied."""
    base = CacheMode.parse(name)
    return CacheMode(name, _flag(writeback, "write-cache", base.writeback), _flag(direct, "cache.direct", base.direct),
                     _flag(no_flush, "cache.no-flush", base.no_flush))


def drive_from_spec(spec: "DriveSpec", writeback: Any = None, *, inactive: bool = False) -> Drive:
    """Open a -drive for a device (``writeback``: the device's write-cache=on|off, None for auto;
    ``inactive`` on an -incoming destination, see kvmpy.block.drive)."""
    if spec.file is None:
        raise BlockError(f"{spec.source or '-drive'}: Device needs media, but drive is empty")
    cache = cache_mode(spec.cache, spec.get("cache.direct"), spec.get("cache.no-flush"), writeback)
    path = Path(spec.file)
    fmt = spec.format
    overlay = None
    if spec.snapshot:
        overlay = _temporary_overlay(path, fmt)
        path, fmt = overlay, "qcow2"
    try:
        drive = open_drive(path, fmt, id=spec.id or "", readonly=spec.readonly, cache=cache,
                           discard=spec.get("discard", "ignore"), locking=_locking(spec.get("file.locking")),
                           inactive=inactive)
    except BlockError:
        if overlay is not None:
            overlay.unlink(missing_ok=True)
        raise
    if overlay is not None:
        drive.on_close.append(lambda: overlay.unlink(missing_ok=True))
    return drive


def _temporary_overlay(image: Path, fmt: str | None) -> Path:
    """snapshot=on: a qcow2 overlay in $TMPDIR over ``image`` (absolute), as QEMU makes one."""
    from kvmpy.block.image import open_image, probe_format
    from kvmpy.block.qcow2_create import Qcow2Options, create_qcow2

    fmt = fmt or probe_format(image)
    with open_image(image, fmt) as img:
        size = img.size()
    fd, name = tempfile.mkstemp(prefix="vl.", suffix=".qcow2")
    os.close(fd)
    size = -(-size // 512) * 512
    create_qcow2(Path(name), Qcow2Options(size=size, backing_file=str(image.resolve()), backing_format=fmt))
    return Path(name)


def _node(blockdevs: dict[str, "BlockdevSpec"], ref: Any, where: str) -> dict[str, Any]:
    if isinstance(ref, dict):
        return ref
    if isinstance(ref, str) and ref in blockdevs:
        return blockdevs[ref].tree()
    raise BlockError(f"{where}: Cannot find device='' nor node-name='{ref}'")


def drive_from_blockdev(blockdevs: dict[str, "BlockdevSpec"], name: str, writeback: Any = None, *,
                        inactive: bool = False) -> Drive:
    """Open the -blockdev node ``name`` (a raw/qcow2 format node over a file node, or a file node)."""
    spec = blockdevs[name]
    where = spec.source or f"-blockdev node-name={name}"
    top = spec.tree()
    if top["driver"] == "file":
        fmt, file_node = "raw", top
    else:
        fmt = top["driver"]
        file_node = _node(blockdevs, top.get("file"), where)
        if file_node.get("driver") != "file":
            raise BlockError(f"{where}: kvmpy's {fmt} nodes sit on a 'file' node")
    filename = file_node.get("filename")
    if not isinstance(filename, str) or not filename:
        raise BlockError(f"{where}: Parameter 'filename' is missing")
    cache = top.get("cache") if isinstance(top.get("cache"), dict) else {}
    fcache = file_node.get("cache") if isinstance(file_node.get("cache"), dict) else {}
    mode = cache_mode("writeback", cache.get("direct", fcache.get("direct")),
                      cache.get("no-flush", fcache.get("no-flush")), writeback)
    readonly = _flag(top.get("read-only"), "read-only", False)
    discard = top.get("discard", file_node.get("discard", "ignore"))
    drive = open_drive(Path(filename), fmt, id="", readonly=readonly, cache=mode, discard=discard,
                       locking=_locking(file_node.get("locking")), node_name=name, inactive=inactive)
    drive.file_node_name = file_node.get("node-name", "") if isinstance(file_node.get("node-name"), str) else ""
    if not isinstance(top.get("file"), dict) and isinstance(top.get("file"), str):
        drive.file_node_name = top["file"]
    return drive
