"""Multiboot v1 loader: ELF32 and a.out-kludge kernels, with the boot information QEMU's ``-kernel`` gives.

The same guest binary must behave the same under kvmpy and QEMU, so the
multiboot information mirrors what QEMU and its multiboot option ROM leave in
memory: the info block at 0x9500, the e820 memory map at 0x9000, mem_lower and
mem_upper taken from that map, and ``"<kernel path> <append>"`` as the command
line, stored after the kernel image with the boot-loader name and module list.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path

from kvmpy.loader.e820 import E820_RAM, E820Entry
from kvmpy.loader.elf import ELFCLASS64, EM_386, EM_X86_64, is_elf, parse_elf
from kvmpy.loader.errors import LoaderError
from kvmpy.loader.files import read_boot_file
from kvmpy.memory.guest_memory import GuestMemory, GuestMemoryError

log = logging.getLogger(__name__)

MAGIC = 0x1BADB002
BOOTLOADER_MAGIC = 0x2BADB002
HEADER_SEARCH = 8192
FLAG_AOUT_KLUDGE = 1 << 16
FLAG_VIDEO = 1 << 2

ADDR_E820_MAP = 0x9000
ADDR_MBI = 0x9500
MBI_SIZE = 88
MOD_SIZE = 16
PAGE = 4096

MBI_FLAGS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 3) | (1 << 6) | (1 << 9)
BOOT_DEVICE = 0x8000FFFF



@dataclass(frozen=True)
class MultibootHeader:
    offset: int
    flags: int
    header_addr: int = 0
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0


@dataclass(frozen=True)
class BootEntry:
    """Where and how the boot vCPU starts."""

    entry: int
    eax: int
    ebx: int
    load_low: int
    load_high: int


def _page_align(n: int) -> int:
    return (n + PAGE - 1) & ~(PAGE - 1)


def find_header(image: bytes) -> MultibootHeader | None:
    limit = min(len(image), HEADER_SEARCH) - 12  # last offset where a whole 12-byte header fits
    for off in range(0, limit + 1, 4):  # empty when the image is shorter than a header
        magic, flags, checksum = struct.unpack_from("<III", image, off)
        if magic == MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            if flags & FLAG_AOUT_KLUDGE:
                if off + 32 > len(image):
                    return None
                return MultibootHeader(off, flags, *struct.unpack_from("<5I", image, off + 12))
            return MultibootHeader(off, flags)
    return None


def is_multiboot(path: Path) -> bool:
    with open(path, "rb") as f:
        return find_header(f.read(HEADER_SEARCH)) is not None


@dataclass(frozen=True)
class _Segment:
    addr: int
    data: bytes
    memsz: int


def _elf_segments(path: Path, image: bytes) -> tuple[list[_Segment], int]:
    if not is_elf(image):
        raise LoaderError(f"{path}: multiboot header asks for ELF loading, but the file is not ELF")
    if image[4:5] == bytes((ELFCLASS64,)) or image[18:20] == struct.pack("<H", EM_X86_64):
        raise LoaderError(f"{path}: cannot load an x86-64 multiboot image; give a 32-bit one")
    elf = parse_elf(image, str(path), machine=EM_386, elf_class=32)
    entry = elf.entry
    segments = []
    for s in elf.segments:
        if entry - s.vaddr < s.memsz and s.vaddr != s.paddr:
            entry = entry - s.vaddr + s.paddr  # an entry given as a virtual address
        segments.append(_Segment(s.paddr, bytes(elf.segment_bytes(s)), s.memsz))
    return segments, entry


def _aout_segments(path: Path, image: bytes, h: MultibootHeader) -> tuple[list[_Segment], int]:
    if h.header_addr < h.load_addr:
        raise LoaderError(f"{path}: invalid multiboot load_addr (above header_addr)")
    text_offset = h.offset - (h.header_addr - h.load_addr)
    if text_offset < 0:
        raise LoaderError(f"{path}: multiboot header_addr/load_addr put the image before the file start")
    if h.load_end_addr:
        if h.load_end_addr < h.load_addr:
            raise LoaderError(f"{path}: invalid multiboot load_end_addr")
        load_size = h.load_end_addr - h.load_addr
    else:
        load_size = len(image) - text_offset
    if text_offset + load_size > len(image):
        raise LoaderError(f"{path}: multiboot load range runs past the end of the file")
    if h.bss_end_addr:
        if h.bss_end_addr < h.load_addr + load_size:
            raise LoaderError(f"{path}: invalid multiboot bss_end_addr")
        mem_size = h.bss_end_addr - h.load_addr
    else:
        mem_size = load_size
    return [_Segment(h.load_addr, image[text_offset:text_offset + load_size], mem_size)], h.entry_addr


def load_multiboot(path: Path, append: str, memory: GuestMemory, e820: list[E820Entry],
                   modules: list[str] | None = None, kernel_name: str | None = None) -> BootEntry:
    """Load ``path`` and write the multiboot information. ``modules`` are "file args" strings."""
    image = read_boot_file(path, "kernel")
    header = find_header(image)
    if header is None:
        raise LoaderError(f"{path}: no multiboot header in the first {HEADER_SEARCH} bytes")
    if header.flags & FLAG_VIDEO:
        log.warning("%s: the kernel asks for a video mode; kvmpy has no framebuffer", path)
    if header.flags & FLAG_AOUT_KLUDGE:
        segments, entry = _aout_segments(path, image, header)
    else:
        segments, entry = _elf_segments(path, image)
    low = min(s.addr for s in segments)
    high = max(s.addr + s.memsz for s in segments)
    try:
        for s in segments:
            memory.write(s.addr, s.data)
            if s.memsz > len(s.data):
                memory.fill(s.addr + len(s.data), s.memsz - len(s.data))
        mbi_phys = _write_info(memory, low, high, e820, kernel_name or str(path), append, modules or [])
    except GuestMemoryError as exc:
        raise LoaderError(f"{path}: does not fit in guest RAM ({exc})") from None
    log.info("multiboot: loaded %s at %#x-%#x, entry %#x", path, low, high, entry)
    return BootEntry(entry, BOOTLOADER_MAGIC, mbi_phys, low, high)


def _write_info(memory: GuestMemory, low: int, high: int, e820: list[E820Entry], kernel_name: str,
                append: str, modules: list[str]) -> int:
    bootloader = b"kvmpy\0"
    kcmdline = f"{kernel_name} {append}".encode() + b"\0"
    mod_cmdlines = [m.encode() + b"\0" for m in modules]
    # Same layout as QEMU: after the page-aligned kernel come the module list,
    # the command lines and the boot-loader name; modules follow page-aligned.
    offset_mbinfo = _page_align(high - low)
    offset_cmdlines = offset_mbinfo + len(modules) * MOD_SIZE
    cursor = offset_cmdlines
    mod_cmd_addrs = []
    for c in mod_cmdlines:
        memory.write(low + cursor, c)
        mod_cmd_addrs.append(low + cursor)
        cursor += len(c)
    kcmd_addr = low + cursor
    memory.write(kcmd_addr, kcmdline)
    cursor += len(kcmdline)
    loader_addr = low + cursor
    memory.write(loader_addr, bootloader)
    cursor += len(bootloader)
    mod_offset = _page_align(cursor)
    for i, spec in enumerate(modules):
        file_name = spec.split(" ", 1)[0]
        data = read_boot_file(Path(file_name), "multiboot module")
        start = low + mod_offset
        memory.write(start, data)
        memory.write(low + offset_mbinfo + i * MOD_SIZE,
                     struct.pack("<IIII", start, start + len(data), mod_cmd_addrs[i], 0))
        mod_offset = _page_align(mod_offset + len(data))

    mmap = b"".join(e.pack_multiboot() for e in e820)
    memory.write(ADDR_E820_MAP, mmap)
    lower = next((e for e in e820 if e.addr == 0 and e.type == E820_RAM), None)
    upper = next((e for e in e820 if e.addr == 0x100000 and e.type == E820_RAM), None)
    mbi = bytearray(MBI_SIZE)
    struct.pack_into("<IIIIIII", mbi, 0, MBI_FLAGS, (lower.size if lower else 0) // 1024,
                     (upper.size if upper else 0) // 1024, BOOT_DEVICE, kcmd_addr, len(modules),
                     low + offset_mbinfo)
    struct.pack_into("<II", mbi, 44, len(mmap), ADDR_E820_MAP)
    struct.pack_into("<I", mbi, 64, loader_addr)
    memory.write(ADDR_MBI, bytes(mbi))
    return ADDR_MBI
