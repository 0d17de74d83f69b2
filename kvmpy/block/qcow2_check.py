"""qcow2 consistency check and repair (qemu-img check): recompute every reference, compare with
the stored refcounts and the COPIED flags, and optionally repair leaks and refcount errors."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from kvmpy.block import qcow2_format as fmt
from kvmpy.block.errors import BlockError
from kvmpy.block.qcow2_metadata import Qcow2Metadata
from kvmpy.block.qcow2_snapshot import fix_copied_flags

log = logging.getLogger(__name__)

_MAX_MESSAGES = 1000


@dataclass
class CheckResult:
    corruptions: int = 0
    leaks: int = 0
    check_errors: int = 0
    corruptions_fixed: int = 0
    leaks_fixed: int = 0
    total_clusters: int = 0
    allocated_clusters: int = 0
    fragmented_clusters: int = 0
    compressed_clusters: int = 0
    image_end_offset: int = 0
    messages: list[str] = field(default_factory=list)

    def say(self, msg: str) -> None:
        if len(self.messages) < _MAX_MESSAGES:
            self.messages.append(msg)


class _Walker:
    """Accumulates the reference count every cluster should have."""

    def __init__(self, img: Qcow2Metadata, res: CheckResult) -> None:
        self.img = img
        self.res = res
        self.cs = img.cs
        self.file_size = os.fstat(img.fd).st_size
        self.nb = -(-self.file_size // self.cs)
        self.limit = self.nb + 1024  # references further out are reported, not counted
        self.refs = np.zeros(self.nb, dtype=np.int64)
        self.next_contig = 0

    def inc(self, offset: int, nbytes: int, what: str) -> bool:
        if nbytes <= 0:
            return True
        first, last = offset // self.cs, (offset + nbytes - 1) // self.cs
        if last >= self.limit:
            self.res.corruptions += 1
            self.res.say(f"ERROR {what} at offset {offset:#x} is beyond the end of the image")
            return False
        if last >= len(self.refs):
            self.refs = np.concatenate([self.refs, np.zeros(last + 1 - len(self.refs), np.int64)])
        self.refs[first:last + 1] += 1
        return True

    def inc_many(self, clusters: np.ndarray, what: str) -> None:
        """One reference to each listed cluster (repeats count repeatedly)."""
        if clusters.size == 0:
            return
        far = clusters >= self.limit
        if far.any():
            self.res.corruptions += int(far.sum())
            self.res.say(f"ERROR {what} at offset {int(clusters[far][0]) * self.cs:#x} is beyond "
                         "the end of the image")
            clusters = clusters[~far]
            if clusters.size == 0:
                return
        top = int(clusters.max())
        if top >= len(self.refs):
            self.refs = np.concatenate([self.refs, np.zeros(top + 1 - len(self.refs), np.int64)])
        np.add.at(self.refs, clusters, 1)

    def l1_tree(self, l1: np.ndarray, active: bool) -> None:
        res, cs = self.res, self.cs
        offs = (l1 & np.uint64(fmt.L1E_OFFSET_MASK)).astype(np.int64)
        cache: dict[int, tuple | None] = {}
        for i in np.flatnonzero(offs).tolist():
            off = int(offs[i])
            if off % cs:
                res.corruptions += 1
                res.say(f"ERROR l2_offset={off:x}: Table is not cluster aligned; L1 entry corrupted")
                continue
            if not self.inc(off, cs, "L2 table"):
                continue
            if off not in cache:
                raw = os.pread(self.img.fd, cs, off)
                cache[off] = self._scan_l2(np.frombuffer(raw, dtype=">u8").astype(np.uint64)) \
                    if len(raw) == cs else None
            scan = cache[off]
            if scan is None:
                res.corruptions += 1
                res.say(f"ERROR l2_offset={off:x}: L2 table is outside the image")
                continue
            data, comp_spans, std_hosts, ncomp, nbad, msgs = scan
            res.corruptions += nbad
            for m in msgs:
                res.say(m)
            self.inc_many(data, "data cluster")
            self.inc_many(comp_spans, "compressed cluster")
            if active:
                res.allocated_clusters += std_hosts.size + ncomp
                res.compressed_clusters += ncomp
                res.fragmented_clusters += ncomp
                if std_hosts.size:  # like qemu, contiguity is judged within one L2 table
                    res.fragmented_clusters += int((std_hosts[1:] != std_hosts[:-1] + cs).sum())

    def _scan_l2(self, entries: np.ndarray) -> tuple:
        """What one L2 table references: (data clusters, compressed-span clusters, host offsets of
        standard clusters in order, compressed count, error count, messages)."""
        img, cs = self.img, self.cs
        msgs: list[str] = []
        comp = (entries & np.uint64(fmt.QCOW_OFLAG_COMPRESSED)) != 0
        offs = (entries & np.uint64(fmt.L2E_OFFSET_MASK)).astype(np.int64)
        std = ~comp & (offs != 0)
        bad = std & (((offs % cs) != 0) | ((entries & np.uint64(0x3F000000000001FE)) != 0))
        nbad = int(bad.sum())
        if nbad:
            msgs.append(f"ERROR offset={int(offs[bad][0]):x}: Cluster is not properly aligned; "
                        "L2 entry corrupted")
        good = std & ~bad
        hosts = offs[good]
        comp_copied = comp & ((entries & np.uint64(fmt.QCOW_OFLAG_COPIED)) != 0)
        if comp_copied.any():
            nbad += int(comp_copied.sum())
            msgs.append("ERROR: copied flag must never be set for compressed clusters")
        spans: list[np.ndarray] = []
        for e in entries[comp].tolist():
            o, n = img.compressed_extent(int(e))
            start = o & ~511
            stop = start + ((o & 511) + n + 511) // 512 * 512
            spans.append(np.arange(start // cs, (stop - 1) // cs + 1, dtype=np.int64))
        comp_spans = np.concatenate(spans) if spans else np.zeros(0, dtype=np.int64)
        return hosts // cs, comp_spans, hosts, int(comp.sum()), nbad, msgs


def _compute(img: Qcow2Metadata, res: CheckResult) -> tuple[np.ndarray, np.ndarray]:
    """(computed refs, stored refcounts) over the same cluster range."""
    h, cs = img.h, img.cs
    w = _Walker(img, res)
    w.inc(0, cs, "header")
    w.inc(h.l1_table_offset, h.l1_size * 8, "L1 table")
    w.l1_tree(img.l1, active=True)
    for s in img.snapshots:
        w.inc(s.l1_table_offset, s.l1_size * 8, f"snapshot {s.id} L1 table")
        raw = os.pread(img.fd, s.l1_size * 8, s.l1_table_offset)
        if len(raw) < s.l1_size * 8:
            res.corruptions += 1
            res.say(f"ERROR snapshot {s.id} L1 table is outside the image")
            continue
        w.l1_tree(np.frombuffer(raw, dtype=">u8").astype(np.uint64), active=False)
    if h.nb_snapshots:
        w.inc(h.snapshots_offset, len(fmt.snapshot_table_bytes(img.snapshots, h.version)),
              "snapshot table")
    for off, nbytes, what in img.bitmap_clusters():  # persistent bitmaps own clusters too
        if off + nbytes > w.file_size:
            res.corruptions += 1
            res.say(f"ERROR {what} at offset {off:#x} is outside the image")
            continue
        w.inc(off, nbytes, what)
    w.inc(h.refcount_table_offset, h.refcount_table_clusters * cs, "refcount table")
    rc = img.rc
    for bi, raw in enumerate(rc.table):
        raw = int(raw)
        if not raw:
            continue
        off = raw & fmt.REFT_OFFSET_MASK
        if raw & ~fmt.REFT_OFFSET_MASK or off % cs or off == 0:
            res.corruptions += 1
            res.say(f"ERROR refcount block {bi} is not cluster aligned; refcount table entry "
                    "corrupted")
            continue
        if off + cs > w.file_size:
            res.corruptions += 1
            res.say(f"ERROR refcount block {bi} is outside image")
            continue
        w.inc(off, cs, "refcount block")
    n = len(w.refs)
    stored = np.zeros(n, dtype=np.int64)
    for bi in range(-(-n // rc.epb)):
        try:
            blk = rc.block(bi)
        except Exception:  # a corrupt block entry was already reported above
            blk = None
        if blk is None:
            continue
        lo = bi * rc.epb
        hi = min(n, lo + rc.epb)
        stored[lo:hi] = np.minimum(blk[:hi - lo], np.uint64(2**62)).astype(np.int64)
    return w.refs, stored


def _check_copied(img: Qcow2Metadata, res: CheckResult) -> None:
    """COPIED must be set in the active tree exactly where the refcount is 1."""
    cs = img.cs
    copied = np.uint64(fmt.QCOW_OFLAG_COPIED)
    offs = (img.l1 & np.uint64(fmt.L1E_OFFSET_MASK)).astype(np.int64)
    idx = np.flatnonzero((offs != 0) & (offs % cs == 0))
    if idx.size == 0:
        return
    rcs = img.rc.get_many(offs[idx] // cs)
    flags = (img.l1[idx] & copied) != 0
    for i in np.flatnonzero((rcs == 1) != flags).tolist():
        res.corruptions += 1
        res.say(f"ERROR OFLAG_COPIED L2 cluster: l1_index={int(idx[i])} "
                f"l1_entry={int(img.l1[idx[i]]):x} refcount={int(rcs[i])}")
    uniq, times = np.unique(offs[idx], return_counts=True)
    for off, n in zip(uniq.tolist(), times.tolist()):
        raw = os.pread(img.fd, cs, off)
        if len(raw) < cs:
            continue
        tbl = np.frombuffer(raw, dtype=">u8").astype(np.uint64)
        doff = (tbl & np.uint64(fmt.L2E_OFFSET_MASK)).astype(np.int64)
        std = ((tbl & np.uint64(fmt.QCOW_OFLAG_COMPRESSED)) == 0) & (doff != 0) & (doff % cs == 0)
        j = np.flatnonzero(std)
        if not j.size:
            continue
        r = img.rc.get_many(doff[j] // cs)
        wrong = np.flatnonzero((r == 1) != ((tbl[j] & copied) != 0))
        if wrong.size:
            res.corruptions += int(wrong.size) * n
            for k in wrong[:10].tolist():
                res.say(f"ERROR OFLAG_COPIED data cluster: l2_entry={int(tbl[j[k]]):x} "
                        f"refcount={int(r[k])}")


def _one_pass(img: Qcow2Metadata, repair: str | None) -> CheckResult:
    res = CheckResult()
    img.drop_l2_cache()
    refs, stored = _compute(img, res)
    res.total_clusters = -(-img.h.size // img.cs)
    highest = -1
    nz = np.flatnonzero((refs > 0) | (stored > 0))
    if nz.size:
        highest = int(nz[-1])
    bad = np.flatnonzero(refs != stored)
    referenced = set(np.flatnonzero(refs).tolist()) if bad.size else set()
    for c in bad:
        c = int(c)
        s, r = int(stored[c]), int(refs[c])
        fixable = (repair in ("leaks", "all") and s > r) or (repair == "all" and s < r)
        res.say(f"{'Repairing' if fixable else 'ERROR' if s < r else 'Leaked'} cluster {c} "
                f"refcount={s} reference={r}")
        if fixable:
            try:
                img.rc.set_value(c, min(r, img.rc.max_refcount),
                                 avoid=referenced)
            except Exception as e:  # noqa: BLE001 - a failed repair is reported, not raised
                res.check_errors += 1
                res.say(f"ERROR could not repair cluster {c}: {e}")
                continue
            if s > r:
                res.leaks_fixed += 1
            else:
                res.corruptions_fixed += 1
        elif s < r:
            res.corruptions += 1
        else:
            res.leaks += 1
    if repair == "all":
        before = CheckResult()
        _check_copied(img, before)
        if before.corruptions:
            fix_copied_flags(img)
            res.corruptions_fixed += before.corruptions
    _check_copied(img, res)
    res.image_end_offset = (highest + 1) * img.cs
    return res


def check_image(img: Qcow2Metadata, repair: str | None = None) -> CheckResult:
    """Check (and with repair='leaks' or 'all', repair) an open qcow2 image's metadata."""
    if repair and img.readonly:
        raise BlockError(f"{img.path}: cannot repair an image opened read-only")
    try:
        res = _one_pass(img, repair)
        if res.leaks_fixed or res.corruptions_fixed:
            img.flush()
            fixed = (res.leaks_fixed, res.corruptions_fixed, res.messages)
            res = _one_pass(img, None)
            res.leaks_fixed, res.corruptions_fixed = fixed[0], fixed[1]
            res.messages = fixed[2] + res.messages
        if repair == "all" and not res.corruptions and not img.readonly:
            if img.h.incompatible_features & fmt.INCOMPAT_CORRUPT:
                img.set_incompat(fmt.INCOMPAT_CORRUPT, False)
            if img.h.incompatible_features & fmt.INCOMPAT_DIRTY:
                img.set_incompat(fmt.INCOMPAT_DIRTY, False)
    except (OSError, MemoryError) as e:
        res = CheckResult(check_errors=1)
        res.say(f"ERROR: check failed: {e}")
    return res
