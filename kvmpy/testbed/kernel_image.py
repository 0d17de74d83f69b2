"""The uncompressed vmlinux of a bzImage, cached, so L1 boots through PVH without decompressing.

Under TCG the kernel's own xz decompressor costs ~3.5 s of every L1 boot; QEMU loads
an ELF vmlinux with a PVH entry note directly. The payload is extracted and inflated
by kvmpy's loader (:mod:`kvmpy.loader.bzimage`, the one bzImage payload extractor),
checked for the PVH note with :mod:`kvmpy.loader.elf`, and cached next to the
unpacked package. A payload that cannot be inflated, or an ELF without the PVH note,
makes the caller fall back to booting the bzImage.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from kvmpy.loader.bzimage import decompress_payload, parse_bzimage
from kvmpy.loader.elf import parse_elf64
from kvmpy.loader.errors import LoaderError

log = logging.getLogger(__name__)

MAX_VMLINUX = 512 << 20  # refuse to inflate a payload past this (hostile or corrupt input)


class KernelImageError(ValueError):
    """The bzImage cannot be turned into a PVH-bootable vmlinux."""


def pvh_elf(bzimage: bytes, name: str = "kernel") -> bytes:
    """The vmlinux ELF inside ``bzimage``; raises KernelImageError unless it has a PVH entry note."""
    try:
        elf = decompress_payload(parse_bzimage(bzimage, name).payload(), limit=MAX_VMLINUX)
        if parse_elf64(elf, f"{name} (decompressed payload)").pvh_entry is None:
            raise KernelImageError(f"{name}'s vmlinux has no PVH entry note")
    except LoaderError as exc:
        raise KernelImageError(str(exc)) from None
    return elf


def pvh_vmlinux(bzimage: Path, cache_dir: Path) -> Path:
    """Return a cached vmlinux for ``bzimage`` (extracting it on first use)."""
    st = bzimage.stat()
    out = cache_dir / f"{bzimage.name}.{st.st_size}-{st.st_mtime_ns}.vmlinux"
    if out.exists():
        return out
    elf = pvh_elf(bzimage.read_bytes(), bzimage.name)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tmp-vmlinux-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(elf)
        os.replace(tmp, out)  # atomic: concurrent extractors write the same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("extracted %s for PVH boot", out)
    return out
