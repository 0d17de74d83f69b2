"""qcow2 internal snapshots: create, list, apply (goto) and delete, and the VM state area.

A snapshot is a copy of the active L1 table; every L2 table and data cluster it reaches gets one
more reference, and the active tree loses its COPIED flags so later writes copy-on-write.

The VM state of a ``savevm`` lives where QEMU puts it: in guest-address space beyond the
virtual disk, from ``vm_state_offset`` = the first L1 slot past the disk end, shifted by
(cluster_bits + l2_bits). It is written into the active tree (``write_vmstate``), the
snapshot's L1 copy then holds it, and the active tree lets go of it (``discard_vmstate``), as
QEMU's qcow2_snapshot_create does. ``read_vmstate`` reads it back through the snapshot's own L1
table, checking every entry, so a hostile table gives a BlockError, never a crash.
"""

from __future__ import annotations

import os

import numpy as np

from kvmpy.block import qcow2_format as fmt
from kvmpy.block.errors import BlockError, describe
from kvmpy.block.qcow2_metadata import COMPRESSED, NORMAL, ZERO_ALLOC, Qcow2Metadata
from kvmpy.block.qcow2_overlap import Meta


def tree_clusters(img: Qcow2Metadata, l1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cluster indices, reference counts) for everything an L1 table references.

    Each distinct L2 table is read once and weighted by how often the L1 table names it, so a
    hostile L1 that repeats one table does not multiply the work.
    """
    offs = (l1 & np.uint64(fmt.L1E_OFFSET_MASK)).astype(np.int64)
    offs = offs[offs != 0]
    if offs.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    uniq, times = np.unique(offs, return_counts=True)
    clusters: list[np.ndarray] = [uniq // img.cs]
    weights: list[np.ndarray] = [times]
    for off, n in zip(uniq.tolist(), times.tolist()):
        entries = img.load_l2(off)
        kinds, hosts = img.classify(entries)
        std = (kinds == NORMAL) | (kinds == ZERO_ALLOC)
        parts = [(hosts[std] // np.uint64(img.cs)).astype(np.int64)]
        for c in entries[kinds == COMPRESSED].tolist():
            o, ln = img.compressed_extent(int(c))
            start = o & ~511
            stop = start + ((o & 511) + ln + 511) // 512 * 512
            parts.append(np.arange(start // img.cs, (stop - 1) // img.cs + 1, dtype=np.int64))
        one = np.concatenate(parts)
        clusters.append(one)
        weights.append(np.full(one.size, n, dtype=np.int64))
    c = np.concatenate(clusters)
    w = np.concatenate(weights)
    end = -(-os.fstat(img.fd).st_size // img.cs)
    if c.size and int(c.max()) >= end:
        raise img.mark_corrupt(f"cluster {int(c.max())} is referenced but lies past the end of "
                               "the file")
    u, inv = np.unique(c, return_inverse=True)
    return u, np.bincount(inv, weights=w).astype(np.int64)


def fix_copied_flags(img: Qcow2Metadata) -> None:
    """Set QCOW_OFLAG_COPIED in the active tree exactly where the refcount is 1."""
    copied = np.uint64(fmt.QCOW_OFLAG_COPIED)
    offs = img.l1 & np.uint64(fmt.L1E_OFFSET_MASK)
    for off in np.unique(offs[offs != 0]).tolist():
        if off % img.cs:
            continue
        tbl = img.load_l2(off)
        kinds, hosts = img.classify(tbl)
        std = np.flatnonzero((kinds == NORMAL) | (kinds == ZERO_ALLOC))
        if std.size:
            rcs = img.rc.get_many((hosts[std] // np.uint64(img.cs)).astype(np.int64))
            want = np.where(rcs == 1, tbl[std] | copied, tbl[std] & ~copied)
            diff = std[want != tbl[std]]
            if diff.size:
                tbl[std] = want
                img.store_l2(off, tbl, int(diff[0]), int(diff[-1]) + 1)
    nz = np.flatnonzero(offs)
    if nz.size:
        rcs = img.rc.get_many((offs[nz] // np.uint64(img.cs)).astype(np.int64))
        want = np.where(rcs == 1, img.l1[nz] | copied, img.l1[nz] & ~copied)
        if (want != img.l1[nz]).any():
            img.l1[nz] = want
            img.write_l1()


def _weighted(tree: tuple[np.ndarray, np.ndarray], delta: int) -> tuple[np.ndarray, int,
                                                                        np.ndarray]:
    return tree[0], delta, tree[1]


def _write_table(img: Qcow2Metadata, snaps: list[fmt.SnapshotEntry]) -> None:
    """Write a new snapshot table, switch the header to it, then free the old one."""
    data = fmt.snapshot_table_bytes(snaps, img.h.version)
    if len(data) > fmt.MAX_SNAPSHOT_TABLE_BYTES:
        raise BlockError(f"{img.path}: snapshot table too large")
    new_off = 0
    if snaps:
        n = -(-len(data) // img.cs)
        new_off = img.rc.alloc(n)
        img.pwrite(Meta.DATA, data, new_off)  # a new table
    old_off, old_len = img.h.snapshots_offset, len(
        fmt.snapshot_table_bytes(img.snapshots, img.h.version))
    img.set_snapshot_table(snaps, new_off)
    if old_off and old_len:
        first = old_off // img.cs
        img.rc.update(np.arange(first, first + -(-old_len // img.cs)), -1)


def find(img: Qcow2Metadata, ref: str) -> int:
    for key in ("id", "name"):
        for i, s in enumerate(img.snapshots):
            if getattr(s, key) == ref:
                return i
    raise BlockError(f"Could not find snapshot '{ref}' in {img.path}")


def _oserr(fn):  # type: ignore[no-untyped-def]
    import functools

    @functools.wraps(fn)
    def wrapper(img: Qcow2Metadata, *a, **kw):  # type: ignore[no-untyped-def]
        try:
            return fn(img, *a, **kw)
        except OSError as e:
            raise BlockError(describe(img.path, f"I/O error: {e.strerror or e}")) from e
    return wrapper


@_oserr
def create(img: Qcow2Metadata, name: str, *, vm_state_size: int = 0, vm_clock_nsec: int = 0,
           icount: int | None = 0) -> fmt.SnapshotEntry:
    img.check_writable()
    if len(img.snapshots) >= fmt.MAX_SNAPSHOTS:
        raise BlockError(f"{img.path}: too many snapshots")
    ids = [int(s.id) for s in img.snapshots if s.id.isdigit()]
    sid = str(max(ids, default=0) + 1)
    l1 = img.l1 & ~np.uint64(fmt.QCOW_OFLAG_COPIED)
    l1_off = 0
    if len(l1):
        l1_off = img.rc.alloc(-(-len(l1) * 8 // img.cs))
        img.pwrite(Meta.DATA, l1.astype(">u8").tobytes(), l1_off)  # a new table
        img.note_metadata(Meta.INACTIVE_L1, l1_off, len(l1) * 8)
    img.rc.update(*_weighted(tree_clusters(img, img.l1), 1))  # references first
    fix_copied_flags(img)                            # then make the active tree copy-on-write
    sec, nsec = img.now()
    snap = fmt.SnapshotEntry(l1_off, len(l1), sid, name, sec, nsec, vm_clock_nsec, vm_state_size,
                             disk_size=img.h.size, icount=icount)
    _write_table(img, img.snapshots + [snap])
    img.flush()
    return snap


def _read_l1(img: Qcow2Metadata, snap: fmt.SnapshotEntry) -> np.ndarray:
    return img.read_l1(snap.l1_table_offset, snap.l1_size, f"snapshot '{snap.name}'")


@_oserr
def apply(img: Qcow2Metadata, ref: str) -> None:
    img.check_writable()
    snap = img.snapshots[find(img, ref)]
    sn_l1 = _read_l1(img, snap)
    img.guest_data_changing(untrackable=True, resized=snap.disk_size is not None and
                            snap.disk_size != img.h.size)
    img.rc.update(*_weighted(tree_clusters(img, sn_l1), 1))
    if len(sn_l1) > len(img.l1):
        img.grow_l1(len(sn_l1), exact=True)
    old = img.l1.copy()
    new = np.zeros(len(img.l1), dtype=np.uint64)
    new[:len(sn_l1)] = sn_l1 & ~np.uint64(fmt.QCOW_OFLAG_COPIED)
    img.replace_l1(new)
    img.rc.update(*_weighted(tree_clusters(img, old), -1))
    fix_copied_flags(img)
    if snap.disk_size is not None and snap.disk_size != img.h.size:
        img.set_size(snap.disk_size)
    img.flush()


@_oserr
def delete(img: Qcow2Metadata, ref: str) -> None:
    img.check_writable()
    idx = find(img, ref)
    snap = img.snapshots[idx]
    sn_l1 = _read_l1(img, snap)
    _write_table(img, img.snapshots[:idx] + img.snapshots[idx + 1:])
    img.rc.update(*_weighted(tree_clusters(img, sn_l1), -1))
    if snap.l1_size:
        first = snap.l1_table_offset // img.cs
        img.rc.update(np.arange(first, first + -(-snap.l1_size * 8 // img.cs)), -1)
    img.drop_l2_cache()
    fix_copied_flags(img)
    img.flush()


# ---------------------------------------------------------------------- the VM state area
def vm_state_offset(img: Qcow2Metadata, disk_size: int | None = None) -> int:
    """QEMU's qcow2_vm_state_offset: l1_vm_state_index << (cluster_bits + l2_bits)."""
    span = 1 << (img.cluster_bits + img.l2_bits)
    size = img.h.size if disk_size is None else disk_size
    return -(-size // span) * span


@_oserr
def write_vmstate(img: Qcow2Metadata, pos: int, data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` at ``pos`` of the VM state area of the active tree; ``pos`` is cluster
    aligned, and the last cluster is padded with zeros. Stale entries are released."""
    img.check_writable()
    cs, span = img.cs, img.cs * img.l2_entries
    if pos % cs:
        raise BlockError(f"{img.path}: VM state written at an unaligned position {pos}")
    view = memoryview(data).cast("B")
    base = vm_state_offset(img) + pos
    done = 0
    while done < len(view):
        g = base + done
        n = min(len(view) - done, span - g % span)
        count = -(-n // cs)
        first = (g % span) // cs
        l2off, tbl = img.l2_for_write(g // span)
        old = tbl[first:first + count].copy()
        host = img.rc.alloc(count)  # refcounts first
        chunk = bytes(view[done:done + n]) + bytes(count * cs - n)
        img.pwrite(Meta.DATA, chunk, host)  # then the data
        tbl[first:first + count] = (np.arange(count, dtype=np.uint64) * np.uint64(cs) + np.uint64(host)) \
            | np.uint64(fmt.QCOW_OFLAG_COPIED)
        img.store_l2(l2off, tbl, first, first + count)  # then the L2 entries
        img.release(old)
        done += n


@_oserr
def discard_vmstate(img: Qcow2Metadata) -> None:
    """The active tree lets go of everything beyond the disk end (QEMU discards the VM state after
    the snapshot took it: it would only cost copy-on-write at the next one)."""
    first = vm_state_offset(img) >> (img.cluster_bits + img.l2_bits)
    if first >= len(img.l1) or not img.l1[first:].any():
        return
    gone = img.l1.copy()
    gone[:first] = 0
    new = img.l1.copy()
    new[first:] = 0
    img.replace_l1(new)  # the table first, then the references it held
    img.rc.update(*_weighted(tree_clusters(img, gone), -1))
    img.flush()


@_oserr
def read_vmstate(img: Qcow2Metadata, snap: fmt.SnapshotEntry) -> bytes:
    """The VM state a snapshot holds, read through its own L1 table (BlockError if unreadable)."""
    size = snap.vm_state_size
    end_of_file = os.fstat(img.fd).st_size
    if size > end_of_file:
        raise BlockError(f"{img.path}: snapshot '{snap.name}' claims {size} bytes of VM state, "
                         f"more than the {end_of_file}-byte image holds")
    cs, l2_entries = img.cs, img.l2_entries
    l1 = _read_l1(img, snap)
    base = vm_state_offset(img, snap.disk_size)
    out = bytearray(size)
    c0, c1 = base // cs, -(-(base + size) // cs)
    for c in range(c0, c1):
        lo = max(base, c * cs) - base
        hi = min(base + size, (c + 1) * cs) - base
        l1i = c // l2_entries
        l2off = int(l1[l1i]) & fmt.L1E_OFFSET_MASK if l1i < len(l1) else 0
        if not l2off:
            continue  # unallocated: reads as zeros
        if l2off % cs:
            raise img.mark_corrupt(f"L2 table offset {l2off:#x} unaligned (snapshot '{snap.name}')")
        kinds, hosts = img.classify(img.load_l2(l2off)[c % l2_entries:c % l2_entries + 1])
        kind = int(kinds[0])
        if kind == COMPRESSED:
            raise BlockError(f"{img.path}: snapshot '{snap.name}': compressed VM state clusters "
                             "are not supported")
        if kind != NORMAL:
            continue
        at = int(hosts[0]) + (base + lo) - c * cs
        raw = os.pread(img.fd, hi - lo, at)
        if len(raw) != hi - lo:
            raise BlockError(f"{img.path}: snapshot '{snap.name}': VM state cluster at {at:#x} "
                             "is past the end of the file")
        out[lo:hi] = raw
    return bytes(out)
