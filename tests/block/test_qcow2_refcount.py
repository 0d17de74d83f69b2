"""qcow2_refcount on its own: the refcount block codec at every width, reading the refcounts
qemu-img wrote, allocation, table growth and the error paths. qemu-img check judges every
image the allocator changed."""

from __future__ import annotations

import os
import random
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from kvmpy.block.errors import BlockError, CorruptImageError
from kvmpy.block.qcow2_refcount import Refcounts, decode_refblock, encode_refblock
from tests.block.conftest import needs_qemu_img, qemu_check, qemu_img, qemu_io

WIDTHS = [1, 2, 4, 8, 16, 32, 64]


def _reference_encode(values: list[int], bits: int, nbytes: int) -> bytes:
    """qcow2.txt's layout, spelled out: sub-byte entries fill each byte from its low bits,
    wider ones are big-endian."""
    out = bytearray(nbytes)
    if bits < 8:
        per = 8 // bits
        for i, v in enumerate(values):
            out[i // per] |= v << (bits * (i % per))
    else:
        w = bits // 8
        for i, v in enumerate(values):
            out[i * w:(i + 1) * w] = v.to_bytes(w, "big")
    return bytes(out)


@pytest.mark.parametrize("bits", WIDTHS)
def test_codec_matches_the_spec(bits: int) -> None:
    rnd = random.Random(bits)
    n = 512 * 8 // bits
    top = (1 << bits) - 1
    values = [rnd.choice([0, 1, top, rnd.randint(0, top)]) for _ in range(n)]
    raw = _reference_encode(values, bits, 512)
    assert encode_refblock(np.array(values, dtype=np.uint64), bits) == raw
    assert decode_refblock(raw, bits).tolist() == values


def _header(p: Path) -> tuple[int, int, int, int]:
    b = p.read_bytes()[:112]
    cbits = struct.unpack_from(">I", b, 20)[0]
    rt_off, rt_clusters = struct.unpack_from(">QI", b, 48)
    order = struct.unpack_from(">I", b, 96)[0]
    return cbits, order, rt_off, rt_clusters


@contextmanager
def _refcounts(p: Path) -> Iterator[Refcounts]:
    """Refcounts over a real image, moving the table the way the driver does (header field)."""
    cbits, order, rt_off, rt_clusters = _header(p)
    fd = os.open(p, os.O_RDWR)

    def move(off: int, clusters: int) -> None:
        os.pwrite(fd, struct.pack(">QI", off, clusters), 48)
    try:
        yield Refcounts(fd, p, cbits, order, rt_off, rt_clusters, move)
    finally:
        os.close(fd)


def _qemu_image(tmp: Path, bits: int, cluster: int = 4096, size: str = "8M") -> Path:
    p = tmp / f"r{bits}.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"cluster_size={cluster},refcount_bits={bits}", p,
             size)
    qemu_io(p, "write -P 1 0 20k", "write -P 2 1M 8k")
    return p


def _leaked(p: Path) -> dict[int, int]:
    """cluster -> stored refcount for every leak qemu-img check reports."""
    r = qemu_img("check", p, check=False)
    return {int(c): int(n) for c, n in
            re.findall(r"Leaked cluster (\d+) refcount=(\d+) reference=0", r.stderr)}


@needs_qemu_img
@pytest.mark.parametrize("bits", WIDTHS)
def test_reads_what_qemu_wrote(tmp_path: Path, bits: int) -> None:
    p = _qemu_image(tmp_path, bits)
    nclusters = p.stat().st_size // 4096
    with _refcounts(p) as rc:
        counts = rc.get_range(0, nclusters + 100)
        # A fresh qemu image uses every cluster in the file exactly once, nothing beyond it.
        assert counts[:nclusters].tolist() == [1] * nclusters
        assert not counts[nclusters:].any()
        idx = np.array([nclusters + 5, 0, 3, nclusters - 1], dtype=np.int64)
        assert rc.get_many(idx).tolist() == [rc.get(int(c)) for c in idx] == [0, 1, 1, 1]


