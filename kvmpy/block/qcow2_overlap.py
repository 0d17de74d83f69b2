"""Where qcow2 metadata lives, by kind, so that no write lands on it by mistake.

This is QEMU's metadata overlap check (qcow2_check_metadata_overlap). Every write into an
image names the kind of structure it means to write (``Meta.DATA`` for guest data); a write
whose clusters hold metadata of any other kind is refused, and the image is marked corrupt.

kvmpy checks QEMU's default set, "cached": the header, the active L1 table, active L2 tables,
the refcount table, refcount blocks, the snapshot table, inactive (snapshot) L1 tables and the
bitmap directory. Inactive L2 tables are not checked (QEMU checks them only with
overlap-check=all, since finding them means reading every snapshot's L1 table).

The map is kept per cluster: every metadata structure is cluster-allocated, so a cluster
holding any of it is off limits to writes of another kind.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntFlag

import numpy as np


class Meta(IntFlag):
    """Kinds of metadata, with QEMU's bit values (QCOW2_OL_*)."""

    DATA = 0
    MAIN_HEADER = 1 << 0
    ACTIVE_L1 = 1 << 1
    ACTIVE_L2 = 1 << 2
    REFCOUNT_TABLE = 1 << 3
    REFCOUNT_BLOCK = 1 << 4
    SNAPSHOT_TABLE = 1 << 5
    INACTIVE_L1 = 1 << 6
    INACTIVE_L2 = 1 << 7
    BITMAP_DIRECTORY = 1 << 8


# QEMU's names for the kinds, as its "overlaps with ..." message spells them.
NAMES = {
    Meta.MAIN_HEADER: "qcow2_header",
    Meta.ACTIVE_L1: "active L1 table",
    Meta.ACTIVE_L2: "active L2 table",
    Meta.REFCOUNT_TABLE: "refcount table",
    Meta.REFCOUNT_BLOCK: "refcount block",
    Meta.SNAPSHOT_TABLE: "snapshot table",
    Meta.INACTIVE_L1: "inactive L1 table",
    Meta.INACTIVE_L2: "inactive L2 table",
    Meta.BITMAP_DIRECTORY: "bitmap directory",
}

CACHED = Meta((1 << 9) - 1) & ~Meta.INACTIVE_L2
_CACHED = int(CACHED)  # plain ints on the write path: IntFlag arithmetic costs microseconds


def describe(kinds: int) -> str:
    """QEMU's wording for the first kind in ``kinds`` (lowest bit first, as QEMU reports)."""
    for k, name in NAMES.items():
        if kinds & k:
            return f"Preventing invalid write on metadata (overlaps with {name})"
    return "Preventing invalid write on metadata"


class OverlapMap:
    """Cluster index -> the kinds of metadata that cluster holds."""

    def __init__(self, cluster_size: int) -> None:
        self.cs = cluster_size
        self.kinds: dict[int, int] = {}

    def add(self, kind: Meta, offset: int, nbytes: int) -> None:
        """Mark the clusters under [offset, offset + nbytes) (at least one) as ``kind``."""
        kind = int(kind)
        first = offset // self.cs
        last = (offset + max(nbytes, 1) - 1) // self.cs
        if last - first > (64 << 20) // self.cs:  # hostile sizes: no table is this large
            last = first + (64 << 20) // self.cs
        for c in range(first, last + 1):
            self.kinds[c] = self.kinds.get(c, 0) | kind

    def add_clusters(self, kind: Meta, offsets: Iterable[int]) -> None:
        """Mark the cluster holding each (non-zero) byte offset as ``kind``."""
        kind = int(kind)
        for off in offsets:
            if off:
                c = off // self.cs
                self.kinds[c] = self.kinds.get(c, 0) | kind

    def hit(self, offset: int, nbytes: int, ignore: int) -> int:
        """The kinds other than ``ignore`` found under [offset, offset + nbytes), or 0."""
        if nbytes <= 0:
            return 0
        first, last = offset // self.cs, (offset + nbytes - 1) // self.cs
        kinds = self.kinds
        if last - first < 64:
            found = 0
            for c in range(first, last + 1):
                found |= kinds.get(c, 0)
            return found & ~int(ignore) & _CACHED
        return self.hit_clusters(np.arange(first, last + 1, dtype=np.uint64), ignore)

    def hit_clusters(self, clusters: np.ndarray | list[int], ignore: int) -> int:
        """Like hit(), for a list of whole clusters (data writes: one check per request)."""
        lst = clusters.tolist() if isinstance(clusters, np.ndarray) else clusters
        kinds = self.kinds
        if kinds.keys().isdisjoint(lst):
            return 0
        found = 0
        for c in lst:
            found |= kinds.get(c, 0)
        return found & ~int(ignore) & _CACHED
