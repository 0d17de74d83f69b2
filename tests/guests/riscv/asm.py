"""Assembling riscv64 snippets with binutils (riscv64-linux-gnu-as/objcopy) for unit tests.

The decoder and CPU tests check kvmpy against encodings produced by the real
assembler, not against encodings written out by hand.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

AS = "riscv64-linux-gnu-as"
OBJCOPY = "riscv64-linux-gnu-objcopy"
MARCH = "rv64imac_zicsr_zifencei"


def assemble(source: str, march: str = MARCH) -> bytes:
    """The .text bytes of ``source``; skips the test when binutils for riscv64 are missing."""
    if shutil.which(AS) is None or shutil.which(OBJCOPY) is None:
        pytest.skip(f"{AS} not installed (apt-get install binutils-riscv64-linux-gnu)")
    with tempfile.TemporaryDirectory(prefix="kvmpy-rvasm-") as tmp:
        src, obj, out = Path(tmp) / "a.S", Path(tmp) / "a.o", Path(tmp) / "a.bin"
        src.write_text(source + "\n")
        subprocess.run([AS, f"-march={march}", "-mabi=lp64", "-o", str(obj), str(src)],
                       check=True, capture_output=True, timeout=60)
        subprocess.run([OBJCOPY, "-O", "binary", "-j", ".text", str(obj), str(out)],
                       check=True, capture_output=True, timeout=60)
        return out.read_bytes()


def words(source: str, size: int, march: str = MARCH) -> list[int]:
    """``source`` assembled and split into little-endian ``size``-byte instruction words."""
    code = assemble(source, march)
    assert len(code) % size == 0, f"{len(code)} bytes of code are not {size}-byte words"
    return [int.from_bytes(code[i:i + size], "little") for i in range(0, len(code), size)]


def run_user(lines: list[str], workdir: Path, march: str = "rv64imafd") -> bytes:
    """Assemble and link ``lines`` (a freestanding ``_start`` that writes its results to fd 1
    and exits) and return what qemu-riscv64 (user mode, the oracle) prints; skips the test
    when the tools are missing.  Linker relaxation is off: nothing sets gp."""
    for tool in ("qemu-riscv64", AS, "riscv64-linux-gnu-ld"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    src, obj, exe = workdir / "user.S", workdir / "user.o", workdir / "user"
    src.write_text("\n".join([".option norelax"] + lines) + "\n")
    subprocess.run([AS, f"-march={march}", "-o", str(obj), str(src)], check=True, capture_output=True, timeout=120)
    subprocess.run(["riscv64-linux-gnu-ld", "-static", "-o", str(exe), str(obj)],
                   check=True, capture_output=True, timeout=120)
    return subprocess.run(["qemu-riscv64", str(exe)], check=True, capture_output=True, timeout=120).stdout
