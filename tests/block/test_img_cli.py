"""kvmpy-img against the real qemu-img: same answers, and images that move between the two tools
without a single check error."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.block.conftest import (assert_clean, kvmpy_img, needs_qemu_img, qemu_img, qemu_io,
                                  qemu_raw)

MiB = 1 << 20
pytestmark = needs_qemu_img


def _mixed_raw(path: Path, size: int = 6 * MiB, seed: int = 1) -> bytes:
    rnd = random.Random(seed)
    data = bytearray(size)
    for off in range(0, size, 256 * 1024):
        kind = rnd.randrange(3)
        if kind == 0:
            data[off:off + 256 * 1024] = rnd.randbytes(256 * 1024)
        elif kind == 1:
            data[off:off + 256 * 1024] = bytes([rnd.randrange(256)]) * (256 * 1024)
    data[size - 100:] = b"t" * 100
    path.write_bytes(data)
    return bytes(data)


def _info_equal(cli, path: Path, *extra: str) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli("info", "--output=json", *extra, path)
    assert code == 0, err
    mine = json.loads(out)
    theirs = json.loads(qemu_img("info", "--output=json", *extra, path).stdout)
    assert isinstance(mine, list) == isinstance(theirs, list)
    pairs = list(zip(mine, theirs)) if isinstance(mine, list) else [(mine, theirs)]
    assert len(pairs) == (len(theirs) if isinstance(theirs, list) else 1) == \
        (len(mine) if isinstance(mine, list) else 1)
    for m, t in pairs:
        # every field qemu reports, and no other, with qemu's value (format-specific included;
        # qemu reports the json-normalised filename for files inside chains the same way)
        assert set(m) == set(t), (set(m) ^ set(t))
        for key in t:
            assert m[key] == t[key], (key, m[key], t[key])


@pytest.mark.parametrize("opts", [
    "cluster_size=512", "cluster_size=1k", "cluster_size=4k", "cluster_size=16k",
    "cluster_size=64k", "cluster_size=256k", "cluster_size=2M", "compat=0.10",
    "compat=1.1,lazy_refcounts=on", "refcount_bits=1", "refcount_bits=64",
    "compression_type=zstd",
])
def test_create_and_info_match_qemu(tmp_path: Path, cli, opts: str) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "c.qcow2"
    code, out, err = cli("create", "-f", "qcow2", "-o", opts, p, "3G")
    assert code == 0, err
    assert out.startswith(f"Formatting '{p}', fmt=qcow2")
    assert_clean(p)
    _info_equal(cli, p)
    q = tmp_path / "q.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", opts, q, "3G")
    _info_equal(cli, q)
    code, out, _ = cli("info", p)
    assert "virtual size: 3 GiB (3221225472 bytes)" in out


def test_info_chain_snapshots_and_human(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    base = tmp_path / "base.raw"
    _mixed_raw(base, 2 * MiB)
    mid = tmp_path / "mid.qcow2"
    top = tmp_path / "top.qcow2"
    assert cli("create", "-f", "qcow2", "-b", base.name, "-F", "raw", mid)[0] == 0
    qemu_img("create", "-f", "qcow2", "-b", mid.name, "-F", "qcow2", top)
    qemu_img("snapshot", "-c", "snap-a", top)
    assert cli("snapshot", "-c", "snap-b", top)[0] == 0
    _info_equal(cli, top)
    _info_equal(cli, top, "--backing-chain")
    code, mine, _ = cli("info", top)
    theirs = qemu_img("info", top).stdout
    drop = ("disk size",)  # identical files, but keep the comparison robust to timing
    assert [line for line in mine.splitlines() if not line.startswith(drop)] == \
        [line for line in theirs.splitlines() if not line.startswith(drop)]
    code, out, _ = cli("snapshot", "-l", top)
    assert code == 0 and out == qemu_img("snapshot", "-l", top).stdout


def test_create_errors(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("create", "-f", "qcow2", tmp_path / "x.qcow2", "12Q")
    assert code == 1 and "size" in err and "Traceback" not in err
    code, _, err = cli("create", "-f", "qcow2", "-o", "cluster_size=3000", tmp_path / "x", "1M")
    assert code == 1 and "Cluster size" in err
    code, _, err = cli("create", "-f", "qcow2", "-b", "nope.raw", "-F", "raw", tmp_path / "y")
    assert code == 1 and "nope.raw" in err
    code, _, err = cli("create", "-f", "qcow2", "-b", "b.raw", tmp_path / "z", "1M")
    assert code == 1 and "without backing format" in err
    code, _, err = cli("info", tmp_path / "missing.qcow2")
    assert code == 1 and "missing.qcow2" in err
    r = kvmpy_img("info", tmp_path / "missing.qcow2")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    r = kvmpy_img("--help")
    assert r.returncode == 0 and "convert" in r.stdout


@pytest.mark.parametrize("args", [[], ["-c"], ["-o", "cluster_size=4k"], ["-o", "compat=0.10"],
                                  ["-c", "-o", "compression_type=zstd"],
                                  ["-o", "cluster_size=2M,refcount_bits=8"]])
def test_convert_raw_to_qcow2_and_back(tmp_path: Path, cli, args: list[str]) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src.raw"
    data = _mixed_raw(src)
    out = tmp_path / "out.qcow2"
    code, _, err = cli("convert", "-O", "qcow2", *args, src, out)
    assert code == 0, err
    assert_clean(out)
    assert qemu_img("compare", src, out, check=False).returncode == 0
    assert cli("compare", src, out)[0] == 0
    back = tmp_path / "back.raw"
    assert cli("convert", "-f", "qcow2", "-O", "raw", out, back)[0] == 0
    assert back.read_bytes() == data
    if "-c" in args:
        assert "compressed" in qemu_img("check", out).stdout
    # and qemu's own qcow2 of the same data converts back identically through kvmpy
    q = tmp_path / "q.qcow2"
    qemu_img("convert", "-O", "qcow2", *args, src, q)
    back2 = tmp_path / "back2.raw"
    assert cli("convert", "-O", "raw", q, back2)[0] == 0
    assert back2.read_bytes() == data


def test_convert_flattens_chain_and_is_sparse(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    base = tmp_path / "b.qcow2"
    qemu_img("create", "-f", "qcow2", base, "8M")
    qemu_io(base, "write -P 1 0 2M")
    top = tmp_path / "t.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", base.name, "-F", "qcow2", top)
    qemu_io(top, "write -P 2 1M 2M", "write -z 0 64k")
    out = tmp_path / "o.qcow2"
    assert cli("convert", "-p", "-O", "qcow2", top, out)[0] == 0
    assert_clean(out)
    assert qemu_raw(out, tmp_path) == qemu_raw(top, tmp_path)
    raw = tmp_path / "o.raw"
    assert cli("convert", "-O", "raw", top, raw)[0] == 0
    assert raw.stat().st_blocks * 512 <= 3 * MiB + 65536  # zero ranges left as holes


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_convert_sparse_size_zero_allocates_everything_like_qemu(tmp_path: Path, cli, fmt: str) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "s.raw"
    with open(src, "wb") as f:
        f.truncate(8 * MiB)
        f.seek(3 * MiB)
        f.write(b"x" * 70000)
    ours, theirs = tmp_path / f"k.{fmt}", tmp_path / f"q.{fmt}"
    assert cli("convert", "-S", "0", "-O", fmt, src, ours)[0] == 0
    qemu_img("convert", "-S", "0", "-O", fmt, src, theirs)
    assert json.loads(qemu_img("map", "--output=json", ours).stdout) == \
        json.loads(qemu_img("map", "--output=json", theirs).stdout)
    assert ours.stat().st_blocks == theirs.stat().st_blocks  # zeros written, not holes
    assert qemu_img("compare", src, ours, check=False).returncode == 0
    if fmt == "qcow2":
        assert_clean(ours)


def test_compare_exit_codes(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    a = tmp_path / "a.raw"
    data = _mixed_raw(a, 2 * MiB)
    b = tmp_path / "b.qcow2"
    qemu_img("convert", "-O", "qcow2", a, b)
    assert cli("compare", a, b)[0] == 0
    qemu_io(b, "write -P 0x77 1000 1")
    code, out, _ = cli("compare", a, b)
    q = qemu_img("compare", a, b, check=False)
    assert code == q.returncode == 1 and out == q.stdout
    big = tmp_path / "big.raw"
    big.write_bytes(data + bytes(MiB))
    code, out, _ = cli("compare", a, big)
    assert code == qemu_img("compare", a, big, check=False).returncode == 0
    assert "size mismatch" in out
    code, out, _ = cli("compare", "-s", a, big)
    assert code == 1
    code, _, err = cli("compare", a, tmp_path / "nope")
    assert code == qemu_img("compare", a, tmp_path / "nope", check=False).returncode == 2


def test_map_matches_qemu(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    base = tmp_path / "b.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4k", base, "4M")
    qemu_io(base, "write -P 1 0 1M", "write -P 3 3M 64k")
    top = tmp_path / "t.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", base.name, "-F", "qcow2", top, "6M")
    qemu_io(top, "write -P 2 512k 1M", "write -z 2M 128k", "discard 3M 64k")
    raw = tmp_path / "r.raw"
    _mixed_raw(raw, 2 * MiB)
    for img in (base, top, raw):
        code, out, _ = cli("map", "--output=json", img)
        assert code == 0
        assert json.loads(out) == json.loads(qemu_img("map", "--output=json", img).stdout), img
    code, out, _ = cli("map", base)
    assert out == qemu_img("map", base).stdout


def test_resize_snapshot_rebase_commit(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    base = tmp_path / "base.qcow2"
    new_base = tmp_path / "new.qcow2"
    top = tmp_path / "top.qcow2"
    for p in (base, new_base):
        qemu_img("create", "-f", "qcow2", p, "4M")
    qemu_io(base, "write -P 0xaa 0 4M")
    qemu_io(new_base, "write -P 0xaa 0 1M", "write -P 0xbb 1M 1M")
    assert cli("create", "-f", "qcow2", "-b", base.name, "-F", "qcow2", top)[0] == 0
    assert cli("io", "-c", "write -P 0x01 3M 64k", top)[0] == 0
    before = qemu_raw(top, tmp_path)
    code, _, err = cli("rebase", "-b", new_base.name, "-F", "qcow2", top)
    assert code == 0, err
    assert_clean(top)
    assert qemu_raw(top, tmp_path) == before
    assert json.loads(qemu_img("info", "--output=json", top).stdout)["backing-filename"] == \
        new_base.name
    # commit top into new base, top is emptied afterwards
    assert cli("commit", top)[0] == 0
    assert_clean(top)
    assert_clean(new_base)
    assert qemu_raw(new_base, tmp_path) == before
    assert qemu_raw(top, tmp_path) == before
    assert json.loads(qemu_img("check", "--output=json", top).stdout).get(
        "allocated-clusters", 0) == 0
    # resize + snapshots
    assert cli("resize", top, "+2M")[0] == 0
    assert cli("snapshot", "-c", "s1", top)[0] == 0
    assert cli("io", "-c", "write -P 0x05 5M 64k", top)[0] == 0
    assert cli("snapshot", "-a", "s1", top)[0] == 0
    assert qemu_raw(top, tmp_path)[5 * MiB:5 * MiB + 10] == bytes(10)
    assert cli("snapshot", "-d", "s1", top)[0] == 0
    assert_clean(top)
    code, _, err = cli("resize", top, "-1M")
    assert code == 1 and "--shrink" in err
    assert cli("resize", "--shrink", top, "-1M")[0] == 0
    assert qemu_img("info", "--output=json", top).stdout.count('"virtual-size": 5242880') == 1
    assert_clean(top)
    # unsafe rebase to nothing, then safe rebase to nothing keeps contents
    flat = tmp_path / "flat.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", base.name, "-F", "qcow2", flat)
    want = qemu_raw(flat, tmp_path)
    assert cli("rebase", "-b", "", flat)[0] == 0
    assert qemu_raw(flat, tmp_path) == want
    assert_clean(flat)


def test_io_scripted_and_one_shot(tmp_path: Path) -> None:
    p = tmp_path / "io.qcow2"
    qemu_img("create", "-f", "qcow2", p, "1M")
    r = kvmpy_img("io", "-c", "write -P 0x42 4k 8k", "-c", "read -P 0x42 4k 8k", p)
    assert r.returncode == 0 and "wrote 8192/8192 bytes at offset 4096" in r.stdout
    script = "write -P 7 0 64k\nread -P 7 0 64k\ndiscard 0 64k\nmap\nflush\nread -P 7 0 1\n"
    r = subprocess.run([sys.executable, "-m", "kvmpy.block.img_cli", "io", str(p)], input=script,
                       capture_output=True, text=True)
    assert r.returncode == 1 and "Pattern verification failed at offset 0" in r.stdout
    assert "not allocated" in r.stdout
    assert_clean(p)
