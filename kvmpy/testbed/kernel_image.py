"""The uncompressed vmlinux of a bzImage, so L1 boots through PVH without decompressing.

Under TCG the kernel's own xz decompressor costs ~3.5 s of every L1 boot; QEMU loads
an ELF vmlinux with a PVH entry note directly. The vmlinux is extracted once from the
bzImage payload (located by the setup header's payload_offset/payload_length) and
cached next to the unpacked package. Payloads Python cannot decompress (LZ4, zstd...)
or an ELF without the PVH note make the caller fall back to the bzImage.
"""

from __future__ import annotations

import gzip
import io
import logging
import lzma
import os
import struct
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

_XEN_ELFNOTE_PHYS32_ENTRY = 18
_MAX_VMLINUX = 512 << 20  # refuse to inflate a payload past this (hostile or corrupt input)


class KernelImageError(ValueError):
    """The bzImage cannot be turned into a PVH-bootable vmlinux."""


def bzimage_payload(image: bytes) -> bytes:
    """The compressed kernel inside a bzImage, as located by its setup header."""
    if len(image) < 0x250 or image[0x202:0x206] != b"HdrS":
        raise KernelImageError("not a bzImage (no HdrS setup header)")
    version, = struct.unpack_from("<H", image, 0x206)
    if version < 0x208:
        raise KernelImageError(f"boot protocol {version:#x} predates payload_offset")
    setup_sects = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + offset
    if length == 0 or start + length > len(image):
        raise KernelImageError("payload_offset/payload_length point outside the file")
    return image[start:start + length]


def _inflate(payload: bytes) -> bytes:
    if payload.startswith(b"\xfd7zXZ\x00"):
        dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        out = dec.decompress(payload, max_length=_MAX_VMLINUX)
        if not dec.eof:
            raise KernelImageError("xz payload is truncated or inflates past the size limit")
        return out
    if payload.startswith(b"\x1f\x8b"):
        with gzip.GzipFile(fileobj=io.BytesIO(payload)) as fh:
            out = fh.read(_MAX_VMLINUX + 1)
        if len(out) > _MAX_VMLINUX:
            raise KernelImageError("gzip payload inflates past the size limit")
        return out
    raise KernelImageError(f"payload compression with magic {payload[:4].hex()} is not supported")


def has_pvh_note(elf: bytes) -> bool:
    """True if the ELF64 file carries a Xen PHYS32_ENTRY note (what QEMU's PVH loader needs)."""
    if len(elf) < 64 or elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return False
    phoff, = struct.unpack_from("<Q", elf, 32)
    phentsize, phnum = struct.unpack_from("<HH", elf, 54)
    if phentsize < 56 or phoff + phentsize * phnum > len(elf):
        return False
    for i in range(phnum):
        p_type, _, p_offset = struct.unpack_from("<IIQ", elf, phoff + i * phentsize)
        p_filesz, = struct.unpack_from("<Q", elf, phoff + i * phentsize + 32)
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, min(p_offset + p_filesz, len(elf))
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == _XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False


def pvh_vmlinux(bzimage: Path, cache_dir: Path) -> Path:
    """Return a cached vmlinux for ``bzimage`` (extracting it on first use)."""
    st = bzimage.stat()
    out = cache_dir / f"{bzimage.name}.{st.st_size}-{st.st_mtime_ns}.vmlinux"
    if out.exists():
        return out
    elf = _inflate(bzimage_payload(bzimage.read_bytes()))
    if not has_pvh_note(elf):
        raise KernelImageError(f"{bzimage.name}'s vmlinux has no PVH entry note")
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
