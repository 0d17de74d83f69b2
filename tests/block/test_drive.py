"""Drive: QEMU's BlockBackend role (write cache, discard policy, accounting, resize) and opening drives from specs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvmpy.block.drive import open_drive
from kvmpy.block.drive_spec import cache_mode, drive_from_blockdev, drive_from_spec
from kvmpy.block.errors import BlockError
from kvmpy.block.locking import ImageLockError
from tests.block.conftest import assert_clean, needs_qemu_img, qemu_img, qemu_raw


@pytest.fixture
def spec_module():
    return pytest.importorskip("kvmpy.config_devices", reason="the -drive/-blockdev specs land with the front end")


def views(*chunks: bytes) -> list[memoryview]:
    return [memoryview(bytearray(c)) for c in chunks]


@needs_qemu_img
def test_accounting_as_blockstats(tmp_path: Path) -> None:
    qemu_img("create", "-f", "qcow2", tmp_path / "d.qcow2", "4M")
    d = open_drive(tmp_path / "d.qcow2", id="d0")
    d.write_from(4096, views(b"a" * 512, b"b" * 1024))
    out = views(bytes(512), bytes(1024))
    d.read_into(4096, out)
    assert bytes(out[0]) + bytes(out[1]) == b"a" * 512 + b"b" * 1024
    d.flush()
    d.write_zeroes(0, 4096, unmap=False)
    d.discard_range(0, 4096)
    d.account_invalid("rd")
    s = d.stats.as_qmp(10**18)
    assert (s["wr_operations"], s["wr_bytes"], s["rd_operations"], s["rd_bytes"]) == (2, 1536 + 4096, 1, 1536)
    assert (s["flush_operations"], s["unmap_operations"], s["unmap_bytes"]) == (1, 1, 4096)
    assert s["invalid_rd_operations"] == 1 and s["wr_highest_offset"] == 4096 + 1536
    assert s["rd_total_time_ns"] > 0 and "idle_time_ns" in s and s["timed_stats"] == []
    d.close()
    assert_clean(tmp_path / "d.qcow2")


@needs_qemu_img
def test_discard_ignore_keeps_data_unmap_deallocates(tmp_path: Path) -> None:
    for mode, expect in (("ignore", b"\x77"), ("unmap", b"\x00")):
        path = tmp_path / f"{mode}.raw"
        path.write_bytes(b"\x77" * (1 << 20))
        d = open_drive(path, "raw", id="d", discard=mode)
        d.discard_range(65536, 65536)
        d.close()
        assert path.read_bytes()[65536:65536 + 4096] == expect * 4096
    with pytest.raises(BlockError, match="Invalid discard option"):
        open_drive(path, "raw", id="d", discard="maybe")


@needs_qemu_img
def test_two_drives_on_one_image_refused_unless_locking_off(tmp_path: Path) -> None:
    qemu_img("create", "-f", "raw", tmp_path / "r.img", "1M")
    d = open_drive(tmp_path / "r.img", "raw", id="a")
    with pytest.raises(ImageLockError):
        open_drive(tmp_path / "r.img", "raw", id="b")
    open_drive(tmp_path / "r.img", "raw", id="b", locking=False).close()
    d.close()
    open_drive(tmp_path / "r.img", "raw", id="b").close()  # released on close


def test_cache_overrides() -> None:
    assert cache_mode("none", direct="off").direct is False
    assert cache_mode("writeback", no_flush="on").no_flush is True
    assert cache_mode("writethrough", writeback="on").writeback is True
    with pytest.raises(BlockError, match="expects 'on' or 'off'"):
        cache_mode("none", direct="maybe")


@needs_qemu_img
def test_drive_spec_snapshot_leaves_the_image_alone(tmp_path: Path, spec_module) -> None:
    path = tmp_path / "s.raw"
    path.write_bytes(b"\x01" * (1 << 20))
    spec = spec_module.DriveSpec(id="virtio0", file=path, format="raw", interface="virtio", snapshot=True,
                                 cache="none")
    d = drive_from_spec(spec)
    assert d.cache.direct and d.image.format_name == "qcow2"
    overlay = d.image.path
    d.write_from(0, views(b"\x02" * 4096))
    back = views(bytes(4096))
    d.read_into(0, back)
    assert bytes(back[0]) == b"\x02" * 4096
    d.close()
    assert not overlay.exists()
    assert path.read_bytes() == b"\x01" * (1 << 20)


@needs_qemu_img
def test_blockdev_graph(tmp_path: Path, spec_module) -> None:
    qemu_img("create", "-f", "qcow2", tmp_path / "b.qcow2", "2M")
    specs = {
        "f0": spec_module.BlockdevSpec(driver="file", node_name="f0",
                                       props={"filename": str(tmp_path / "b.qcow2"), "cache.direct": "on"}),
        "n0": spec_module.BlockdevSpec(driver="qcow2", node_name="n0", props={"file": "f0"}),
        "n1": spec_module.BlockdevSpec(driver="qcow2", node_name="n1", props={
            "file.driver": "file", "file.filename": str(tmp_path / "b.qcow2"), "read-only": "on",
            "file.locking": "off"}),
    }
    d = drive_from_blockdev(specs, "n0")
    assert (d.node_name, d.file_node_name, d.image.format_name, d.cache.direct) == ("n0", "f0", "qcow2", True)
    d.write_from(0, views(b"\x09" * 512))
    ro = drive_from_blockdev(specs, "n1")  # locking=off: no conflict with n0
    assert ro.readonly
    ro.close()
    d.close()
    assert qemu_raw(tmp_path / "b.qcow2", tmp_path)[:512] == b"\x09" * 512
    assert os.path.exists(tmp_path / "b.qcow2")
