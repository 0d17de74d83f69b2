"""ELF64 kernel images: loadable segments and the Xen PVH entry note of an x86-64 vmlinux.

Only what booting needs: the PT_LOAD segments (placed at their physical
addresses) and the ``XEN_ELFNOTE_PHYS32_ENTRY`` note that marks a kernel as
PVH-bootable and gives its 32-bit entry point. Every offset and size is checked
against the file, so a corrupt image gives a LoaderError, never a crash.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kvmpy.loader.errors import LoaderError

ELF_MAGIC = b"\x7fELF"
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
XEN_ELFNOTE_PHYS32_ENTRY = 18
MAX_PHYS = 1 << 52


@dataclass(frozen=True)
class ElfSegment:
    paddr: int
    offset: int
    filesz: int
    memsz: int


@dataclass(frozen=True)
class Elf64Image:
    entry: int
    segments: tuple[ElfSegment, ...]
    pvh_entry: int | None

    @property
    def low(self) -> int:
        return min(s.paddr for s in self.segments)

    @property
    def high(self) -> int:
        return max(s.paddr + s.memsz for s in self.segments)


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def _notes(data: bytes, offset: int, size: int) -> list[tuple[bytes, int, bytes]]:
    out = []
    pos, end = offset, offset + size
    while pos + 12 <= end:
        namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
        name_end = pos + 12 + namesz
        desc_start = pos + 12 + ((namesz + 3) & ~3)
        desc_end = desc_start + descsz
        if desc_end > end:
            break  # a truncated note: ignore the rest rather than read past the segment
        out.append((data[pos + 12:name_end].rstrip(b"\0"), ntype, data[desc_start:desc_end]))
        pos = desc_start + ((descsz + 3) & ~3)
    return out


def parse_elf64(data: bytes, name: str = "kernel") -> Elf64Image:
    """Parse an x86-64 ELF executable; raises LoaderError for anything malformed."""
    if len(data) < 64 or not is_elf(data):
        raise LoaderError(f"{name}: not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise LoaderError(f"{name}: not a little-endian ELF64 file (a 32-bit kernel needs a multiboot header)")
    e_machine, = struct.unpack_from("<H", data, 18)
    if e_machine != EM_X86_64:
        raise LoaderError(f"{name}: ELF machine {e_machine} is not x86-64")
    e_entry, e_phoff = struct.unpack_from("<QQ", data, 24)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
    if e_phentsize < 56 or e_phnum == 0 or e_phnum > 256 or e_phoff + e_phnum * e_phentsize > len(data):
        raise LoaderError(f"{name}: bad ELF program header table")
    segments = []
    pvh_entry = None
    for i in range(e_phnum):
        p_type, _flags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz = struct.unpack_from(
            "<IIQQQQQ", data, e_phoff + i * e_phentsize)
        if p_offset + p_filesz > len(data) or p_offset > len(data):
            raise LoaderError(f"{name}: ELF segment {i} lies outside the file")
        if p_type == PT_NOTE:
            for nname, ntype, desc in _notes(data, p_offset, p_filesz):
                if nname == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY and len(desc) in (4, 8):
                    pvh_entry = int.from_bytes(desc, "little")
        elif p_type == PT_LOAD and p_memsz:
            if p_filesz > p_memsz or p_paddr + p_memsz > MAX_PHYS:
                raise LoaderError(f"{name}: ELF segment {i} has impossible sizes or addresses")
            segments.append(ElfSegment(p_paddr, p_offset, p_filesz, p_memsz))
    if not segments:
        raise LoaderError(f"{name}: ELF file has no loadable segments")
    return Elf64Image(e_entry, tuple(segments), pvh_entry)
