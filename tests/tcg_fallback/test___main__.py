"""The standalone CLI (python -m kvmpy.tcg_fallback, kept for compatibility): --help, QEMU exit statuses, one-line errors with status 2, traces."""

from __future__ import annotations

import subprocess
import sys

from tests.guests.riscv.oracle import guest


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmpy.tcg_fallback", *args],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, **kw)


def test_help():
    p = _cli("--help")
    assert p.returncode == 0 and "-kernel" in p.stdout


def test_hello_runs_with_qemu_flags(tmp_path):
    trace = tmp_path / "trace.txt"
    p = _cli("-machine", "virt", "-cpu", "rv64", "-bios", "none", "-kernel", str(guest("hello")),
             "-nographic", "-m", "128M", "-d", "in_asm,exec,tb_stats", "-D", str(trace))
    assert p.returncode == 0
    assert p.stdout == "hello from riscv64\n"
    text = trace.read_text()
    assert "IN:" in text and "Trace 0: [0000000080000000]" in text and "TB stats:" in text


def test_user_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.elf"
    bad.write_bytes(b"MZ")
    for args in (["-kernel", str(bad)], ["-kernel", str(guest("hello")), "-bios", "default"],
                 ["-kernel", str(guest("hello")), "-m", "huge"]):
        p = _cli(*args)
        assert p.returncode == 2, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
