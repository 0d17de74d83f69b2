"""Builds the riscv64 test guests from source with Debian's gcc-riscv64-linux-gnu.

A guest is ``NAME.S`` (assembly, linked with rt.S) or ``NAME.c`` (freestanding C,
linked with crt.S, rt.S and lib.c).  Results are cached under
tests/guests/riscv/_build/, keyed by a hash of the sources, flags and
compiler version; builds are published with an atomic rename.

Use:  python tests/guests/riscv/build.py [NAME...]   (prints ELF paths)
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

GUEST_DIR = Path(__file__).resolve().parent
BUILD_DIR = GUEST_DIR / "_build"
LINKER_SCRIPT = GUEST_DIR / "link.ld"
CC = "riscv64-linux-gnu-gcc"
CFLAGS = ("-march=rv64imac_zicsr_zifencei", "-mabi=lp64", "-mcmodel=medany", "-fno-pic", "-no-pie",
          "-nostdlib", "-static", "-ffreestanding", "-fno-builtin", "-O2",
          "-Wl,--build-id=none", "-Wl,--no-warn-rwx-segments", "-Wa,--fatal-warnings")
RUNTIME = ("rt.S",)
C_RUNTIME = ("crt.S", "rt.S", "lib.c", "lib.h")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_DEFINE_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")


class GuestBuildError(RuntimeError):
    """A guest could not be built (unknown name, missing compiler, compile error)."""


def available_guests() -> list[str]:
    skip = {"rt", "crt", "lib"}
    return sorted(p.stem for p in list(GUEST_DIR.glob("*.S")) + list(GUEST_DIR.glob("*.c"))
                  if p.stem not in skip)


@functools.lru_cache(maxsize=None)
def _compiler_identity() -> str:
    try:
        out = subprocess.run([CC, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise GuestBuildError(f"cannot run {CC} (apt-get install gcc-riscv64-linux-gnu): {exc}") from exc
    return out.splitlines()[0]


def _sources(name: str) -> list[Path]:
    if not _NAME_RE.match(name) or name in ("rt", "crt", "lib"):
        raise GuestBuildError(f"invalid guest name {name!r}")
    asm, c = GUEST_DIR / f"{name}.S", GUEST_DIR / f"{name}.c"
    if asm.is_file():
        return [asm] + [GUEST_DIR / r for r in RUNTIME]
    if c.is_file():
        return [GUEST_DIR / r for r in C_RUNTIME] + [c]
    raise GuestBuildError(f"unknown guest {name!r}; available: {', '.join(available_guests())}")


def build_guest(name: str, build_dir: Path | None = None, defines: dict[str, int] | None = None) -> Path:
    """Path of guest ``name``'s ELF, building it when the cache is stale.

    ``defines`` become ``-DNAME=value`` (e.g. ``{"REPEAT": 64}`` for the bench's workloads).
    """
    sources = _sources(name)
    flags = list(CFLAGS)
    for key, value in sorted((defines or {}).items()):
        if not _DEFINE_RE.match(key) or not isinstance(value, int) or isinstance(value, bool):
            raise GuestBuildError(f"invalid define {key}={value!r}")
        flags.append(f"-D{key}={value}")
    h = hashlib.sha256(_compiler_identity().encode() + "\0".join(flags).encode())
    for p in sources + [LINKER_SCRIPT]:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    out_dir = Path(build_dir) if build_dir is not None else BUILD_DIR
    target = out_dir / f"{name}-{h.hexdigest()[:16]}.elf"
    if target.is_file():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out_dir))
    try:
        elf = tmp / f"{name}.elf"
        cmd = [CC, *flags, "-I", str(GUEST_DIR), "-T", str(LINKER_SCRIPT), "-o", str(elf),
               *[str(s) for s in sources if s.suffix != ".h"]]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as exc:
            raise GuestBuildError(f"cannot run {CC}: {exc}") from exc
        if proc.returncode != 0:
            raise GuestBuildError(f"building {name} failed:\n{proc.stderr.strip()}")
        os.replace(elf, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build kvmpy's riscv64 test guests and print their paths.")
    ap.add_argument("names", nargs="*", help="guests (default: all): " + ", ".join(available_guests()))
    args = ap.parse_args(argv)
    status = 0
    for name in args.names or available_guests():
        try:
            print(build_guest(name))
        except GuestBuildError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
