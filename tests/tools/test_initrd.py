"""kvmpy initrd: the archive it writes (read back with the real cpio tool), modules with dependencies, errors."""

import gzip
import os
import shutil
import subprocess
import sys

from pathlib import Path

import pytest

from kvmpy.tools.fetch import is_static_elf
from kvmpy.tools.initrd import main

from module_helpers import fake_module

BUSYBOX = next((p for p in ("/bin/busybox", "/usr/bin/busybox") if os.path.exists(p) and is_static_elf(Path(p))),
               None)
needs_busybox = pytest.mark.skipif(BUSYBOX is None, reason="busybox-static is not installed")


def _cpio_list(path):
    raw = gzip.decompress(path.read_bytes())
    res = subprocess.run(["cpio", "-it", "--quiet"], input=raw, capture_output=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout.decode().split()


@needs_busybox
@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio is not installed")
def test_default_initrd_with_modules_and_files(tmp_path):
    tree = tmp_path / "lib/modules/6.1.0-test"
    (tree / "kernel/a").mkdir(parents=True)
    (tree / "kernel/a/top.ko").write_bytes(fake_module("top", "mid"))
    (tree / "kernel/a/mid.ko").write_bytes(fake_module("mid", "base_mod"))
    (tree / "kernel/a/base-mod.ko").write_bytes(fake_module("base_mod", ""))
    (tree / "kernel/a/unrelated.ko").write_bytes(fake_module("unrelated", ""))
    extra = tmp_path / "hello.txt"
    extra.write_text("hi\n")
    out = tmp_path / "initrd.gz"
    assert main(["-o", str(out), "--modules-dir", str(tree), "-m", "top", "--file", f"{extra}:etc/hello"]) == 0
    names = _cpio_list(out)
    for n in ("init", "bin/busybox", "bin/sh", "dev/console", "etc/hello", "etc/kvmpy-modules"):
        assert n in names
    assert "lib/modules/6.1.0-test/unrelated.ko" not in names
    raw = gzip.decompress(out.read_bytes())
    order = raw.split(b"etc/kvmpy-modules\0")[1]
    pos = [order.find(f"{m}.ko".encode()) for m in ("base-mod", "mid", "top")]
    assert -1 not in pos and pos == sorted(pos), "modules must be listed after their dependencies"


@needs_busybox
def test_errors_are_one_line(tmp_path, capsys):
    assert main(["-o", str(tmp_path / "x"), "-m", "kvm"]) == 2
    assert "needs --modules-dir" in capsys.readouterr().err
    assert main(["-o", str(tmp_path / "x"), "--busybox", "/etc/hostname"]) == 2
    assert "not a statically linked" in capsys.readouterr().err
    assert main(["-o", str(tmp_path / "x"), "--modules-dir", str(tmp_path), "-m", "nosuch"]) == 2
    assert "no module 'nosuch'" in capsys.readouterr().err
    assert main(["-o", str(tmp_path / "x"), "--init", str(tmp_path / "missing")]) == 2
    assert "cannot read init script" in capsys.readouterr().err


def test_help_via_kvmpy_command():
    res = subprocess.run([sys.executable, "-m", "kvmpy", "initrd", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and "--modules-dir" in res.stdout
