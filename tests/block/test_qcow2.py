"""The qcow2 driver against a byte-array model, with qemu-img as the oracle for every image."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from kvmpy.block import qcow2_format as fmt
from kvmpy.block.errors import BlockError, CorruptImageError, UnsupportedImageError
from kvmpy.block.image import open_image
from kvmpy.block.qcow2 import Qcow2Backend
from kvmpy.block.qcow2_create import Qcow2Options, create_qcow2
from tests.block.conftest import assert_clean, needs_qemu_img, qemu_img, qemu_io, qemu_raw

MiB = 1 << 20


def _random_ops(img, model: bytearray, rnd: random.Random, n: int, cs: int) -> None:
    size = len(model)
    for _ in range(n):
        op = rnd.random()
        off = rnd.randrange(size)
        length = min(size - off, rnd.choice([1, 511, cs, cs + 7, 3 * cs, rnd.randrange(1, 4 * cs)]))
        if op < 0.6:
            data = rnd.randbytes(length)
            img.write(off, data)
            model[off:off + length] = data
        elif op < 0.75:
            img.write_zeroes(off, length)
            model[off:off + length] = bytes(length)
        elif op < 0.85:
            # discard leaves unspecified contents; use whole clusters and re-read
            a, b = -(-off // cs) * cs, (off + length) // cs * cs
            if a < b:
                img.discard(a, b - a)
                model[a:b] = img.read(a, b - a)
        else:
            assert img.read(off, length) == bytes(model[off:off + length])


@needs_qemu_img
@pytest.mark.parametrize("cluster_size,version,refbits", [
    (512, 3, 16), (4096, 3, 1), (4096, 2, 16), (65536, 3, 16), (65536, 3, 64),
    (2 * MiB, 3, 8), (16384, 3, 4), (8192, 3, 2), (32768, 3, 32), (131072, 2, 16),
])
def test_random_writes_match_model_and_qemu(tmp_path: Path, cluster_size: int, version: int,
                                            refbits: int) -> None:
    p = tmp_path / "a.qcow2"
    size = 8 * MiB + 512 * 3
    create_qcow2(p, Qcow2Options(size=size, cluster_size=cluster_size, version=version,
                                 refcount_bits=refbits))
    model = bytearray(size)
    rnd = random.Random(cluster_size ^ version ^ refbits)
    with Qcow2Backend(p, readonly=False) as img:
        _random_ops(img, model, rnd, 120, cluster_size)
        assert img.read(0, size) == bytes(model)
    assert_clean(p)
    assert qemu_raw(p, tmp_path) == bytes(model)
    with Qcow2Backend(p) as img:
        assert img.read(0, size) == bytes(model)


@needs_qemu_img
def test_refcount_table_growth_small_clusters(tmp_path: Path) -> None:
    """512-byte clusters with 64-bit refcounts need many refcount blocks and a moved table."""
    p = tmp_path / "g.qcow2"
    size = 4 * MiB
    create_qcow2(p, Qcow2Options(size=size, cluster_size=512, refcount_bits=64))
    data = random.Random(3).randbytes(size)
    with Qcow2Backend(p, readonly=False) as img:
        img.write(0, data)
    assert_clean(p)
    assert qemu_raw(p, tmp_path) == data
    with Qcow2Backend(p) as img:
        assert img.rc.table_clusters > 1


@needs_qemu_img
@pytest.mark.parametrize("backing_fmt", ["raw", "qcow2"])
def test_backing_chain_copy_on_write(tmp_path: Path, backing_fmt: str) -> None:
    rnd = random.Random(7)
    size = 4 * MiB
    base = tmp_path / f"base.{backing_fmt}"
    base_data = rnd.randbytes(size)
    qemu_img("create", "-f", backing_fmt, base, size)
    if backing_fmt == "raw":
        base.write_bytes(base_data)
    else:
        (tmp_path / "src.raw").write_bytes(base_data)
        qemu_img("convert", "-O", "qcow2", tmp_path / "src.raw", base)
    mid = tmp_path / "mid.qcow2"
    create_qcow2(mid, Qcow2Options(size=size + MiB, cluster_size=4096, backing_file=base.name,
                                   backing_format=backing_fmt))
    top = tmp_path / "top.qcow2"
    create_qcow2(top, Qcow2Options(size=size + 2 * MiB, backing_file=mid.name,
                                   backing_format="qcow2"))
    model = bytearray(base_data + bytes(2 * MiB))
    with open_image(mid, readonly=False) as img:
        img.write(100, b"M" * 5000)
        model[100:5100] = b"M" * 5000
    with open_image(top, readonly=False) as img:
        _random_ops(img, model, rnd, 80, 65536)
        assert img.read(0, len(model)) == bytes(model)
    for p in (mid, top):
        assert_clean(p)
    assert qemu_raw(top, tmp_path) == bytes(model)
    assert base.read_bytes()[:size] == base_data or backing_fmt == "qcow2"


@needs_qemu_img
def test_v2_zero_writes_over_backing_store_zeros(tmp_path: Path) -> None:
    base = tmp_path / "b.raw"
    base.write_bytes(b"\xff" * MiB)
    top = tmp_path / "t.qcow2"
    create_qcow2(top, Qcow2Options(size=MiB, version=2, backing_file="b.raw",
                                   backing_format="raw"))
    with open_image(top, readonly=False) as img:
        img.write_zeroes(0, 256 * 1024)
        assert img.read(0, 256 * 1024) == bytes(256 * 1024)
    assert_clean(top)
    assert qemu_raw(top, tmp_path)[:256 * 1024] == bytes(256 * 1024)


@needs_qemu_img
@pytest.mark.parametrize("ctype", ["zlib", "zstd"])
def test_compressed_clusters_written_and_read(tmp_path: Path, ctype: str) -> None:
    p = tmp_path / "c.qcow2"
    cs = 65536
    create_qcow2(p, Qcow2Options(size=MiB, compression_type=1 if ctype == "zstd" else 0))
    chunks = [(bytes([i]) * 1000 + bytes(range(256)) * 100)[:cs].ljust(cs, b"x")
              for i in range(16)]
    with Qcow2Backend(p, readonly=False) as img:
        for i, c in enumerate(chunks):
            img.write_compressed(i * cs, c)
        img.write(5 * cs + 10, b"overwrite")  # COW out of a compressed cluster
    model = bytearray(b"".join(chunks))
    model[5 * cs + 10:5 * cs + 19] = b"overwrite"
    assert_clean(p)
    assert qemu_raw(p, tmp_path) == bytes(model)
    info = qemu_img("check", p).stdout
    assert "compressed clusters" in info and "0.00% compressed" not in info


@needs_qemu_img
@pytest.mark.parametrize("opts", ["compression_type=zlib", "compression_type=zstd",
                                  "compat=0.10", "cluster_size=4096,refcount_bits=1",
                                  "cluster_size=2M,refcount_bits=64", "cluster_size=512"])
def test_reads_what_qemu_writes(tmp_path: Path, opts: str) -> None:
    """qemu-written data, zero, compressed and discarded clusters read back identically."""
    src = tmp_path / "src.raw"
    rnd = random.Random(5)
    data = bytearray(4 * MiB)
    data[:MiB] = rnd.randbytes(MiB)
    data[2 * MiB:3 * MiB] = b"abc" * (MiB // 3) + b"a"
    src.write_bytes(data)
    comp = tmp_path / "comp.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", "-o", opts, src, comp)
    plain = tmp_path / "plain.qcow2"
    qemu_img("convert", "-O", "qcow2", "-o", opts, src, plain)
    qemu_io(plain, "write -P 0x11 3M 100k", "write -z 0 64k", "discard 2M 128k")
    for p in (comp, plain):
        with open_image(p) as img:
            assert img.read(0, img.size()) == qemu_raw(p, tmp_path), p
            # convert's zero-copy path: a mapped view is either refused or the same bytes
            hits = 0
            cs = img.cluster_size()
            for off, n in [(o, cs) for o in range(0, 4 * MiB, max(cs, 64 * 1024))] + \
                    [(MiB - 100, 300), (3 * MiB + 7, 200 * 1024), (0, 4 * MiB)]:
                view = img.mapped(off, n)
                if view is not None:
                    hits += 1
                    assert bytes(view) == img.read(off, n), (p, off, n)
            assert hits or p is comp, p  # (comp keeps incompressible clusters plain too)


def test_mapped_refuses_data_past_end_of_file(tmp_path: Path) -> None:
    """A cluster whose data lies past EOF must not be mapped: touching it would be SIGBUS."""
    p = tmp_path / "t.qcow2"
    cs = 65536
    create_qcow2(p, Qcow2Options(size=MiB))
    with Qcow2Backend(p, readonly=False) as img:
        img.write(0, b"\x5a" * 2 * cs)
    with open(p, "r+b") as f:
        f.truncate(p.stat().st_size - cs // 2)
    with Qcow2Backend(p) as img:
        assert img.mapped(0, cs) is not None
        assert img.mapped(0, 2 * cs) is None
        assert img.read(0, 2 * cs) == b"\x5a" * (cs + cs // 2) + bytes(cs // 2)


def test_feature_bits(tmp_path: Path) -> None:
    p = tmp_path / "f.qcow2"
    create_qcow2(p, Qcow2Options(size=MiB))
    raw = bytearray(p.read_bytes())
    # unknown incompatible bit: refused
    bad = bytearray(raw)
    bad[72:80] = (1 << 40).to_bytes(8, "big")
    p.write_bytes(bad)
    with pytest.raises(UnsupportedImageError, match="incompatible"):
        Qcow2Backend(p)
    # unknown autoclear bits are cleared on a read-write open, unknown extensions kept
    good = bytearray(raw)
    good[88:96] = (0b1011).to_bytes(8, "big")
    h = fmt.parse_header(bytes(good), len(good))
    h.extensions.append(fmt.HeaderExtension(0x12345678, b"keep me"))
    h.autoclear_features = 0b1011
    good[:len(h.pack())] = h.pack()
    p.write_bytes(good)
    with Qcow2Backend(p, readonly=False) as img:
        img.write(0, b"x")
    h2 = fmt.parse_header(p.read_bytes()[:65536], 0)
    assert h2.autoclear_features == 0
    assert fmt.HeaderExtension(0x12345678, b"keep me") in h2.extensions


@needs_qemu_img
def test_corrupt_bit_blocks_writes(tmp_path: Path) -> None:
    p = tmp_path / "c.qcow2"
    create_qcow2(p, Qcow2Options(size=MiB))
    with Qcow2Backend(p, readonly=False) as img:
        img.write(0, b"a" * 70000)
        # Point an L2 entry at the L1 table: writing there must be refused, not performed.
        l2off = int(img.l1[0]) & fmt.L1E_OFFSET_MASK
        tbl = img.meta.load_l2(l2off)
        tbl[0] = (img.h.l1_table_offset | fmt.QCOW_OFLAG_COPIED)
        img.meta.store_l2(l2off, tbl, 0, 1)
        with pytest.raises(CorruptImageError, match="metadata"):
            img.write(0, b"b" * 10)
    with pytest.raises(CorruptImageError, match="corrupt"):
        Qcow2Backend(p, readonly=False)
    assert '"corrupt": true' in qemu_img("info", "--output=json", p).stdout
    with Qcow2Backend(p) as img:  # still readable
        img.read(65536, 10)
    # check -r all repairs what it can and clears the bit, reaching qemu's verdict
    import shutil
    from kvmpy.block.img_cli import main
    q = tmp_path / "q.qcow2"
    shutil.copy(p, q)
    assert main(["check", "-r", "all", str(p)]) == \
        qemu_img("check", "-r", "all", q, check=False).returncode
    assert '"corrupt": false' in qemu_img("info", "--output=json", p).stdout
    assert_clean(p)


@needs_qemu_img
def test_lazy_refcounts_dirty_bit(tmp_path: Path) -> None:
    p = tmp_path / "l.qcow2"
    create_qcow2(p, Qcow2Options(size=MiB, lazy_refcounts=True))
    img = Qcow2Backend(p, readonly=False)
    img.write(0, b"z" * 100)
    assert fmt.parse_header(p.read_bytes()[:4096], 0).incompatible_features & fmt.INCOMPAT_DIRTY
    img.close()
    assert not fmt.parse_header(p.read_bytes()[:4096], 0).incompatible_features & \
        fmt.INCOMPAT_DIRTY
    assert_clean(p)


@needs_qemu_img
def test_dirty_image_repaired_on_open(tmp_path: Path) -> None:
    p = tmp_path / "d.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "lazy_refcounts=on", p, "4M")
    qemu_io(p, "write -P 0x5a 0 1M")
    with Qcow2Backend(p, readonly=False) as img:
        leaked = img.rc.alloc(3)  # leak three clusters
        img.meta.set_incompat(fmt.INCOMPAT_DIRTY, True)
    assert leaked
    with Qcow2Backend(p, readonly=False) as img:
        assert img.read(0, 10) == b"\x5a" * 10
    assert_clean(p)


@needs_qemu_img
def test_resize_grow_and_shrink(tmp_path: Path) -> None:
    p = tmp_path / "r.qcow2"
    create_qcow2(p, Qcow2Options(size=MiB, cluster_size=4096))
    with Qcow2Backend(p, readonly=False) as img:
        img.write(0, b"q" * MiB)
        img.resize(600 * MiB)
        img.write(599 * MiB, b"end")
        with pytest.raises(BlockError, match="shrink"):
            img.resize(MiB)
        img.resize(MiB // 2 + 512, shrink=True)
        assert img.read(0, MiB // 2 + 512) == b"q" * (MiB // 2 + 512)
    assert_clean(p)
    assert qemu_raw(p, tmp_path) == b"q" * (MiB // 2 + 512)
