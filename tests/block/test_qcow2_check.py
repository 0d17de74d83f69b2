"""check and repair: kvmpy's verdicts and exit codes agree with qemu-img check on damaged images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from kvmpy.block import qcow2_format as fmt
from kvmpy.block.qcow2 import Qcow2Backend
from kvmpy.block.qcow2_check import check_image
from kvmpy.block.qcow2_create import Qcow2Options, create_qcow2
from tests.block.conftest import assert_clean, needs_qemu_img, qemu_img

MiB = 1 << 20


def _image(tmp_path: Path) -> Path:
    p = tmp_path / "c.qcow2"
    create_qcow2(p, Qcow2Options(size=4 * MiB, cluster_size=4096))
    with Qcow2Backend(p, readonly=False) as img:
        img.write(0, b"d" * (300 * 1024))
    return p


@needs_qemu_img
def test_leaks_detected_and_repaired(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    p = _image(tmp_path)
    with Qcow2Backend(p, readonly=False) as img:
        off = img.rc.alloc(5)
        os.pwrite(img.fd, b"leak", off + 4 * img.cs)  # qemu only checks up to the file's end
    q = qemu_img("check", "--output=json", p, check=False)
    code, out, _ = cli("check", "--output=json", p)
    assert q.returncode == code == 3
    mine, theirs = json.loads(out), json.loads(q.stdout)
    for k in ("leaks", "corruptions", "check-errors", "allocated-clusters", "total-clusters",
              "image-end-offset", "fragmented-clusters"):
        assert mine.get(k) == theirs.get(k), k
    code, out, _ = cli("check", "-r", "leaks", p)
    assert code == 0 and "5 leaked clusters" in out
    assert_clean(p)


@needs_qemu_img
def test_refcount_too_low_is_corruption(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    p = _image(tmp_path)
    with Qcow2Backend(p, readonly=False) as img:
        l2 = int(img.l1[0]) & fmt.L1E_OFFSET_MASK
        host = int(img.meta.load_l2(l2)[3]) & fmt.L2E_OFFSET_MASK
        img.rc.set_value(host // img.cs, 0)
    q = qemu_img("check", p, check=False)
    code, out, err = cli("check", p)
    assert q.returncode == code == 2
    assert "errors were found" in out and "ERROR" in err
    code, _, _ = cli("check", "-r", "all", p)
    assert code == 0
    assert_clean(p)


@needs_qemu_img
def test_copied_flag_mismatch(tmp_path: Path) -> None:
    p = _image(tmp_path)
    with Qcow2Backend(p, readonly=False) as img:
        l2 = int(img.l1[0]) & fmt.L1E_OFFSET_MASK
        tbl = img.meta.load_l2(l2)
        tbl[1] &= ~np.uint64(fmt.QCOW_OFLAG_COPIED)
        img.meta.store_l2(l2, tbl, 1, 2)
        res = check_image(img.meta)
        assert res.corruptions == 1
    assert qemu_img("check", p, check=False).returncode == 2
    with Qcow2Backend(p, readonly=False) as img:
        assert check_image(img.meta, "all").corruptions == 0
    assert_clean(p)


def test_raw_has_no_check(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    r = tmp_path / "r.raw"
    r.write_bytes(bytes(4096))
    assert cli("check", r)[0] == 63


@needs_qemu_img
def test_check_json_matches_qemu_on_many_kinds(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    from tests.block.conftest import qemu_io
    src = tmp_path / "s.raw"
    src.write_bytes((b"abc" * 500000)[:1 << 20] + bytes(1 << 20) + os.urandom(1 << 20))
    images = []
    for i, args in enumerate([[], ["-c"], ["-o", "cluster_size=512"], ["-o", "compat=0.10"]]):
        for tool in ("qemu", "kvmpy"):
            p = tmp_path / f"{tool}{i}.qcow2"
            if tool == "qemu":
                qemu_img("convert", "-O", "qcow2", *args, src, p)
            else:
                assert cli("convert", "-O", "qcow2", *args, src, p)[0] == 0
            images.append(p)
    snap = tmp_path / "snap.qcow2"
    qemu_img("convert", "-O", "qcow2", src, snap)
    qemu_img("snapshot", "-c", "a", snap)
    qemu_io(snap, "write -P 9 0 100k")
    images.append(snap)
    for p in images:
        code, out, _ = cli("check", "--output=json", p)
        q = qemu_img("check", "--output=json", p, check=False)
        assert code == q.returncode == 0
        mine, theirs = json.loads(out), json.loads(q.stdout)
        mine["filename"] = theirs["filename"]
        assert mine == theirs, p
