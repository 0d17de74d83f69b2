"""-p draws a progress bar on stderr; without -p nothing is drawn."""

from __future__ import annotations

from pathlib import Path

from tests.block.conftest import kvmpy_img


def test_convert_progress(tmp_path: Path) -> None:
    src = tmp_path / "s.raw"
    src.write_bytes(b"p" * (3 << 20))
    r = kvmpy_img("convert", "-p", "-O", "qcow2", src, tmp_path / "o.qcow2")
    assert r.returncode == 0 and "100%" in r.stderr
    r = kvmpy_img("convert", "-O", "qcow2", src, tmp_path / "o2.qcow2")
    assert r.returncode == 0 and r.stderr == ""