@needs_qemu_img
@pytest.mark.parametrize("bits", [2, 16, 64])
def test_alloc_update_and_reuse(tmp_path: Path, bits: int) -> None:
    p = _qemu_image(tmp_path, bits)
    end = p.stat().st_size // 4096
    with _refcounts(p) as rc:
        a = rc.alloc(3) // 4096
        assert a == end  # first fit: the file is full, so right after it
        assert rc.get_range(a, 3).tolist() == [1, 1, 1]
        rc.update([a + 1], -1)
        assert rc.alloc(1) // 4096 == a + 1  # the freed cluster is found again
        rc.update([a, a], 1)  # a repeated cluster counts twice
        assert rc.get(a) == 3
    os.truncate(p, (end + 3) * 4096)  # qemu-img check looks no further than the file's end
    assert _leaked(p) == {end: 3, end + 1: 1, end + 2: 1}
    assert qemu_check(p).get("corruptions", 0) == 0


@needs_qemu_img
def test_table_growth_is_valid_for_qemu(tmp_path: Path) -> None:
    # 512-byte clusters, 64-bit refcounts: one block covers 64 clusters and the one-cluster
    # table 64 blocks (2 MiB of file), so allocating 3 MiB must move and grow the table.
    p = _qemu_image(tmp_path, 64, cluster=512, size="16M")
    old_table = _header(p)[2]
    with _refcounts(p) as rc:
        n = (3 << 20) // 512
        start = rc.alloc(n) // 512
        assert rc.table_offset != old_table and rc.table_clusters > 1
        assert rc.get_range(start, n).tolist() == [1] * n
        assert rc.get(old_table // 512) == 0  # the old table was freed
    size = p.stat().st_size
    os.truncate(p, max(size, (start + n) * 512))
    res = qemu_check(p)
    assert res.get("corruptions", 0) == 0 and res["check-errors"] == 0, res
    assert res.get("leaks", 0) == n


@needs_qemu_img
def test_overflow_and_underflow_are_refused(tmp_path: Path) -> None:
    p = _qemu_image(tmp_path, 1)
    with _refcounts(p) as rc:
        with pytest.raises(BlockError, match="refcount overflow"):
            rc.update([0], 1)
        c = rc.alloc(1) // 4096
        rc.update([c], -1)
        with pytest.raises(CorruptImageError, match="below zero"):
            rc.update([c], -1)
        with pytest.raises(CorruptImageError, match="negative"):
            rc.update([-1], 1)
    assert qemu_check(p).get("corruptions", 0) == 0


@needs_qemu_img
def test_hostile_table_entries(tmp_path: Path) -> None:
    p = _qemu_image(tmp_path, 16)
    _, _, rt_off, _ = _header(p)
    with open(p, "r+b") as f:
        f.seek(rt_off + 8)
        f.write(struct.pack(">QQQ", 4096 + 7, 1 << 60, 0x100))
    with _refcounts(p) as rc:
        epb = 4096 * 8 // 16
        with pytest.raises(CorruptImageError, match="not cluster aligned"):
            rc.get(epb)
        with pytest.raises(CorruptImageError, match="invalid"):
            rc.get(2 * epb)
        with pytest.raises(CorruptImageError):
            rc.get(3 * epb)
        assert rc.get(0) == 1  # the good block still reads


@needs_qemu_img
def test_set_value_repairs_to_what_qemu_expects(tmp_path: Path) -> None:
    p = _qemu_image(tmp_path, 16)
    with _refcounts(p) as rc:
        rc.set_value(3, 7)
        assert rc.get(3) == 7
    r = qemu_img("check", p, check=False)
    assert "cluster 3 refcount=7 reference=1" in r.stderr
    with _refcounts(p) as rc:
        rc.set_value(3, 1)
    assert qemu_check(p).get("leaks", 0) == 0


def test_overlap_hook_sees_every_write(tmp_path: Path) -> None:
    """Refcounts asks before each write: a refused write leaves the file untouched."""
    from kvmpy.block.qcow2_create import Qcow2Options, create_qcow2
    p = tmp_path / "hook.qcow2"
    create_qcow2(p, Qcow2Options(size=1 << 20, cluster_size=4096))
    before = p.read_bytes()
    with _refcounts(p) as rc:
        seen: list[tuple[int, int, int]] = []

        def refuse(kind, off, n):  # type: ignore[no-untyped-def]
            seen.append((int(kind), off, n))
            raise CorruptImageError("refused")
        rc.check_overlap = refuse
        with pytest.raises(CorruptImageError):
            rc.alloc(1)
    assert seen and p.read_bytes() == before
