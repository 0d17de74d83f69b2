"""Metadata overlap checks (issue 11): a write that would land on metadata is refused and the
image marked corrupt, exactly where real qemu-io refuses the same write on the same image.

Every image is made by qemu-img/qemu-io and then edited surgically (one header field or one
table entry), so each case points a write at one kind of metadata.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from kvmpy.block.qcow2_overlap import Meta, OverlapMap, describe
from tests.block.conftest import (QEMU_IO, kvmpy_img, needs_qemu_img, needs_qemu_io, qemu_check,
                                  qemu_img)

COPIED = 1 << 63
CS = 65536


def _u64(b: bytes | bytearray, off: int) -> int:
    return struct.unpack_from(">Q", b, off)[0]


def _layout(b: bytes | bytearray) -> dict[str, int]:
    """Where qemu put things: header fields plus the first L2 table and its first entry."""
    l1 = _u64(b, 40)
    l2 = _u64(b, l1) & 0x00FFFFFFFFFFFE00
    out = {"l1": l1, "reftable": _u64(b, 48), "refblock": _u64(b, _u64(b, 48)), "l2": l2,
           "data": _u64(b, l2) & 0x00FFFFFFFFFFFE00, "snaptable": _u64(b, 64)}
    if struct.unpack_from(">I", b, 60)[0]:
        out["snap_l1"] = _u64(b, out["snaptable"])
    pos = struct.unpack_from(">I", b, 100)[0]  # header length: extensions follow
    while pos + 8 <= CS:
        t, n = struct.unpack_from(">II", b, pos)
        if t == 0:
            break
        if t == 0x23852875:
            out["bitmap_dir"] = _u64(b, pos + 8 + 16)
        pos += 8 + (n + 7) // 8 * 8
    return out


def _base(tmp: Path, snapshot: bool = False, bitmap: bool = False) -> bytes:
    p = tmp / "base.qcow2"
    qemu_img("create", "-f", "qcow2", p, "1M")
    r = subprocess.run([str(QEMU_IO), "-c", "write -P 1 0 512", str(p)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    if snapshot:
        qemu_img("snapshot", "-c", "s1", p)
    if bitmap:
        qemu_img("bitmap", "--add", p, "b0")
    return p.read_bytes()


def _l1_at(key: str) -> Callable[[bytearray, dict[str, int]], None]:
    def edit(b: bytearray, lay: dict[str, int]) -> None:
        struct.pack_into(">Q", b, lay["l1"], lay[key] | COPIED)
    return edit


def _l2_at(key: str) -> Callable[[bytearray, dict[str, int]], None]:
    def edit(b: bytearray, lay: dict[str, int]) -> None:
        struct.pack_into(">Q", b, lay["l2"], lay[key] | COPIED)
    return edit


def _reftable_clusters(n: int) -> Callable[[bytearray, dict[str, int]], None]:
    def edit(b: bytearray, lay: dict[str, int]) -> None:
        struct.pack_into(">I", b, 56, n)
    return edit


# (name, image extras, edit, write command)
CASES = [
    ("l1-entry-at-refcount-table", {}, _l1_at("reftable"), "write -P 2 0 512"),
    ("l1-entry-at-active-l1", {}, _l1_at("l1"), "write -P 2 0 512"),
    ("refcount-table-clusters-too-large", {}, _reftable_clusters(5), "write -P 2 0 512"),
    ("l2-entry-at-refcount-block", {}, _l2_at("refblock"), "write -P 2 0 512"),
    ("l2-entry-at-refcount-table", {}, _l2_at("reftable"), "write -P 2 0 512"),
    ("l2-entry-at-active-l1", {}, _l2_at("l1"), "write -P 2 0 64k"),
    ("l2-entry-at-own-l2", {}, _l2_at("l2"), "write -P 2 0 64k"),
    ("l2-entry-at-snapshot-table", {"snapshot": True}, _l2_at("snaptable"), "write -P 2 0 512"),
    ("l2-entry-at-snapshot-l1", {"snapshot": True}, _l2_at("snap_l1"), "write -P 2 0 512"),
    ("l2-entry-at-bitmap-directory", {"bitmap": True}, _l2_at("bitmap_dir"), "write -P 2 0 512"),
]

_QEMU_MSG = re.compile(r"Preventing invalid write on metadata \(overlaps with ([^)]+)\)")


def _info_corrupt(p: Path) -> bool:
    info = json.loads(qemu_img("info", "--output=json", "-U", p).stdout)
    return info["format-specific"]["data"]["corrupt"]


@needs_qemu_img
@needs_qemu_io
@pytest.mark.parametrize("name,extras,edit,cmd", CASES, ids=[c[0] for c in CASES])
def test_write_onto_metadata_is_refused_like_qemu_io(tmp_path: Path, name: str, extras: dict,
                                                     edit, cmd: str) -> None:  # type: ignore[no-untyped-def]
    raw = bytearray(_base(tmp_path, **extras))
    edit(raw, _layout(raw))
    ours, theirs = tmp_path / "kvmpy.qcow2", tmp_path / "qemu.qcow2"
    ours.write_bytes(raw)
    theirs.write_bytes(raw)
    before = qemu_check(ours)
    q = subprocess.run([str(QEMU_IO), "-c", cmd, str(theirs)], capture_output=True, text=True)
    m = _QEMU_MSG.search(q.stderr)
    assert m, f"qemu-io did not refuse: {q.stdout} {q.stderr}"
    r = kvmpy_img("io", "-c", cmd, ours)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert f"Preventing invalid write on metadata (overlaps with {m.group(1)})" in r.stdout, \
        (r.stdout, r.stderr)
    assert _info_corrupt(ours) and _info_corrupt(theirs)
    after, qemu_after = qemu_check(ours), qemu_check(theirs)
    # The refused write damaged nothing: no new corruption, and no more leaks than qemu-io's
    # own refusal leaves behind.
    assert after.get("corruptions", 0) <= before.get("corruptions", 0), (before, after)
    assert after.get("corruptions", 0) <= qemu_after.get("corruptions", 0), (after, qemu_after)
    assert after.get("leaks", 0) <= qemu_after.get("leaks", 0), (after, qemu_after)
    # A second write is refused too: the image is read-only for the rest of the session, and a
    # new read-write open refuses the corrupt image.
    r2 = kvmpy_img("io", "-c", "write -P 3 0 512", ours)
    assert r2.returncode != 0 and "corrupt" in (r2.stdout + r2.stderr)
    assert qemu_check(ours) == after


@needs_qemu_img
def test_clean_image_writes_are_not_refused(tmp_path: Path) -> None:
    """The checks must not fire on a healthy image, through snapshots and bitmaps."""
    p = tmp_path / "ok.qcow2"
    p.write_bytes(_base(tmp_path, snapshot=True, bitmap=True))
    r = kvmpy_img("io", "-c", "write -P 5 0 1M", "-c", "discard 64k 128k",
                  "-c", "write -P 6 100k 300k", p)
    assert r.returncode == 0, r.stdout + r.stderr
    res = qemu_check(p)
    assert res.get("corruptions", 0) == 0 and res.get("leaks", 0) == 0, res
    assert not _info_corrupt(p)


def test_overlap_map_reports_qemu_names() -> None:
    m = OverlapMap(CS)
    m.add(Meta.MAIN_HEADER, 0, CS)
    m.add(Meta.REFCOUNT_TABLE, CS, 3 * CS)
    m.add_clusters(Meta.ACTIVE_L2, [5 * CS, 0])
    m.add(Meta.INACTIVE_L2, 9 * CS, CS)
    assert m.hit(0, 512, Meta.MAIN_HEADER) == 0
    assert m.hit(0, 512, Meta.DATA) == Meta.MAIN_HEADER
    assert m.hit(4 * CS - 1, 2, Meta.DATA) == Meta.REFCOUNT_TABLE
    assert m.hit(4 * CS, CS, Meta.DATA) == 0
    assert m.hit_clusters([7, 5], Meta.DATA) == Meta.ACTIVE_L2
    assert m.hit_clusters([7, 5], Meta.ACTIVE_L2) == 0
    assert m.hit(9 * CS, CS, Meta.DATA) == 0  # inactive L2 is outside the "cached" set
    assert describe(Meta.ACTIVE_L2 | Meta.REFCOUNT_TABLE) == \
        "Preventing invalid write on metadata (overlaps with active L2 table)"
    assert describe(Meta.MAIN_HEADER).endswith("(overlaps with qcow2_header)")
