"""A GRUB rescue ISO for the firmware tests, built with grub-mkrescue and cached under ~/.cache/kvmpy/grub.

The ISO (hybrid: El Torito for a CD, an MBR for a disk) holds Debian's i386-pc GRUB and a
grub.cfg that keeps GRUB at its menu (``timeout=-1``), from where ``c`` opens its command
line. ``mkrescue_iso`` makes such an ISO from any grub.cfg and files (tests/firmware/linux_iso.py
adds a kernel and an initramfs). The cache file is named after a hash of everything the build
depends on: the grub.cfg text, the files, the grub-mkrescue options, and the GRUB and xorriso
builds installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

GRUB_CFG = """\
set timeout=-1
menuentry "kvmpy GRUB test" {
  echo kvmpy-grub-entry
}
"""
MKRESCUE_ARGS = ["--fonts=", "--locales=", "--themes="]  # GRUB's text console needs none of them
GRUB_DIR = Path("/usr/lib/grub/i386-pc")
TOOLS = ("grub-mkrescue", "xorriso", "mformat")


def missing_tools() -> list[str]:
    """What grub-mkrescue needs and is not installed (scripts/setup installs them)."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    return missing + ([] if (GRUB_DIR / "kernel.img").is_file() else ["grub-pc-bin"])


def _inputs_key(grub_cfg: str, files: dict[str, Path]) -> str:
    h = hashlib.sha256()
    h.update(grub_cfg.encode())
    h.update("\0".join(MKRESCUE_ARGS).encode())
    for cmd in (["grub-mkrescue", "--version"], ["xorriso", "-version"]):
        h.update(subprocess.run(cmd, capture_output=True, check=True).stdout.splitlines()[0])
    for name in ("kernel.img", "moddep.lst", "normal.mod", "iso9660.mod"):
        h.update(hashlib.sha256((GRUB_DIR / name).read_bytes()).digest())
    for dest, src in sorted(files.items()):  # a cached file changes only with its size and mtime
        st = src.stat()
        h.update(f"\0{dest}\0{src.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kvmpy" / "grub"


def mkrescue_iso(name: str, grub_cfg: str, files: dict[str, Path] | None = None, build: bool = True) -> Path:
    """The cached ISO ``name``-KEY.iso with ``grub_cfg`` as /boot/grub/grub.cfg and ``files`` (path in the ISO ->
    host file) beside it, built first if missing (``build=False``: FileNotFoundError instead)."""
    files = files or {}
    cache = cache_dir()
    iso = cache / f"{name}-{_inputs_key(grub_cfg, files)}.iso"
    if iso.is_file():
        return iso
    if not build:
        raise FileNotFoundError(f"{iso} was not built")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        root = Path(tmp) / "root"
        (root / "boot" / "grub").mkdir(parents=True)
        (root / "boot" / "grub" / "grub.cfg").write_text(grub_cfg)
        for dest, src in files.items():
            (root / dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, root / dest)
        out = Path(tmp) / f"{name}.iso"
        subprocess.run(["grub-mkrescue", *MKRESCUE_ARGS, "-o", str(out), str(root)],
                       check=True, capture_output=True, timeout=300)
        os.replace(out, iso)  # atomic: a concurrent run sees the whole ISO or none
    return iso


def grub_iso() -> Path:
    """The cached ISO, built first if no ISO for these inputs exists."""
    return mkrescue_iso("grub", GRUB_CFG)
