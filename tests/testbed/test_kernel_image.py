"""Extracting a PVH-bootable vmlinux from the real Debian bzImage, through kvmpy's loader."""

import shutil
from pathlib import Path

import pytest

from kvmpy.loader.elf import parse_elf64
from kvmpy.testbed.kernel_image import KernelImageError, pvh_elf, pvh_vmlinux
from kvmpy.tools.fetch import fetch_kernel

pytestmark = pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get")


def test_vmlinux_is_extracted_once_and_has_a_pvh_note(tmp_path: Path) -> None:
    k = fetch_kernel("amd64")
    out = pvh_vmlinux(k.vmlinuz, tmp_path)
    elf = out.read_bytes()
    assert parse_elf64(elf).pvh_entry is not None
    assert len(elf) > 2 * k.vmlinuz.stat().st_size  # it really was decompressed
    mtime = out.stat().st_mtime_ns
    assert pvh_vmlinux(k.vmlinuz, tmp_path) == out and out.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_hostile_bzimages_are_refused(tmp_path: Path) -> None:
    k = fetch_kernel("amd64")
    good = k.vmlinuz.read_bytes()
    with pytest.raises(KernelImageError, match="not a Linux bzImage"):
        pvh_elf(b"\0" * 4096)
    bad_len = bytearray(good)
    bad_len[0x24C:0x250] = (0xFFFFFFF0).to_bytes(4, "little")
    with pytest.raises(KernelImageError, match="outside the file"):
        pvh_elf(bytes(bad_len))
    truncated = tmp_path / "vmlinuz-truncated"
    setup = (good[0x1F1] + 1) * 512
    payload_len = int.from_bytes(good[0x24C:0x250], "little")
    cut = bytearray(good[: setup + payload_len // 2])
    cut[0x24C:0x250] = (len(cut) - setup - int.from_bytes(good[0x248:0x24C], "little")).to_bytes(4, "little")
    truncated.write_bytes(bytes(cut))
    with pytest.raises(KernelImageError, match="truncated"):
        pvh_vmlinux(truncated, tmp_path / "c")
    assert not (tmp_path / "c").exists()
