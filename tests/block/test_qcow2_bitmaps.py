"""Persistent dirty bitmaps (issue 11): kvmpy-img keeps the bitmaps qemu-img made. Check counts
their clusters, read-only work leaves the file byte for byte as it was, writes are recorded in
enabled bitmaps bit for bit as qemu-io records them, and what kvmpy cannot record (resize)
leaves bitmaps in-use, QEMU's "inconsistent" mark. Real qemu-img/qemu-io are the judges."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from kvmpy.block import qcow2_bitmaps as bm
from kvmpy.block.errors import CorruptImageError
from tests.block.conftest import (kvmpy_img, needs_qemu_img, needs_qemu_io, qemu_check, qemu_img,
                                  qemu_io)

pytestmark = needs_qemu_img


@pytest.fixture
def bitmapped(tmp_path: Path) -> Path:
    """A clean 4 MiB image with data, an enabled bitmap with bits set, and a disabled one."""
    p = tmp_path / "bm.qcow2"
    qemu_img("create", "-f", "qcow2", p, "4M")
    qemu_img("bitmap", "--add", p, "live")
    qemu_io(p, "write -P 1 0 128k", "write -P 2 1M 64k")  # sets bits in "live"
    qemu_img("bitmap", "--add", "--disable", p, "frozen")
    qemu_img("bitmap", "--add", p, "spare")
    qemu_img("bitmap", "--merge", "live", p, "frozen")  # a disabled bitmap with data
    qemu_img("bitmap", "--disable", p, "spare")
    return p


def _bitmaps(p: Path) -> dict[str, list[str]]:
    info = json.loads(qemu_img("info", "--output=json", p).stdout)
    return {b["name"]: b["flags"] for b in info["format-specific"]["data"].get("bitmaps", [])}


def _usable(p: Path, name: str) -> bool:
    """qemu-img can merge from the bitmap: QEMU considers it consistent."""
    scratch = f"probe-{name}"
    qemu_img("bitmap", "--add", "--disable", p, scratch)
    ok = qemu_img("bitmap", "--merge", name, p, scratch, check=False).returncode == 0
    qemu_img("bitmap", "--remove", p, scratch)
    return ok


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_check_counts_bitmap_clusters(bitmapped: Path, cli) -> None:  # type: ignore[no-untyped-def]
    theirs = qemu_check(bitmapped)
    assert theirs.get("leaks", 0) == 0
    code, out, err = cli("check", "--output=json", bitmapped)
    assert code == 0, err
    mine = json.loads(out)
    assert mine.get("leaks", 0) == 0 and mine.get("corruptions", 0) == 0, err
    assert mine["image-end-offset"] == theirs["image-end-offset"]
    before = _digest(bitmapped)
    code, out, err = cli("check", "-r", "leaks", bitmapped)
    assert code == 0 and "Leaked" not in err and "Repairing" not in err, err
    assert _digest(bitmapped) == before  # nothing freed, nothing rewritten
    assert _bitmaps(bitmapped) == {"live": ["auto"], "frozen": [], "spare": []}
    assert all(_usable(bitmapped, n) for n in ("live", "frozen", "spare"))


def test_read_only_work_leaves_the_file_untouched(bitmapped: Path, tmp_path: Path) -> None:
    before = _digest(bitmapped)
    copy = tmp_path / "copy.qcow2"
    copy.write_bytes(bitmapped.read_bytes())
    for args in (("io", "-c", "read -P 1 0 64k", "-c", "map", "-c", "flush", bitmapped),
                 ("info", bitmapped), ("info", "--output=json", bitmapped),
                 ("map", "--output=json", bitmapped), ("check", bitmapped),
                 ("compare", bitmapped, copy), ("snapshot", "-l", bitmapped),
                 ("convert", "-O", "raw", bitmapped, tmp_path / "out.raw")):
        r = kvmpy_img(*args)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        assert _digest(bitmapped) == before, args
    assert _bitmaps(bitmapped)["live"] == ["auto"] and _usable(bitmapped, "live")


def test_info_lists_bitmaps_like_qemu(bitmapped: Path, cli) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli("info", "--output=json", bitmapped)
    mine = json.loads(out)["format-specific"]["data"]["bitmaps"]
    theirs = json.loads(qemu_img("info", "--output=json", bitmapped).stdout)
    assert mine == theirs["format-specific"]["data"]["bitmaps"]
    code, out, _ = cli("info", bitmapped)
    assert out == qemu_img("info", bitmapped).stdout


def bitmap_bits(p: Path, name: str) -> np.ndarray:
    """A bitmap's bits read straight from the file (qcow2.txt layout), one bool per chunk."""
    raw = p.read_bytes()
    cs = 1 << struct.unpack_from(">I", raw, 20)[0]
    disk = struct.unpack_from(">Q", raw, 24)[0]
    pos = struct.unpack_from(">I", raw, 100)[0]
    while True:
        t, n = struct.unpack_from(">II", raw, pos)
        assert t != 0, "no bitmaps extension"
        if t == 0x23852875:
            count, _, _, d = struct.unpack_from(">IIQQ", raw, pos + 8)
            break
        pos += 8 + (n + 7) // 8 * 8
    for _ in range(count):
        t_off, t_size, _, _, gbits, nlen, elen = struct.unpack_from(">QIIBBHI", raw, d)
        if raw[d + 24 + elen:d + 24 + elen + nlen].decode() == name:
            break
        d = (d + 24 + elen + nlen + 7) & ~7
    else:
        raise AssertionError(f"no bitmap {name}")
    chunks = []
    for j in range(t_size):
        e = struct.unpack_from(">Q", raw, t_off + 8 * j)[0]
        off = e & 0x00FFFFFFFFFFFE00
        data = raw[off:off + cs] if off else (b"\xff" if e & 1 else b"\0") * cs
        chunks.append(np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little"))
    return np.concatenate(chunks)[:-(-disk // (1 << gbits))].astype(bool)


WRITES = ["write -P 9 2M 64k", "write -P 8 2100k 1k", "discard 0 64k", "write -z 3M 192k",
          "write -P 7 4095k 1k"]


@needs_qemu_io
def test_writes_are_recorded_like_qemu(bitmapped: Path, tmp_path: Path) -> None:
    theirs = tmp_path / "qemu.qcow2"
    theirs.write_bytes(bitmapped.read_bytes())
    before = bitmap_bits(bitmapped, "live")
    args = [a for w in WRITES for a in ("-c", w)]
    r = kvmpy_img("io", *args, bitmapped)
    assert r.returncode == 0, r.stdout + r.stderr
    qemu_io(theirs, *WRITES)
    mine = bitmap_bits(bitmapped, "live")
    assert (mine == bitmap_bits(theirs, "live")).all()
    assert (mine & ~before).any() and (mine >= before).all()
    for name in ("frozen", "spare"):  # disabled: not recording, untouched
        assert (bitmap_bits(bitmapped, name) == bitmap_bits(theirs, name)).all()
    assert _bitmaps(bitmapped) == {"live": ["auto"], "frozen": [], "spare": []}
    assert all(_usable(bitmapped, n) for n in ("live", "frozen", "spare"))
    res = qemu_check(bitmapped)
    assert res.get("leaks", 0) == 0 and res.get("corruptions", 0) == 0, res


def test_interrupted_session_leaves_bitmap_in_use(bitmapped: Path) -> None:
    """Until a clean close has stored the bits, the bitmap is flagged in-use on disk."""
    from kvmpy.block.qcow2 import Qcow2Backend
    img = Qcow2Backend(bitmapped, readonly=False)
    img.write(2 << 20, b"x" * 4096)
    img.flush()
    assert _bitmaps(bitmapped)["live"] == ["in-use", "auto"]  # as a crash would leave it
    img.close()
    assert _bitmaps(bitmapped)["live"] == ["auto"]
    assert bitmap_bits(bitmapped, "live")[(2 << 20) >> 16]


def test_resize_flags_every_bitmap(bitmapped: Path) -> None:
    r = kvmpy_img("resize", bitmapped, "8M")
    assert r.returncode == 0, r.stderr
    assert all("in-use" in f for f in _bitmaps(bitmapped).values())
    assert qemu_check(bitmapped).get("leaks", 0) == 0


def test_hostile_bitmap_directory_is_ignored_not_trusted(bitmapped: Path, cli) -> None:  # type: ignore[no-untyped-def]
    raw = bytearray(bitmapped.read_bytes())
    pos = struct.unpack_from(">I", raw, 100)[0]
    while True:
        t, n = struct.unpack_from(">II", raw, pos)
        if t == 0x23852875:
            struct.pack_into(">Q", raw, pos + 8 + 8, 1 << 40)  # directory size: absurd
            break
        pos += 8 + (n + 7) // 8 * 8
    bitmapped.write_bytes(raw)
    code, out, err = cli("check", bitmapped)  # a clear report, not a traceback
    assert code in (0, 3) and "Traceback" not in err
    code, out, err = cli("io", "-c", "write 0 512", bitmapped)
    assert code == 0, out + err
    info = json.loads(qemu_img("info", "--output=json", bitmapped).stdout)
    assert "bitmaps" not in info["format-specific"]["data"]  # autoclear bit cleared


def test_parse_rejects_bad_directory() -> None:
    ext = bm.BitmapExtension(1, 24 + 2, 65536)
    entry = struct.pack(">QIIBBHI", 3 * 65536 + 7, 1, 0, 1, 16, 2, 0) + b"b0"
    with pytest.raises(CorruptImageError, match="invalid bitmap table"):
        bm.parse_directory(entry, ext, 65536)
    with pytest.raises(CorruptImageError, match="truncated"):
        bm.parse_directory(entry[:20] + bytes(6), bm.BitmapExtension(1, 20, 65536), 65536)
    good = struct.pack(">QIIBBHI", 3 * 65536, 1, bm.FLAG_AUTO, 1, 16, 2, 0) + b"b0"
    (b,) = bm.parse_directory(good, ext, 65536)
    assert (b.name, b.table_offset, b.granularity_bits, bm.flags_offset(b)) == \
        ("b0", 3 * 65536, 16, 65536 + 12)
    with pytest.raises(CorruptImageError):
        bm.parse_extension(struct.pack(">IIQQ", 0, 0, 24, 65536), 65536)
    tiny = struct.pack(">QIIBBHI", 3 * 65536, 1, bm.FLAG_AUTO, 1, 0, 2, 0) + b"b0"
    with pytest.raises(CorruptImageError, match="granularity"):  # one bit per byte: refused
        bm.parse_directory(tiny, ext, 65536)


def test_mark_range_bits() -> None:
    pending: dict = {}
    bm.mark_range(pending, 65536 * 3 + 5, 65536, 16, 512)  # touches chunks 3 and 4
    bm.mark_range(pending, 4096 * 65536, 1, 16, 512)       # chunk 4096: second data cluster
    assert sorted(pending) == [0, 1]
    assert np.flatnonzero(pending[0]).tolist() == [3, 4]
    assert np.flatnonzero(pending[1]).tolist() == [0]
    packed = bm.pack_bits(pending[0])
    assert packed[0] == 0b11000 and len(packed) == 512 and not any(packed[1:])
    assert bm.table_entries(1 << 30, 16, 512) == 4  # 16384 bits, 4096 per cluster


@pytest.mark.parametrize("variant", ["autoclear-cleared", "in-use"])
def test_check_agrees_with_qemu_on_stale_bitmaps(bitmapped: Path, cli, variant: str) -> None:  # type: ignore[no-untyped-def]
    """Without autoclear bit 0 QEMU ignores the bitmaps (their clusters are leaks); an in-use
    bitmap still owns its clusters. kvmpy's check says what qemu-img check says."""
    raw = bytearray(bitmapped.read_bytes())
    if variant == "autoclear-cleared":
        struct.pack_into(">Q", raw, 88, 0)
        bitmapped.write_bytes(raw)
    else:
        from kvmpy.block.qcow2 import Qcow2Backend
        with Qcow2Backend(bitmapped, readonly=False) as img:  # flagged in-use, never stored
            img.meta.guest_data_changing(0, 0, untrackable=True)
    theirs = qemu_check(bitmapped)
    code, out, err = cli("check", "--output=json", bitmapped)
    mine = json.loads(out)
    for k in ("leaks", "corruptions", "check-errors", "image-end-offset"):
        assert mine.get(k) == theirs.get(k), (k, mine, theirs)
    assert (theirs.get("leaks", 0) > 0) == (variant == "autoclear-cleared")
