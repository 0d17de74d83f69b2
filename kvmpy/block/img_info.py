"""`kvmpy-img info`: the facts qemu-img info reports, under the same JSON field names, and its
human-readable rendering."""

from __future__ import annotations

import os
import time
from typing import Any

from kvmpy.block.backend import BlockBackend
from kvmpy.block.image import resolve_backing
from kvmpy.block.sizes import human_size


def _combined_backing(img: BlockBackend, name: str) -> str:
    if os.path.isabs(name):
        return name
    parent = os.path.dirname(str(img.path))
    return os.path.join(parent, name) if parent else name


def snapshot_dicts(img: BlockBackend) -> list[dict[str, Any]]:
    out = []
    for s in getattr(img, "snapshots", []):
        d: dict[str, Any] = {}
        if s.icount is not None and s.icount != 2**64 - 1:
            d["icount"] = s.icount
        d.update({
            "vm-clock-nsec": s.vm_clock_nsec % 1_000_000_000,
            "name": s.name,
            "date-sec": s.date_sec,
            "date-nsec": s.date_nsec,
            "vm-clock-sec": s.vm_clock_nsec // 1_000_000_000,
            "id": s.id,
            "vm-state-size": s.vm_state_size,
        })
        out.append(d)
    return out


def bitmap_dict(b: Any) -> dict[str, Any]:
    """A persistent bitmap as qemu-img info reports it."""
    from kvmpy.block.qcow2_bitmaps import FLAG_AUTO, FLAG_IN_USE
    flags = [name for bit, name in ((FLAG_IN_USE, "in-use"), (FLAG_AUTO, "auto"))
             if b.flags & bit]
    return {"flags": flags, "name": b.name, "granularity": 1 << b.granularity_bits}


def image_info(img: BlockBackend) -> dict[str, Any]:
    """One image's info dict, field for field as qemu-img info --output=json names them."""
    info: dict[str, Any] = {}
    h = getattr(img, "h", None)
    if h is not None and h.backing_file:
        if h.backing_format:
            info["backing-filename-format"] = h.backing_format
    snaps = snapshot_dicts(img)
    if snaps:
        info["snapshots"] = snaps
    info["virtual-size"] = img.size()
    info["filename"] = str(img.path)
    if img.cluster_size():
        info["cluster-size"] = img.cluster_size()
    info["format"] = img.format_name
    info["actual-size"] = img.actual_size()
    if h is not None:
        data: dict[str, Any] = {"compat": "1.1" if h.version >= 3 else "0.10"}
        from kvmpy.block.qcow2_format import (COMPAT_LAZY_REFCOUNTS, COMPRESSION_NAMES,
                                              INCOMPAT_CORRUPT)
        data["compression-type"] = COMPRESSION_NAMES[h.compression_type]
        if h.version >= 3:
            data["lazy-refcounts"] = bool(h.compatible_features & COMPAT_LAZY_REFCOUNTS)
        meta = getattr(img, "meta", None)
        if meta is not None and meta.bitmaps:
            data["bitmaps"] = [bitmap_dict(b) for b in meta.bitmaps]
        data["refcount-bits"] = h.refcount_bits
        if h.version >= 3:
            data["corrupt"] = bool(h.incompatible_features & INCOMPAT_CORRUPT)
            data["extended-l2"] = False
        info["format-specific"] = {"type": "qcow2", "data": data}
        if h.backing_file:
            info["full-backing-filename"] = _combined_backing(img, h.backing_file)
            info["backing-filename"] = h.backing_file
        from kvmpy.block.qcow2_format import INCOMPAT_DIRTY
        info["dirty-flag"] = bool(h.incompatible_features & INCOMPAT_DIRTY)
    else:
        info["dirty-flag"] = False
    return info


def snapshot_table_text(snaps: list[dict[str, Any]]) -> str:
    lines = ["%-9s %-17s %7s%20s%13s%11s" % ("ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT")]
    for s in snaps:
        date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["date-sec"]))
        secs = s["vm-clock-sec"]
        clock = "%02d:%02d:%02d.%03d" % (secs // 3600, secs // 60 % 60, secs % 60,
                                         s["vm-clock-nsec"] // 1_000_000)
        icount = str(s["icount"]) if "icount" in s else ""
        lines.append("%-9s %-17s %7s%20s%13s%11s" % (s["id"], s["name"],
                                                     human_size(s["vm-state-size"]), date, clock,
                                                     icount))
    return "\n".join(lines) + "\n"


def _human_value(key: str, v: Any, depth: int) -> str:
    """qemu-img's nested rendering of format-specific values (lists as [i]: entries)."""
    pad = "    " * depth
    if isinstance(v, list):
        out = f"{pad}{key}:\n"
        for i, item in enumerate(v):
            out += _human_value(f"[{i}]", item, depth + 1)
        return out
    if isinstance(v, dict):
        out = f"{pad}{key}:\n"
        for k, item in v.items():
            out += _human_value(k, item, depth + 1)
        return out
    val = str(v).lower() if isinstance(v, bool) else v
    return f"{pad}{key}: {val}\n"


def human_info(info: dict[str, Any]) -> str:
    out = [f"image: {info['filename']}", f"file format: {info['format']}",
           f"virtual size: {human_size(info['virtual-size'])} ({info['virtual-size']} bytes)",
           f"disk size: {human_size(info['actual-size'])}"]
    if "cluster-size" in info:
        out.append(f"cluster_size: {info['cluster-size']}")
    if "backing-filename" in info:
        line = f"backing file: {info['backing-filename']}"
        if info["full-backing-filename"] != info["backing-filename"]:
            line += f" (actual path: {info['full-backing-filename']})"
        out.append(line)
        if "backing-filename-format" in info:
            out.append(f"backing file format: {info['backing-filename-format']}")
    if info.get("dirty-flag"):
        out.append("cleanly shut down: no")
    text = "\n".join(out) + "\n"
    if info.get("snapshots"):
        text += "Snapshot list:\n" + snapshot_table_text(info["snapshots"])
    fs = info.get("format-specific")
    if fs:
        text += "Format specific information:\n"
        for k, v in fs["data"].items():
            text += _human_value(k.replace("-", " "), v, 1)
    return text


__all__ = ["image_info", "human_info", "snapshot_table_text", "resolve_backing"]
