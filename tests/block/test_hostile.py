"""Hostile images: thousands of corrupted qcow2 files (fixed seed), each opened, read, mapped,
checked and written in-process. Every one must end in data or a clean BlockError: never another
exception, a hang, or an unbounded allocation.

Longer fuzzing: KVMPY_FUZZ_IMAGES=200000 python -m pytest tests/block/test_hostile.py -k seeded
(or the hypothesis test with KVMPY_FUZZ_EXAMPLES=100000).
"""

from __future__ import annotations

import os
import random
import resource
import signal
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmpy.block import qcow2_format as fmt
from kvmpy.block.errors import BlockError
from kvmpy.block.image import open_image
from kvmpy.block.img_info import image_info
from kvmpy.block.qcow2 import Qcow2Backend
from kvmpy.block.qcow2_check import check_image
from kvmpy.block.qcow2_create import Qcow2Options, create_qcow2
from kvmpy.block import qcow2_snapshot
from tests.block.conftest import QEMU_IMG, qemu_img, qemu_io

N_IMAGES = int(os.environ.get("KVMPY_FUZZ_IMAGES", "5000"))
PER_IMAGE_SECONDS = 5

# (offset, struct format) of every header field, v2 then v3 additions.
HEADER_FIELDS = [(4, ">I"), (8, ">Q"), (16, ">I"), (20, ">I"), (24, ">Q"), (32, ">I"),
                 (36, ">I"), (40, ">Q"), (48, ">Q"), (56, ">I"), (60, ">I"), (64, ">Q"),
                 (72, ">Q"), (80, ">Q"), (88, ">Q"), (96, ">I"), (100, ">I"), (104, ">B")]


class Hang(Exception):
    pass


def _alarm(signum, frame):  # type: ignore[no-untyped-def]
    raise Hang()


