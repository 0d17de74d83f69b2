"""Builds the tiny x86 test guests from source into multiboot v1 ELF32 kernels.

Owns the recipe (gcc -m32 for the preprocessed GNU as sources, ld -m elf_i386 with
guest.ld) and the on-disk cache under tests/guests/_build/, keyed by a hash of the
sources, flags and tool versions. Builds go to a private temporary directory and are
published with an atomic rename, so concurrent builders never see a partial file.

No multilib packages are needed: the guests are freestanding assembly, linked by ld
directly, with no libc/libgcc.

Use:  from tests.guests.build import build_guest   (repository root on sys.path)
      python -m tests.guests.build hello smp        (prints the ELF paths)
      python tests/guests/build.py hello
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
LINKER_SCRIPT = GUEST_DIR / "guest.ld"
SHARED_SOURCES = ("guest.h", "lib.S", "lib64.S")

CC = "gcc"
LD = "ld"
CFLAGS = ("-m32", "-nostdlib", "-ffreestanding", "-fno-pic", "-Wa,--fatal-warnings")
LDFLAGS = ("-m", "elf_i386", "-nostdlib", "-static", "-z", "max-page-size=0x1000",
           "--build-id=none", "--no-warn-rwx-segments")

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class GuestBuildError(RuntimeError):
    """A guest could not be built (unknown name, missing tool, assembler/linker error)."""


def available_guests() -> list[str]:
    """Names of the guests that have a source file here."""
    return sorted(p.stem for p in GUEST_DIR.glob("*.S") if p.stem not in ("lib", "lib64"))


@functools.lru_cache(maxsize=None)
def _tool_identity() -> str:
    """Versions of the compiler and linker, part of the cache key."""
    parts = []
    for cmd in ((CC, "--version"), (LD, "--version")):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError) as exc:
            raise GuestBuildError(f"cannot run {cmd[0]}: {exc}") from exc
        parts.append(out.splitlines()[0] if out else cmd[0])
    return "\n".join(parts)


def _sources(name: str) -> list[Path]:
    if not _NAME_RE.match(name):
        raise GuestBuildError(f"invalid guest name {name!r}")
    main = GUEST_DIR / f"{name}.S"
    if name in ("lib", "lib64") or not main.is_file():
        raise GuestBuildError(
            f"unknown guest {name!r}; available: {', '.join(available_guests())}")
    return [GUEST_DIR / s for s in SHARED_SOURCES] + [main]


def _cache_key(name: str, sources: list[Path]) -> str:
    h = hashlib.sha256()
    h.update(_tool_identity().encode())
    h.update("\0".join(CFLAGS + LDFLAGS).encode())
    for path in sources + [LINKER_SCRIPT]:
        h.update(path.name.encode() + b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _run(cmd: list[str], cwd: Path) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except OSError as exc:
        raise GuestBuildError(f"cannot run {cmd[0]}: {exc}") from exc
    if proc.returncode != 0:
        raise GuestBuildError(f"{' '.join(cmd)} failed:\n{proc.stderr.strip()}")


def build_guest(name: str, build_dir: Path | None = None) -> Path:
    """Return the path of guest ``name``'s ELF, building it if the cache is stale."""
    sources = _sources(name)
    out_dir = Path(build_dir) if build_dir is not None else BUILD_DIR
    target = out_dir / f"{name}-{_cache_key(name, sources)}.elf"
    if target.is_file():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out_dir))
    try:
        objects = []
        for src in sources:
            if src.suffix != ".S":
                continue
            obj = tmp / f"{src.stem}.o"
            _run([CC, *CFLAGS, "-I", str(GUEST_DIR), "-c", str(src), "-o", str(obj)], tmp)
            objects.append(str(obj))
        elf = tmp / f"{name}.elf"
        _run([LD, *LDFLAGS, "-T", str(LINKER_SCRIPT), "-o", str(elf), *objects], tmp)
        os.replace(elf, target)     # atomic: a concurrent builder wrote the same bytes
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build kvmpy's x86 test guests (multiboot v1 ELF32) and print their paths.")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="guests to build (default: all): " + ", ".join(available_guests()))
    parser.add_argument("--build-dir", type=Path, default=None,
                        help=f"output directory (default: {BUILD_DIR})")
    parser.add_argument("--link", action="store_true",
                        help="also publish each as <build dir>/<name>.elf (a stable path for configs/)")
    args = parser.parse_args(argv)
    names = args.names or available_guests()
    status = 0
    for name in names:
        try:
            path = build_guest(name, args.build_dir)
            if args.link:
                stable = path.with_name(f"{name}.elf")
                tmp = stable.with_name(f".{name}.elf.{os.getpid()}")
                shutil.copyfile(path, tmp)
                os.replace(tmp, stable)  # atomic, like the build itself
                path = stable
            print(path)
        except GuestBuildError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
