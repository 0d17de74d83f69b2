"""The newc writer, checked by reading its output back with the real cpio tool."""

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kvmpy.tools.cpio import CpioArchive

pytestmark = pytest.mark.skipif(shutil.which("cpio") is None, reason="needs the cpio tool (apt: cpio)")


def _sample() -> CpioArchive:
    arc = CpioArchive()
    arc.add_file("init", b"#!/bin/sh\necho hi\n", perm=0o755)
    arc.add_file("lib/modules/a.ko", bytes(range(256)) * 3 + b"x")  # odd length: exercises padding
    arc.add_file("empty", b"")
    arc.add_symlink("bin/sh", "busybox")
    arc.add_dir("proc")
    arc.add_chardev("dev/console", 5, 1)
    return arc


def test_cpio_lists_every_member_with_its_type() -> None:
    listing = subprocess.run(["cpio", "-tv", "--quiet"], input=_sample().to_bytes(),
                             capture_output=True, check=True).stdout.decode()
    lines = {line.split()[-1] if "->" not in line else line.split()[-3]: line
             for line in listing.splitlines()}
    assert set(lines) == {"bin", "bin/sh", "dev", "dev/console", "empty", "init", "lib",
                          "lib/modules", "lib/modules/a.ko", "proc"}
    assert lines["dev/console"].startswith("crw-------") and "5," in lines["dev/console"]
    assert lines["init"].startswith("-rwxr-xr-x")
    assert lines["bin/sh"].startswith("lrwxrwxrwx") and lines["bin/sh"].endswith("-> busybox")
    assert lines["proc"].startswith("drwxr-xr-x")


def test_cpio_extracts_identical_contents(tmp_path: Path) -> None:
    gz = tmp_path / "a.cpio.gz"
    _sample().write_gzip(gz)
    raw = gzip.decompress(gz.read_bytes())
    out = tmp_path / "x"
    out.mkdir()
    # No device nodes: extracting them needs privileges the test should not rely on.
    subprocess.run(["cpio", "-id", "--quiet", "--no-absolute-filenames", "init", "lib/modules/a.ko",
                    "empty", "bin/sh"], input=raw, cwd=out, check=True)
    assert (out / "init").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert os.access(out / "init", os.X_OK)
    assert (out / "lib/modules/a.ko").read_bytes() == bytes(range(256)) * 3 + b"x"
    assert (out / "empty").read_bytes() == b""
    assert os.readlink(out / "bin/sh") == "busybox"


def test_cpio_output_is_reproducible(tmp_path: Path) -> None:
    a, b = tmp_path / "a.gz", tmp_path / "b.gz"
    _sample().write_gzip(a)
    _sample().write_gzip(b)
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("name", ["../evil", "a/../../b", "", "/", "a\0b"])
def test_cpio_rejects_bad_names(name: str) -> None:
    with pytest.raises(ValueError):
        CpioArchive().add_file(name, b"")


def test_cpio_rejects_duplicate_files() -> None:
    arc = CpioArchive()
    arc.add_file("a", b"1")
    with pytest.raises(ValueError, match="duplicate"):
        arc.add_file("a", b"2")
