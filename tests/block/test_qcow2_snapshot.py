"""Internal snapshots: kvmpy's create/apply/delete checked by qemu-img, and qemu's read by kvmpy."""

from __future__ import annotations

import random
from pathlib import Path

from kvmpy.block import qcow2_snapshot as snap
from kvmpy.block.qcow2 import Qcow2Backend
from kvmpy.block.qcow2_create import Qcow2Options, create_qcow2
from tests.block.conftest import assert_clean, needs_qemu_img, qemu_img, qemu_io, qemu_raw

MiB = 1 << 20


@needs_qemu_img
def test_snapshot_lifecycle(tmp_path: Path) -> None:
    p = tmp_path / "s.qcow2"
    create_qcow2(p, Qcow2Options(size=4 * MiB, cluster_size=4096))
    rnd = random.Random(11)
    states = []
    with Qcow2Backend(p, readonly=False) as img:
        for i in range(3):
            for _ in range(20):
                off = rnd.randrange(4 * MiB - 9000)
                img.write(off, rnd.randbytes(rnd.randrange(1, 9000)))
            states.append(img.read(0, 4 * MiB))
            snap.create(img.meta, f"s{i}")
        img.write(0, b"after" * 1000)
    assert_clean(p)
    listing = qemu_img("snapshot", "-l", p).stdout
    assert all(f"s{i}" in listing for i in range(3))
    with Qcow2Backend(p, readonly=False) as img:
        snap.apply(img.meta, "s1")
        assert img.read(0, 4 * MiB) == states[1]
    assert_clean(p)
    assert qemu_raw(p, tmp_path) == states[1]
    with Qcow2Backend(p, readonly=False) as img:
        snap.delete(img.meta, "s0")
        snap.delete(img.meta, "2")  # by id
        img.write(1000, b"x" * 10000)
    assert_clean(p)
    qemu_img("snapshot", "-a", "s2", p)
    assert qemu_raw(p, tmp_path) == states[2]
    with Qcow2Backend(p, readonly=False) as img:
        snap.delete(img.meta, "s2")
    assert_clean(p)


@needs_qemu_img
def test_qemu_snapshots_applied_by_kvmpy(tmp_path: Path) -> None:
    p = tmp_path / "q.qcow2"
    qemu_img("create", "-f", "qcow2", p, "2M")
    qemu_io(p, "write -P 0x01 0 1M")
    qemu_img("snapshot", "-c", "one", p)
    qemu_io(p, "write -P 0x02 512k 1M")
    before = qemu_raw(p, tmp_path)
    with Qcow2Backend(p, readonly=False) as img:
        assert [s.name for s in img.snapshots] == ["one"]
        snap.apply(img.meta, "one")
        assert img.read(0, 2 * MiB) == b"\x01" * MiB + bytes(MiB)
        snap.create(img.meta, "two")
        snap.delete(img.meta, "one")
    assert_clean(p)
    qemu_img("snapshot", "-a", "two", p)
    assert qemu_raw(p, tmp_path) == b"\x01" * MiB + bytes(MiB)
    assert before != b"\x01" * MiB + bytes(MiB)


@needs_qemu_img
def test_snapshot_v2_and_compressed(tmp_path: Path) -> None:
    p = tmp_path / "v2.qcow2"
    create_qcow2(p, Qcow2Options(size=MiB, version=2))
    data = (b"compress me " * 6000)[:65536]
    with Qcow2Backend(p, readonly=False) as img:
        img.write_compressed(0, data)
        snap.create(img.meta, "c")
        img.write(10, b"changed")
        assert img.read(0, 65536) == data[:10] + b"changed" + data[17:]
        snap.apply(img.meta, "c")
        assert img.read(0, 65536) == data
    assert_clean(p)
