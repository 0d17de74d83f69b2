"""kvmpy's one ELF reader: ELF32 and ELF64 little-endian files, for every loader and board.

It gives what booting a kernel needs and nothing more: the header (class,
machine, type, entry), the PT_LOAD segments (placed by physical address), the
notes of the PT_NOTE segments (the Xen PVH entry note of an x86-64 vmlinux) and,
on demand, the symbol table (the riscv board looks up HTIF's ``tohost``).

The file is hostile until proven otherwise: every table, segment, note, section
and symbol is checked against the file size and against fixed limits before it
is used, and sizes are checked for overlap, so a truncated, corrupt or crafted
file gives one ``LoaderError`` that names the file and the problem, never an
``IndexError``, ``struct.error``, a huge allocation or a hang.

Users: ``loader/linux.py`` (PVH vmlinux), ``loader/multiboot.py`` (ELF32
kernels), ``boards/riscv_virt.py`` (riscv64 programs) and the test bed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from kvmpy.loader.errors import LoaderError
from kvmpy.loader.files import read_boot_file

ELF_MAGIC = b"\x7fELF"
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
ET_EXEC = 2
EM_386 = 3
EM_X86_64 = 62
EM_RISCV = 243
MACHINE_NAMES = {EM_386: "i386", EM_X86_64: "x86-64", EM_RISCV: "RISC-V"}
PT_LOAD = 1
PT_NOTE = 4
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHN_UNDEF = 0
XEN_ELFNOTE_PHYS32_ENTRY = 18
MAX_PHYS = 1 << 52          # x86-64's physical address width

MAX_PHNUM = 1024            # real kernels have a handful; more is corrupt or hostile
MAX_NOTES = 1024            # per PT_NOTE segment
MAX_SYMBOLS = 1 << 20
MAX_NAME = 4096             # longest symbol name read


@dataclass(frozen=True)
class _Layout:
    """Where the fields sit for one ELF class (facts from the System V ABI)."""

    bits: int
    ehdr_size: int
    ehdr: str               # e_type .. e_shstrndx, from offset 16
    phdr_size: int
    phdr: str
    shdr_size: int
    shdr: str
    sym_size: int
    sym: str


_LAYOUTS = {
    ELFCLASS32: _Layout(32, 52, "<HHIIIIIHHHHHH", 32, "<IIIIIIII", 40, "<IIIIIIIIII", 16, "<IIIBBH"),
    ELFCLASS64: _Layout(64, 64, "<HHIQQQIHHHHHH", 56, "<IIQQQQQQ", 64, "<IIQQQQIIQQ", 24, "<IBBHQQ"),
}


@dataclass(frozen=True)
class ElfSegment:
    """One PT_LOAD segment: ``filesz`` bytes from ``offset`` in the file, zero-filled up to ``memsz``."""

    paddr: int
    offset: int
    filesz: int
    memsz: int
    vaddr: int = 0
    flags: int = 0


@dataclass(frozen=True)
class ElfNote:
    name: bytes             # without the terminating NUL, e.g. b"Xen", b"GNU"
    type: int
    desc: bytes


@dataclass(frozen=True)
class ElfSection:
    type: int
    offset: int
    size: int
    link: int
    entsize: int


@dataclass(frozen=True)
class ElfImage:
    """A parsed ELF file. ``data`` is the whole file; segments index into it."""

    name: str
    elf_class: int          # 32 or 64
    type: int
    machine: int
    entry: int
    segments: tuple[ElfSegment, ...]
    notes: tuple[ElfNote, ...] = ()
    sections: tuple[ElfSection, ...] = field(default=(), repr=False)
    data: bytes = field(default=b"", repr=False, compare=False)

    @property
    def low(self) -> int:
        return min(s.paddr for s in self.segments)

    @property
    def high(self) -> int:
        return max(s.paddr + s.memsz for s in self.segments)

    @property
    def pvh_entry(self) -> int | None:
        """The 32-bit entry of the Xen PVH boot ABI (``XEN_ELFNOTE_PHYS32_ENTRY``), if the kernel has one."""
        for note in self.notes:
            if note.name == b"Xen" and note.type == XEN_ELFNOTE_PHYS32_ENTRY and len(note.desc) in (4, 8):
                return int.from_bytes(note.desc, "little")
        return None

    def segment_bytes(self, seg: ElfSegment) -> memoryview:
        """The file part of ``seg`` (``filesz`` bytes; the rest up to ``memsz`` is zero)."""
        return memoryview(self.data)[seg.offset:seg.offset + seg.filesz]

    @cached_property
    def symbols(self) -> dict[str, int]:
        """Defined symbols of every SHT_SYMTAB section: name -> value (the first definition wins).

        Read on first use (a vmlinux has ~10^5 symbols and booting it needs none);
        a corrupt table raises ``LoaderError`` then.
        """
        return _read_symbols(self)


# Older name, from when the reader knew only ELF64 (kept for existing callers).
Elf64Image = ElfImage


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def parse_elf(data: bytes, name: str = "kernel", *, machine: int | None = None,
              elf_class: int | None = None, exec_only: bool = False,
              max_addr: int | None = None) -> ElfImage:
    """Parse and check an ELF file; ``machine`` (EM_*), ``elf_class`` (32/64) and
    ``exec_only`` (ET_EXEC) restrict what is accepted. ``max_addr`` bounds every
    segment's end (default: the class's address space). Raises ``LoaderError``."""
    if not is_elf(data):
        raise LoaderError(f"{name}: not an ELF file")
    if len(data) < 16:
        raise LoaderError(f"{name}: truncated ELF header")
    if data[4] not in _LAYOUTS:
        raise LoaderError(f"{name}: unknown ELF class {data[4]}")
    lay = _LAYOUTS[data[4]]
    if data[5] != ELFDATA2LSB:
        raise LoaderError(f"{name}: not a little-endian ELF file")
    if elf_class is not None and lay.bits != elf_class:
        raise LoaderError(f"{name}: a {lay.bits}-bit ELF file, but a {elf_class}-bit one is needed")
    if len(data) < lay.ehdr_size:
        raise LoaderError(f"{name}: truncated ELF header")
    (e_type, e_machine, _version, entry, phoff, shoff, _flags, _ehsize, phentsize, phnum,
     shentsize, shnum, _shstrndx) = struct.unpack_from(lay.ehdr, data, 16)
    if machine is not None and e_machine != machine:
        raise LoaderError(f"{name}: ELF machine {e_machine} is not {MACHINE_NAMES.get(machine, machine)}")
    if exec_only and e_type != ET_EXEC:
        raise LoaderError(f"{name}: ELF type {e_type} is not an executable (ET_EXEC)")
    limit = (1 << lay.bits) if max_addr is None else max_addr
    segments, notes = _program_headers(data, name, lay, phoff, phentsize, phnum, limit)
    sections = _section_headers(data, name, lay, shoff, shentsize, shnum)
    return ElfImage(name, lay.bits, e_type, e_machine, entry, segments, notes, sections, data)


def parse_elf64(data: bytes, name: str = "kernel") -> ElfImage:
    """An x86-64 ELF64 kernel (a vmlinux); the error for ELF32 points at multiboot."""
    if is_elf(data) and data[4:5] == bytes((ELFCLASS32,)):
        raise LoaderError(f"{name}: not a little-endian ELF64 file (a 32-bit kernel needs a multiboot header)")
    return parse_elf(data, name, machine=EM_X86_64, elf_class=64, max_addr=MAX_PHYS)


def read_elf(path: Path, what: str = "kernel", **limits) -> ElfImage:
    """Read ``path`` (bounded, see ``read_boot_file``) and ``parse_elf`` it with ``limits``."""
    return parse_elf(read_boot_file(path, what), str(path), **limits)


def _program_headers(data: bytes, name: str, lay: _Layout, phoff: int, phentsize: int, phnum: int,
                     limit: int) -> tuple[tuple[ElfSegment, ...], tuple[ElfNote, ...]]:
    if phnum == 0:
        raise LoaderError(f"{name}: ELF file has no program headers (no loadable segments)")
    if phentsize < lay.phdr_size or phoff + phnum * phentsize > len(data):
        raise LoaderError(f"{name}: the ELF program header table lies outside the file")
    if phnum > MAX_PHNUM:
        raise LoaderError(f"{name}: {phnum} ELF program headers (at most {MAX_PHNUM})")
    segments: list[ElfSegment] = []
    notes: list[ElfNote] = []
    for i in range(phnum):
        fields = struct.unpack_from(lay.phdr, data, phoff + i * phentsize)
        if lay.bits == 64:
            p_type, p_flags, off, vaddr, paddr, filesz, memsz, align = fields
        else:
            p_type, off, vaddr, paddr, filesz, memsz, p_flags, align = fields
        if off > len(data) or off + filesz > len(data):
            raise LoaderError(f"{name}: ELF segment {i} lies outside the file")
        if p_type == PT_NOTE:
            notes.extend(_notes(data, name, off, filesz, 8 if align == 8 else 4))
        elif p_type == PT_LOAD and memsz:
            if filesz > memsz:
                raise LoaderError(f"{name}: ELF segment {i} has more file bytes ({filesz:#x}) "
                                  f"than memory bytes ({memsz:#x})")
            if paddr + memsz > limit:
                raise LoaderError(f"{name}: ELF segment {i} at {paddr:#x}+{memsz:#x} lies outside "
                                  f"the address space (ends above {limit:#x})")
            segments.append(ElfSegment(paddr, off, filesz, memsz, vaddr, p_flags))
    if not segments:
        raise LoaderError(f"{name}: ELF file has no loadable segments")
    ordered = sorted(segments, key=lambda s: s.paddr)
    for a, b in zip(ordered, ordered[1:]):
        if a.paddr + a.memsz > b.paddr:
            raise LoaderError(f"{name}: ELF segments at {a.paddr:#x}+{a.memsz:#x} and {b.paddr:#x} overlap")
    return tuple(segments), tuple(notes)


def _notes(data: bytes, name: str, offset: int, size: int, align: int) -> list[ElfNote]:
    """The notes of one PT_NOTE segment; a truncated last note is ignored, as Linux and QEMU do."""
    out: list[ElfNote] = []
    pos, end = offset, offset + size
    pad = align - 1
    while pos + 12 <= end:
        if len(out) >= MAX_NOTES:
            raise LoaderError(f"{name}: more than {MAX_NOTES} ELF notes in one segment")
        namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
        desc_start = pos + 12 + ((namesz + pad) & ~pad)
        desc_end = desc_start + descsz
        if desc_end > end:
            break
        out.append(ElfNote(bytes(data[pos + 12:pos + 12 + namesz]).rstrip(b"\0"), ntype,
                           bytes(data[desc_start:desc_end])))
        pos = desc_start + ((descsz + pad) & ~pad)
    return out


def _section_headers(data: bytes, name: str, lay: _Layout, shoff: int, shentsize: int,
                     shnum: int) -> tuple[ElfSection, ...]:
    if shoff == 0 or shnum == 0:
        return ()                # stripped of section headers: fine for loading
    if shentsize < lay.shdr_size or shoff + shnum * shentsize > len(data):
        raise LoaderError(f"{name}: the ELF section header table lies outside the file")
    out = []
    for i in range(shnum):
        (_name, sh_type, _flags, _addr, off, size, link, _info, _align,
         entsize) = struct.unpack_from(lay.shdr, data, shoff + i * shentsize)
        out.append(ElfSection(sh_type, off, size, link, entsize))
    return tuple(out)


def _read_symbols(img: ElfImage) -> dict[str, int]:
    lay = _LAYOUTS[ELFCLASS64 if img.elf_class == 64 else ELFCLASS32]
    data, name = img.data, img.name
    out: dict[str, int] = {}
    for i, sec in enumerate(img.sections):
        if sec.type != SHT_SYMTAB:
            continue
        if sec.entsize != lay.sym_size or sec.offset + sec.size > len(data):
            raise LoaderError(f"{name}: ELF symbol table (section {i}) lies outside the file or is malformed")
        if sec.size // lay.sym_size > MAX_SYMBOLS:
            raise LoaderError(f"{name}: ELF symbol table has more than {MAX_SYMBOLS} symbols")
        if sec.link >= len(img.sections) or img.sections[sec.link].type != SHT_STRTAB:
            raise LoaderError(f"{name}: ELF symbol table (section {i}) has no string table")
        strtab = img.sections[sec.link]
        if strtab.offset + strtab.size > len(data):
            raise LoaderError(f"{name}: ELF string table (section {sec.link}) lies outside the file")
        strings = data[strtab.offset:strtab.offset + strtab.size]
        table = memoryview(data)[sec.offset:sec.offset + sec.size - sec.size % lay.sym_size]
        for fields in struct.iter_unpack(lay.sym, table):
            if lay.bits == 64:
                name_off, _info, _other, shndx, value, _size = fields
            else:
                name_off, value, _size, _info, _other, shndx = fields
            if name_off == 0 or shndx == SHN_UNDEF:
                continue
            if name_off >= len(strings):
                raise LoaderError(f"{name}: ELF symbol name at {name_off:#x} lies outside its string table")
            stop = strings.find(b"\0", name_off, name_off + MAX_NAME)
            sym = strings[name_off:stop if stop >= 0 else name_off + MAX_NAME].decode("latin-1")
            out.setdefault(sym, value)
    return out
