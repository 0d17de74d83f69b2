"""Fixtures for the block-layer tests: the real qemu-img/qemu-io as oracles, and image helpers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kvmpy.block.locking import held_bytes

QEMU_IMG = shutil.which("qemu-img")
QEMU_IO = shutil.which("qemu-io")

needs_qemu_img = pytest.mark.skipif(QEMU_IMG is None,
                                    reason="qemu-img not installed (apt-get install qemu-utils)")
needs_qemu_io = pytest.mark.skipif(QEMU_IO is None,
                                   reason="qemu-io not installed (apt-get install qemu-utils)")


def qemu_img(*args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([QEMU_IMG, *map(str, args)], capture_output=True, text=True,
                          check=check)


def qemu_io(path: Path, *cmds: str, fmt: str = "qcow2") -> None:
    args = [QEMU_IO, "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    r = subprocess.run(args + [str(path)], capture_output=True, text=True)
    assert r.returncode == 0 and "failed" not in r.stdout, r.stdout + r.stderr


def qemu_check(path: Path) -> dict:
    """qemu-img check as JSON; asserts the check itself ran."""
    r = qemu_img("check", "--output=json", path, check=False)
    assert r.returncode in (0, 2, 3), r.stderr
    return json.loads(r.stdout)


def assert_clean(path: Path) -> None:
    res = qemu_check(path)
    assert res.get("corruptions", 0) == 0 and res.get("leaks", 0) == 0 and \
        res["check-errors"] == 0, res


def qemu_raw(path: Path, tmp: Path) -> bytes:
    """The image's guest contents as QEMU sees them."""
    out = tmp / f"{path.name}.qemu.raw"
    qemu_img("convert", "-O", "raw", path, out)
    data = out.read_bytes()
    out.unlink()
    return data


def kvmpy_img(*args: object) -> subprocess.CompletedProcess[str]:
    """Run the kvmpy-img CLI in-process-free fashion (a real subprocess, like a user would)."""
    import sys
    return subprocess.run([sys.executable, "-m", "kvmpy.block.img_cli", *map(str, args)],
                          capture_output=True, text=True)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """Run kvmpy-img's main() in-process: returns (exit code, stdout, stderr)."""
    from kvmpy.block.img_cli import main

    def run(*args: object) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.fixture
def rng_bytes():  # type: ignore[no-untyped-def]
    import random
    rnd = random.Random(1234)

    def make(n: int) -> bytes:
        return rnd.randbytes(n)
    return make


__all__ = ["needs_qemu_img", "needs_qemu_io", "qemu_img", "qemu_io", "qemu_check", "assert_clean",
           "qemu_raw", "kvmpy_img", "os"]


def locks_of(path: Path) -> set[int]:
    """The lock bytes someone holds on ``path`` (checked from a fresh open file description)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return set(held_bytes(fd))
    finally:
        os.close(fd)
