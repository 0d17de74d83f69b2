"""Extracting a PVH-bootable vmlinux from the real Debian bzImage."""

import shutil
from pathlib import Path

import pytest

from kvmpy.testbed.fetch import fetch_kernel
from kvmpy.testbed.kernel_image import KernelImageError, bzimage_payload, has_pvh_note, pvh_vmlinux

pytestmark = pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get")


def test_vmlinux_is_extracted_once_and_has_a_pvh_note(tmp_path: Path) -> None:
    k = fetch_kernel("amd64")
    out = pvh_vmlinux(k.vmlinuz, tmp_path)
    elf = out.read_bytes()
    assert elf[:4] == b"\x7fELF" and has_pvh_note(elf)
    assert len(elf) > 2 * k.vmlinuz.stat().st_size  # it really was decompressed
    mtime = out.stat().st_mtime_ns
    assert pvh_vmlinux(k.vmlinuz, tmp_path) == out and out.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_hostile_bzimages_are_refused(tmp_path: Path) -> None:
    k = fetch_kernel("amd64")
    good = k.vmlinuz.read_bytes()
    with pytest.raises(KernelImageError, match="not a bzImage"):
        bzimage_payload(b"\0" * 4096)
    bad_len = bytearray(good)
    bad_len[0x24C:0x250] = (0xFFFFFFF0).to_bytes(4, "little")
    with pytest.raises(KernelImageError, match="outside the file"):
        bzimage_payload(bytes(bad_len))
    truncated = tmp_path / "vmlinuz-truncated"
    setup = (good[0x1F1] + 1) * 512
    payload_len = int.from_bytes(good[0x24C:0x250], "little")
    cut = bytearray(good[: setup + payload_len // 2])
    cut[0x24C:0x250] = (len(cut) - setup - int.from_bytes(good[0x248:0x24C], "little")).to_bytes(4, "little")
    truncated.write_bytes(bytes(cut))
    with pytest.raises(KernelImageError, match="truncated"):
        pvh_vmlinux(truncated, tmp_path / "c")
    assert not has_pvh_note(Path("/bin/sh").resolve().read_bytes())
