"""The raw driver: sparse-aware map, hole punching, resize rules, and info as qemu-img gives it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvmpy.block.errors import BlockError
from kvmpy.block.raw import RawBackend, create_raw
from tests.block.conftest import needs_qemu_img, qemu_img

MiB = 1 << 20


def test_sparse_map_and_discard(tmp_path: Path) -> None:
    p = tmp_path / "r.raw"
    create_raw(p, 4 * MiB)
    with RawBackend(p, readonly=False) as r:
        r.write(MiB, b"x" * MiB)
        ext = r.block_status(0, 4 * MiB)
        assert [(e.start, e.length, e.data) for e in ext] == [
            (0, MiB, False), (MiB, MiB, True), (2 * MiB, 2 * MiB, False)]
        r.discard(MiB, MiB)
        assert r.read(MiB, MiB) == bytes(MiB)
        assert not any(e.data for e in r.block_status(0, 4 * MiB))
        with pytest.raises(BlockError, match="shrink"):
            r.resize(MiB)
        r.resize(MiB, shrink=True)
        assert r.size() == MiB
        with pytest.raises(BlockError, match="outside"):
            r.read(MiB - 1, 2)
    with RawBackend(p) as r, pytest.raises(BlockError, match="read-only"):
        r.write(0, b"no")


@needs_qemu_img
def test_raw_info_and_map_match_qemu(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "r.raw"
    create_raw(p, 3 * MiB)
    with RawBackend(p, readonly=False) as r:
        r.write(2 * MiB, b"y" * 4096)
    code, out, _ = cli("info", "--output=json", p)
    assert code == 0
    assert json.loads(out) == json.loads(qemu_img("info", "--output=json", p).stdout)
    code, out, _ = cli("info", p)
    assert out == qemu_img("info", p).stdout


def test_mapped_view_matches_read_and_stops_at_eof(tmp_path: Path) -> None:
    p = tmp_path / "m.raw"
    create_raw(p, 2 * MiB)
    with RawBackend(p, readonly=False) as r:
        r.write(4096 + 5, b"mapped" * 1000)
        view = r.mapped(4000, 10000)
        assert view is not None and bytes(view) == r.read(4000, 10000)
        del view
        with open(p, "r+b") as f:  # the file shrinks behind the driver's back
            f.truncate(MiB)
        assert r.mapped(MiB - 10, 20) is None  # past EOF: refused, never SIGBUS
        assert r.read(MiB - 10, 20) == bytes(20)
        with pytest.raises(BlockError, match="outside"):
            r.mapped(2 * MiB - 1, 2)
