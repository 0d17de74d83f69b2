"""cache= modes: O_DIRECT really in use (seen in /proc/self/fdinfo), data intact through bounces, flushes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvmpy.block.cache import CACHE_MODES, CacheMode, DirectFile
from kvmpy.block.errors import BlockError
from kvmpy.block.image import open_image
from tests.block.conftest import assert_clean, needs_qemu_img, qemu_img, qemu_raw


def fd_flags(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("flags:"):
            return int(line.split()[1], 8)
    raise AssertionError("no flags line")


def test_modes_are_qemus() -> None:
    assert CACHE_MODES == ("writeback", "none", "writethrough", "directsync", "unsafe")
    assert CacheMode.parse("none") == CacheMode("none", writeback=True, direct=True, no_flush=False)
    assert CacheMode.parse("directsync") == CacheMode("directsync", False, True, False)
    assert CacheMode.parse("writethrough") == CacheMode("writethrough", False, False, False)
    assert CacheMode.parse("unsafe") == CacheMode("unsafe", True, False, True)
    with pytest.raises(BlockError, match="invalid cache option 'fast'"):
        CacheMode.parse("fast")


@needs_qemu_img
@pytest.mark.parametrize("mode", CACHE_MODES)
def test_o_direct_only_for_direct_modes(tmp_path: Path, mode: str) -> None:
    qemu_img("create", "-f", "qcow2", tmp_path / "d.qcow2", "4M")
    cache = CacheMode.parse(mode)
    with open_image(tmp_path / "d.qcow2", readonly=False, cache=cache) as img:
        assert not fd_flags(img.fd) & os.O_DIRECT  # metadata stays buffered
        if cache.direct:
            assert img.direct is not None and fd_flags(img.direct.fd) & os.O_DIRECT
        else:
            assert img.direct is None
        assert img.durable == (not cache.no_flush)


@needs_qemu_img
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_cache_none_data_roundtrip_with_unaligned_memory_and_offsets(tmp_path: Path, fmt: str,
                                                                     rng_bytes) -> None:
    path = tmp_path / f"d.{fmt}"
    qemu_img("create", "-f", fmt, path, "8M")
    data = rng_bytes(3 << 20)
    with open_image(path, fmt, readonly=False, cache=CacheMode.parse("none")) as img:
        assert img.direct is not None
        img.write(0, data)                             # aligned offset, bytes (unaligned memory)
        img.write(5 << 20, memoryview(data)[1:4097])   # aligned length? no: 4096 at +1 memory
        img.write(7 << 20 | 100, b"tail!")            # unaligned offset: the buffered path
        back = bytearray(8 << 20)
        img.readinto(0, memoryview(back))
        odd = bytearray(4097)
        img.readinto(5 << 20, memoryview(odd)[1:])     # unaligned destination memory
        img.flush()
    assert bytes(back[:3 << 20]) == data
    assert bytes(odd[1:]) == data[1:4097]
    assert back[7 << 20 | 100:(7 << 20) + 105] == b"tail!"
    whole = qemu_raw(path, tmp_path)
    assert whole[:3 << 20] == data and whole[5 << 20:(5 << 20) + 4096] == data[1:4097]
    if fmt == "qcow2":
        assert_clean(path)


def test_direct_read_past_end_of_file_reads_zeros(tmp_path: Path) -> None:
    path = tmp_path / "short.raw"
    path.write_bytes(b"\xaa" * 4096 + b"\xbb" * 100)
    f = DirectFile(path, readonly=True)
    try:
        buf = bytearray(16384)
        f.read(0, memoryview(buf))
        assert buf[:4096] == b"\xaa" * 4096 and buf[4096:4196] == b"\xbb" * 100
        assert not any(buf[4196:])
    finally:
        f.close()