def _seeds(tmp: Path) -> list[bytes]:
    """A handful of small, valid images covering every metadata kind."""
    out = []
    base = tmp / "seedbase.raw"
    base.write_bytes(b"B" * 65536)
    specs = [
        dict(cluster_size=4096), dict(cluster_size=512, refcount_bits=1),
        dict(cluster_size=4096, version=2), dict(cluster_size=8192, refcount_bits=64),
        dict(cluster_size=4096, backing_file=base.name, backing_format="raw"),
        dict(cluster_size=65536, compression_type=1),
    ]
    for i, spec in enumerate(specs):
        p = tmp / f"seed{i}.qcow2"
        size = 256 * 1024 if spec.get("cluster_size", 0) < 65536 else 1 << 20
        create_qcow2(p, Qcow2Options(size=size, **spec))  # type: ignore[arg-type]
        with Qcow2Backend(p, readonly=False) as img:
            cs = img.cs
            img.write(0, bytes(range(256)) * 40)
            img.write(3 * cs + 100, b"x" * (2 * cs))
            if cs >= 4096:
                img.write_compressed(8 * cs, (b"compressible" * (cs // 12 + 1))[:cs])
            img.write_zeroes(5 * cs, cs)
            if img.rc.bits > 1:
                qcow2_snapshot.create(img.meta, "s")
            img.write(50, b"after snapshot")
        out.append(p.read_bytes())
    if QEMU_IMG:  # persistent bitmaps can only be made by QEMU: one enabled, one disabled
        p = tmp / "seed-bitmaps.qcow2"
        qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4096", p, "256K")
        qemu_img("bitmap", "--add", p, "live")
        qemu_io(p, "write -P 1 0 20k", "write -P 2 100k 8k")
        qemu_img("bitmap", "--add", "--disable", p, "frozen")
        qemu_img("bitmap", "--merge", "live", p, "frozen")
        out.append(p.read_bytes())
    return out


def _boundary_values(width: int, file_size: int, cs: int) -> list[int]:
    top = (1 << (8 * width)) - 1
    vals = [0, 1, 2, 7, 8, 9, 63, 64, 65, 512, cs - 1, cs, cs + 1, file_size, file_size - cs,
            file_size + cs, top, top - 1, top >> 1, 1 << (8 * width - 1)]
    return [v & top for v in vals if v >= 0]


def mutate(seed_img: bytes, rnd: random.Random) -> bytes:
    img = bytearray(seed_img)
    cs = 1 << struct.unpack_from(">I", img, 20)[0]
    h = fmt.parse_header(bytes(img[:cs]), len(img))
    for _ in range(rnd.choice([1, 1, 1, 2, 3])):
        kind = rnd.random()
        if kind < 0.4:  # a header field gets a boundary or random value
            off, f = rnd.choice(HEADER_FIELDS)
            width = struct.calcsize(f)
            val = rnd.choice(_boundary_values(width, len(img), cs) +
                             [rnd.getrandbits(8 * width)])
            struct.pack_into(f, img, off, val)
        elif kind < 0.75:  # a metadata table entry gets a hostile offset
            tables = [(h.l1_table_offset, h.l1_size * 8), (h.refcount_table_offset, cs),
                      (h.snapshots_offset, 128)]
            tables += [(int.from_bytes(img[h.l1_table_offset:h.l1_table_offset + 8], "big")
                        & fmt.L1E_OFFSET_MASK, cs)]
            toff, tlen = rnd.choice(tables)
            if not toff or toff + 8 > len(img) or tlen < 8:
                continue
            pos = toff + rnd.randrange(0, tlen // 8) * 8
            if pos + 8 > len(img):
                continue
            val = rnd.choice([0, cs, len(img), len(img) + cs, 1 << 55, rnd.getrandbits(64),
                              h.l1_table_offset | (1 << 63), h.refcount_table_offset,
                              (1 << 62) | rnd.getrandbits(40), 1, 1 << 63 | cs * 3])
            struct.pack_into(">Q", img, pos, val)
        elif kind < 0.9:  # random bytes anywhere in the metadata area
            pos = rnd.randrange(min(len(img), 8 * cs))
            n = rnd.randrange(1, 16)
            img[pos:pos + n] = rnd.randbytes(n)
        else:  # truncation
            img = img[:rnd.randrange(0, len(img))]
    return bytes(img)


_MASK = 0x00FFFFFFFFFFFE00


def metadata_map(buf: bytes) -> dict[int, set[str]]:
    """Cluster index -> what the image's own tables say lives there, read straight from the
    bytes (independently of kvmpy's overlap map): QEMU's "cached" set of metadata, plus the
    data clusters the active L2 tables name. Only clusters inside the file are listed."""
    out: dict[int, set[str]] = {}
    if len(buf) < 72 or buf[:4] != fmt.MAGIC:
        return out
    cb = struct.unpack_from(">I", buf, 20)[0]
    if not 9 <= cb <= 21:
        return out
    cs = 1 << cb
    nclusters = -(-len(buf) // cs)

    def add(what: str, off: int, n: int) -> None:
        first = off // cs
        for c in range(first, min(nclusters, (off + max(n, 1) - 1) // cs + 1)):
            out.setdefault(c, set()).add(what)

    def u64s(off: int, count: int) -> list[int]:
        raw = buf[off:off + count * 8] if off < len(buf) else b""
        return list(struct.unpack_from(f">{len(raw) // 8}Q", raw)) if len(raw) >= 8 else []

    (l1_size, l1_off, rt_off, rt_clusters, nb_snap, snap_off) = struct.unpack_from(
        ">IQQIIQ", buf, 36)
    add("header", 0, cs)
    if l1_size and l1_off:
        add("active L1", l1_off, l1_size * 8)
    for e in u64s(l1_off, min(l1_size, len(buf) // 8)):
        l2 = e & _MASK
        if not l2 or l2 >= len(buf):
            continue
        add("active L2", l2, cs)
        for d in u64s(l2, cs // 8):
            if d & (1 << 62):  # compressed: the sectors it spans are data
                csh = 62 - (cb - 8)
                off = d & ((1 << csh) - 1)
                add("data", off, ((d >> csh) & ((1 << (cb - 8)) - 1)) * 512 + 512 - (off & 511))
            elif d & _MASK:
                add("data", d & _MASK, cs)
    if rt_off:
        add("refcount table", rt_off, min(rt_clusters, 8 << 20) * cs)
        for e in u64s(rt_off, min(rt_clusters * cs // 8, len(buf) // 8)):
            if e and e < len(buf):  # refcount table entries have no flag bits
                add("refcount block", e & ~511, cs)
    pos = snap_off
    for _ in range(min(nb_snap, 1024)):
        if not snap_off or pos + 40 > len(buf):
            break
        s_l1, s_l1_size, id_len, name_len = struct.unpack_from(">QIHH", buf, pos)
        extra = struct.unpack_from(">I", buf, pos + 36)[0]
        if s_l1 and s_l1_size:
            add("inactive L1", s_l1, min(s_l1_size, 1 << 22) * 8)
        pos = (pos + 40 + extra + id_len + name_len + 7) & ~7
    if nb_snap and snap_off:
        add("snapshot table", snap_off, pos - snap_off)
    hlen = struct.unpack_from(">I", buf, 100)[0] if struct.unpack_from(">I", buf, 4)[0] >= 3 \
        else 72
    ext = hlen
    while 8 <= ext and ext + 8 <= min(cs, len(buf)):
        t, n = struct.unpack_from(">II", buf, ext)
        if t == 0:
            break
        if t == fmt.EXT_BITMAPS and n >= 24 and ext + 32 <= len(buf):
            size, off = struct.unpack_from(">QQ", buf, ext + 16)
            if off:
                add("bitmap directory", off, min(size, 64 << 20))
        ext += 8 + (n + 7) // 8 * 8
    return out


class MetadataOverwritten(AssertionError):
    pass


MARKER = b"hostile data!"  # what the fuzz's guest write stores; never valid metadata


def guarded(path: Path, op: str, fn) -> None:  # type: ignore[no-untyped-def]
    """Run one write operation and check it overwrote no metadata (by the image's own tables
    before the operation, see metadata_map):
    - a cluster that held two kinds of metadata at once (say an L2 table that is also the
      refcount table) comes out unchanged: no write of either kind may land there;
    - a cluster that held one kind and was changed still holds that kind afterwards;
    - the guest data written never shows up inside a metadata cluster.
    The header cluster is rewritten legitimately (feature bits) and is not judged."""
    before = path.read_bytes()
    try:
        fn()
    finally:
        after = path.read_bytes()
        cbits = struct.unpack_from(">I", before, 20)[0] if len(before) >= 24 else 0
        if after != before and 9 <= cbits <= 21:
            cs = 1 << cbits
            pre, post = metadata_map(before), metadata_map(after)
            for c, kinds in pre.items():
                old, new = before[c * cs:(c + 1) * cs], after[c * cs:(c + 1) * cs]
                if c == 0 or old == new:
                    continue
                meta = kinds - {"data"}
                if len(meta) > 1 or not meta <= post.get(c, set()) or \
                        (meta and new.count(MARKER) > old.count(MARKER)):
                    raise MetadataOverwritten(
                        f"{op} changed cluster {c} ({', '.join(sorted(kinds))}) -> "
                        f"{', '.join(sorted(post.get(c, set()))) or 'nothing'}")


def exercise(path: Path) -> str:
    """Everything a user or the VMM might do with an image; returns how it ended. Every write
    operation is checked for metadata overwrites (guarded)."""
    try:
        with open_image(path) as img:
            size = img.size()
            n = min(size, 1 << 20)
            img.read(0, n)
            if size > n:
                img.read(size - min(size, 4096), min(size, 4096))
            img.block_status(0, min(size, 64 << 20))
            image_info(img)
            if isinstance(img, Qcow2Backend):
                check_image(img.meta)
        with open_image(path, readonly=False) as img:
            size = img.size()
            if size:
                at = max(0, min(size - len(MARKER), 70000))
                guarded(path, "write", lambda: img.write(at, MARKER[:size - at]))
                guarded(path, "write_zeroes", lambda: img.write_zeroes(0, min(size, 8192)))
                guarded(path, "discard", lambda: img.discard(0, min(size, 1 << 20)))
            if isinstance(img, Qcow2Backend):
                guarded(path, "snapshot", lambda: qcow2_snapshot.create(img.meta, "fuzz"))
                guarded(path, "repair", lambda: check_image(img.meta, repair="all"))
            guarded(path, "resize", lambda: img.resize(size + (1 << 20)))
        return "ok"
    except BlockError as e:
        return f"error: {e}"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    return _seeds(tmp_path_factory.mktemp("seeds"))


def _run_one(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, PER_IMAGE_SECONDS)
    try:
        return exercise(path)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_seeds_are_valid(seeds: list[bytes], tmp_path: Path) -> None:
    (tmp_path / "seedbase.raw").write_bytes(b"B" * 65536)
    for i, s in enumerate(seeds):
        outcome = _run_one(tmp_path / f"s{i}.qcow2", s)
        assert outcome == "ok" or "refcount overflow (1-bit" in outcome, outcome


def test_seeded_hostile_images(seeds: list[bytes], tmp_path: Path) -> None:
    rnd = random.Random(20240517)
    outcomes: dict[str, int] = {}
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    path = tmp_path / "hostile.qcow2"
    (tmp_path / "seedbase.raw").write_bytes(b"B" * 65536)
    for i in range(N_IMAGES):
        data = mutate(rnd.choice(seeds), rnd)
        try:
            outcome = _run_one(path, data)
        except Hang:
            bad = tmp_path / f"hang{i}.qcow2"
            bad.write_bytes(data)
            pytest.fail(f"image {i} ({bad}) took over {PER_IMAGE_SECONDS}s")
        except Exception as e:  # noqa: BLE001 - any other exception is the bug we look for
            bad = tmp_path / f"crash{i}.qcow2"
            bad.write_bytes(data)
            raise AssertionError(f"image {i} ({bad}) raised {type(e).__name__}: {e}") from e
        outcome = outcome.split(":")[0]
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert grown_mib < 512, f"peak memory grew by {grown_mib:.0f} MiB"
    assert outcomes.get("error", 0) > N_IMAGES // 10  # the mutations really do break things
    assert outcomes.get("ok", 0) > 0


def test_backing_chain_loop(tmp_path: Path) -> None:
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    create_qcow2(b, Qcow2Options(size=1 << 20))
    create_qcow2(a, Qcow2Options(size=1 << 20, backing_file="b.qcow2", backing_format="qcow2"))
    with Qcow2Backend(b, readonly=False) as img:
        img.set_backing("a.qcow2", "qcow2")
    with pytest.raises(BlockError, match="loop"):
        open_image(a)
    with Qcow2Backend(a, readonly=False) as img:
        img.set_backing("a.qcow2", "qcow2")
    with pytest.raises(BlockError, match="loop"):
        open_image(a)


def test_huge_virtual_size_is_bounded(tmp_path: Path) -> None:
    p = tmp_path / "huge.qcow2"
    create_qcow2(p, Qcow2Options(size=1 << 20, cluster_size=1 << 21))
    raw = bytearray(p.read_bytes())
    struct.pack_into(">Q", raw, 24, 1 << 60)  # L1 now far too small: refused
    p.write_bytes(raw)
    with pytest.raises(BlockError, match="L1 table"):
        open_image(p)
    create_qcow2(p, Qcow2Options(size=1 << 50, cluster_size=1 << 21))  # a real 1 PiB image
    assert exercise(p) == "ok"
    with Qcow2Backend(p) as img:
        assert img.size() == (1 << 50) + (1 << 20)


@settings(max_examples=int(os.environ.get("KVMPY_FUZZ_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(data=st.data())
def test_hypothesis_header_fuzz(seeds: list[bytes], tmp_path: Path, data) -> None:  # type: ignore[no-untyped-def]
    img = bytearray(data.draw(st.sampled_from(seeds)))
    for _ in range(data.draw(st.integers(1, 4))):
        off, f = data.draw(st.sampled_from(HEADER_FIELDS))
        width = struct.calcsize(f)
        struct.pack_into(f, img, off, data.draw(st.integers(0, (1 << (8 * width)) - 1)))
    _run_one(tmp_path / "hyp.qcow2", bytes(img))
