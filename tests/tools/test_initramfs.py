"""The initramfs builder: module lookup, dependency order, compressed and hostile modules, the archive."""

import gzip
import lzma
import shutil
import subprocess
from pathlib import Path

import pytest

from kvmpy.tools.initramfs import (InitramfsError, ModuleTree, busybox_archive, module_depends, module_elf,
                                   write_archive)

from module_helpers import fake_module


def _tree(root: Path, modules: dict[str, str], suffix: str = ".ko") -> Path:
    """A module tree whose modules depend on each other as ``modules`` (file stem -> depends=) says."""
    d = root / "lib/modules/6.1.0-test"
    (d / "kernel/x").mkdir(parents=True)
    for stem, deps in modules.items():
        elf = fake_module(stem.replace("-", "_"), deps)
        data = {".ko": elf, ".ko.xz": lzma.compress(elf), ".ko.gz": gzip.compress(elf)}[suffix]
        (d / "kernel/x" / f"{stem}{suffix}").write_bytes(data)
    return d


@pytest.mark.parametrize("suffix", [".ko", ".ko.xz", ".ko.gz"])
def test_closure_orders_dependencies_first(tmp_path: Path, suffix: str) -> None:
    tree = ModuleTree(_tree(tmp_path, {"top": "mid,base-mod", "mid": "base_mod", "base-mod": "",
                                       "unrelated": ""}, suffix))
    picked = tree.closure(["top"])
    assert [m.name for m in picked] == ["base_mod", "mid", "top"]
    assert all(m.elf[:4] == b"\x7fELF" for m in picked)  # stored decompressed for busybox insmod
    assert tree.path("base_mod") == tree.path("base-mod")


def test_modules_dep_wins_and_builtins_are_skipped(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"a": "b", "b": "", "c": ""})
    (root / "modules.dep").write_text("kernel/x/a.ko: kernel/x/c.ko\nkernel/x/c.ko:\n")
    (root / "modules.builtin").write_text("kernel/y/builtin_one.ko\n")
    assert [m.name for m in ModuleTree(root).closure(["a", "builtin-one"])] == ["c", "a"]


def test_dependency_cycles_terminate(tmp_path: Path) -> None:
    tree = ModuleTree(_tree(tmp_path, {"a": "b", "b": "a"}))
    assert sorted(m.name for m in tree.closure(["a"])) == ["a", "b"]


def test_missing_and_hostile_modules_give_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(InitramfsError, match="does not exist"):
        ModuleTree(tmp_path / "nope")
    root = _tree(tmp_path, {"ok": "gone"})
    with pytest.raises(InitramfsError, match="no module 'gone'"):
        ModuleTree(root).closure(["ok"])
    (root / "kernel/x/text.ko").write_text("not an elf")
    with pytest.raises(InitramfsError, match="no ELF header"):
        module_elf(root / "kernel/x/text.ko")
    cut = root / "kernel/x/cut.ko.xz"
    cut.write_bytes(lzma.compress(fake_module("cut", "") * 50)[:60])
    with pytest.raises(InitramfsError, match="cannot decompress"):
        module_elf(cut)
    (root / "kernel/x/bad.ko.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(InitramfsError, match="cannot decompress"):
        module_elf(root / "kernel/x/bad.ko.gz")
    for junk in (b"", b"\x7fELF" + b"\x02\x01" + b"\0" * 10, b"\x7fELF\x02\x01" + b"\xff" * 100):
        with pytest.raises(InitramfsError):
            module_depends(junk)
    bad = root / "kernel/x/badshdr.ko"
    bad.write_bytes(b"\x7fELF\x02\x01" + b"\xff" * 100)
    with pytest.raises(InitramfsError, match="module badshdr: .*malformed"):
        ModuleTree(root).closure(["badshdr"])


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio is not installed")
@pytest.mark.parametrize("level", [0, 6])
def test_archive_is_written_atomically_and_reads_back(tmp_path: Path, level: int) -> None:
    arc = busybox_archive(b"\x7fELF-not-really-busybox", b"#!/bin/sh\necho hi\n", ("bin", "etc"))
    out = tmp_path / "sub" / "initrd.img"
    write_archive(arc, out, level)
    raw = out.read_bytes()
    if level:
        assert raw[:2] == b"\x1f\x8b"
        raw = gzip.decompress(raw)
    assert raw == arc.to_bytes()
    names = subprocess.run(["cpio", "-it", "--quiet"], input=raw, capture_output=True, check=True,
                           timeout=30).stdout.decode().split()
    assert {"init", "bin/busybox", "bin/sh", "dev/console", "dev/null", "etc"} <= set(names)
    assert [p.name for p in out.parent.iterdir()] == ["initrd.img"]  # no temporary left behind
    with pytest.raises(InitramfsError, match="cannot write"):
        write_archive(arc, out / "below-a-file", level)
