"""kvmpy initrd: the archive it writes (read back with the real cpio tool), modules with dependencies, errors."""

import gzip
import os
import shutil
import subprocess
import sys

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

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


def _run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmpy", "initrd", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


@pytest.mark.parametrize("argv,needle", [
    ([], "the following arguments are required: -o/--output"),
    (["-o", "x", "--level", "12"], "invalid choice"),
    (["-o", "x", "--level", "1\n2"], "invalid int value"),
    (["-o", "x", "--bogus\nline two"], "unrecognized arguments: --bogus\\nline two"),
    (["-o", "x", "-m"], "expected one argument"),
])
def test_usage_errors_are_one_line_with_status_2(tmp_path, argv, needle):
    res = _run_cli(*argv, cwd=tmp_path)
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("kvmpy initrd: error: ") and needle in lines[0]
    assert not list(tmp_path.iterdir())


def test_input_errors_with_newlines_in_paths_stay_one_line(tmp_path, capsys):
    assert main(["-o", str(tmp_path / "x"), "--init", str(tmp_path / "no\nsuch")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no\\nsuch" in err
    assert main(["-o", str(tmp_path / ("n" * 300)), "--busybox", "/bin/sh", "--init", "x" * 5000]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["-o", str(tmp_path / "x"), "--modules-dir", "d" * 5000, "-m", "a"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


OPTIONS = ["-o", "--output", "--busybox", "--init", "--modules-dir", "-m", "--module", "--file", "--level",
           "--help", "-h", "--", "-", "--lev", "--output=", "--level=3"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(
    st.sampled_from(OPTIONS),
    st.text(st.characters(blacklist_characters="/", blacklist_categories=("Cs",)), max_size=12),
    st.sampled_from(["0", "9", "10", "-1", "1" * 5000, "é", "a:b", ":", "a:../x", "a:", "\n", "out.gz"]),
), max_size=8))
def test_fuzzed_argv_never_tracebacks(tmp_path, monkeypatch, capsys, argv):
    # Paths are relative (no "/"), so everything lands in, or is looked up in, this empty directory.
    work = tmp_path / "w"
    work.mkdir(exist_ok=True)
    monkeypatch.chdir(work)
    status = main(argv)
    out, err = capsys.readouterr()
    if status == 2:
        assert err.count("\n") == 1 and err.startswith("kvmpy initrd: error: "), (argv, err)
    else:
        assert status == 0 and err == "", (argv, err)
