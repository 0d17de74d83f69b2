"""Booting Linux directly: a bzImage through its 64-bit entry point, or an ELF vmlinux through PVH.

No BIOS runs. For a bzImage, kvmpy loads the protected-mode kernel at 1 MiB,
builds the zero page, a GDT and identity page tables for the low 4 GiB, and
starts the boot vCPU in 64-bit mode at ``load address + 0x200`` with RSI
pointing at the zero page. For an ELF vmlinux with a PVH note (or a bzImage
whose payload was decompressed on the host), the segments go to their
physical addresses and the vCPU starts in 32-bit protected mode at the PVH
entry with EBX pointing at an ``hvm_start_info``.

Low memory used (all below the EBDA, above the real-mode IVT/BDA):
0x500 GDT, 0x7000 zero page or start_info (+ e820/module lists),
0x9000-0xEFFF page tables, 0x20000 command line. The initrd goes at the top of
low RAM, below initrd_addr_max, as QEMU places it.
"""

from __future__ import annotations

import enum
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

from kvmpy.loader.boot_params import XLF_KERNEL_64, build_boot_params
from kvmpy.loader.bzimage import BzImage, compression_of, decompress_payload, parse_bzimage
from kvmpy.loader.e820 import E820_RAM, E820Entry
from kvmpy.loader.elf import ElfImage, is_elf, parse_elf64
from kvmpy.loader.errors import LoaderError
from kvmpy.loader.files import read_boot_file
from kvmpy.loader.multiboot import HEADER_SEARCH, find_header
from kvmpy.loader.pvh import MEMMAP_ENTRY_SIZE, build_memmap, build_modlist, build_start_info
from kvmpy.memory.guest_memory import GuestMemory, GuestMemoryError

log = logging.getLogger(__name__)

MAX_CMDLINE = 64 << 10
GDT_ADDR = 0x500
PARAMS_ADDR = 0x7000
MEMMAP_ADDR = 0x7400
MODLIST_ADDR = 0x7E00
PML4_ADDR = 0x9000
PDPT_ADDR = 0xA000
PD_ADDR = 0xB000  # four page directories: 0xB000-0xEFFF
CMDLINE_ADDR = 0x20000
BZIMAGE_LOAD_ADDR = 0x100000
BZIMAGE_64BIT_ENTRY = 0x200
# __BOOT_CS 0x10 and __BOOT_DS 0x18, as the boot protocol asks.
GDT_LONG = (0, 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF)
GDT_FLAT32 = (0, 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF)
PAGE = 4096


class KernelFormat(enum.Enum):
    MULTIBOOT = "multiboot"
    BZIMAGE = "bzImage"
    ELF = "ELF vmlinux"


class EntryMode(enum.Enum):
    LONG64 = "64-bit boot protocol"
    PVH32 = "PVH"


BOOT_MODES = ("auto", "bzimage", "pvh")


def detect_format(path: Path) -> KernelFormat:
    """What kind of kernel ``path`` is; a LoaderError names the file when it is none kvmpy boots."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_SEARCH)
    except OSError as exc:
        raise LoaderError(f"cannot read kernel {path}: {exc.strerror}") from None
    if find_header(head) is not None:
        return KernelFormat.MULTIBOOT
    if len(head) >= 0x206 and head[0x202:0x206] == b"HdrS":
        return KernelFormat.BZIMAGE
    if is_elf(head):
        return KernelFormat.ELF
    raise LoaderError(f"{path}: not a kernel kvmpy can boot (no multiboot header, no Linux bzImage "
                      f"setup header, not ELF)")


@dataclass(frozen=True)
class PreparedKernel:
    """A kernel read and parsed once, so that a reset can reload it cheaply."""

    path: Path
    mode: EntryMode
    bzimage: BzImage | None = None
    elf: ElfImage | None = None  # holds the ELF file's bytes too


@dataclass(frozen=True)
class LinuxBoot:
    """Where and how the boot vCPU starts."""

    mode: EntryMode
    entry: int
    params: int  # zero page (RSI) or hvm_start_info (EBX)
    cr3: int
    gdt_base: int
    gdt_limit: int
    load_low: int
    load_high: int
    initrd: tuple[int, int] | None


def _pvh_elf(data: bytes, name: str) -> ElfImage:
    elf = parse_elf64(data, name)
    if elf.pvh_entry is None:
        raise LoaderError(f"{name}: the ELF kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); "
                          f"boot its bzImage instead")
    return elf


def prepare_kernel(path: Path, boot_mode: str = "auto") -> PreparedKernel:
    """Read and check a Linux kernel. ``boot_mode``: auto, bzimage, or pvh (decompress on the host)."""
    if boot_mode not in BOOT_MODES:
        raise LoaderError(f"unknown Linux boot mode {boot_mode!r} (auto, bzimage or pvh)")
    data = read_boot_file(path, "kernel")
    if is_elf(data):
        elf = _pvh_elf(data, str(path))
        return PreparedKernel(path, EntryMode.PVH32, elf=elf)
    bz = parse_bzimage(data, str(path))
    if boot_mode == "pvh":
        payload = bz.payload()
        log.info("%s: decompressing the %s payload on the host", path, compression_of(payload))
        vmlinux = decompress_payload(payload)
        elf = _pvh_elf(vmlinux, f"{path} (decompressed payload)")
        return PreparedKernel(path, EntryMode.PVH32, bzimage=bz, elf=elf)
    if not bz.header.xloadflags & XLF_KERNEL_64:
        raise LoaderError(f"{path}: the bzImage has no 64-bit entry point (XLF_KERNEL_64); kvmpy boots "
                          f"64-bit x86 kernels only")
    return PreparedKernel(path, EntryMode.LONG64, bzimage=bz)


def _ram_top(e820: list[E820Entry]) -> int:
    """End of the RAM range that holds 1 MiB: the kernel, initrd and tables live below it."""
    for e in e820:
        if e.type == E820_RAM and e.addr <= BZIMAGE_LOAD_ADDR < e.addr + e.size:
            return e.addr + e.size
    raise LoaderError("the memory map has no RAM at 1 MiB")


def _write_gdt(memory: GuestMemory, descriptors: tuple[int, ...]) -> tuple[int, int]:
    gdt = b"".join(d.to_bytes(8, "little") for d in descriptors)
    memory.write(GDT_ADDR, gdt)
    return GDT_ADDR, len(gdt) - 1


def _write_identity_map(memory: GuestMemory) -> int:
    """PML4 -> PDPT -> 4 page directories of 2 MiB pages: the low 4 GiB mapped 1:1."""
    memory.write(PML4_ADDR, struct.pack("<Q", PDPT_ADDR | 0x3).ljust(PAGE, b"\0"))
    memory.write(PDPT_ADDR, b"".join(struct.pack("<Q", (PD_ADDR + i * PAGE) | 0x3) for i in range(4))
                 .ljust(PAGE, b"\0"))
    memory.write(PD_ADDR, struct.pack("<2048Q", *[(i << 21) | 0x83 for i in range(2048)]))
    return PML4_ADDR


def _place_initrd(memory: GuestMemory, initrd: Path | None, low_limit: int, high_limit: int,
                  addr_max: int) -> tuple[int, int] | None:
    if initrd is None:
        return None
    data = read_boot_file(initrd, "initrd")
    top = min(addr_max + 1, high_limit)
    addr = (top - len(data)) & ~(PAGE - 1)
    if addr < low_limit:
        need = (len(data) + low_limit + (16 << 20)) >> 20
        raise LoaderError(f"initrd {initrd} ({len(data) >> 20} MiB) does not fit in guest RAM next to the "
                          f"kernel: give the VM more memory (-m {need}M or more)")
    memory.write(addr, data)
    return addr, len(data)


def _cmdline_bytes(cmdline: str, limit: int) -> bytes:
    raw = cmdline.encode()
    if b"\0" in raw:
        raise LoaderError("the kernel command line contains a NUL byte")
    if len(raw) > limit:
        raise LoaderError(f"the kernel command line is {len(raw)} bytes; this kernel accepts at most {limit}")
    return raw + b"\0"


def load_linux(kernel: PreparedKernel, cmdline: str, initrd: Path | None, memory: GuestMemory,
               e820: list[E820Entry], rsdp_addr: int) -> LinuxBoot:
    """Write the kernel, initrd and boot structures into guest memory; return the entry state."""
    try:
        if kernel.mode is EntryMode.LONG64:
            return _load_bzimage(kernel, cmdline, initrd, memory, e820, rsdp_addr)
        return _load_pvh(kernel, cmdline, initrd, memory, e820, rsdp_addr)
    except GuestMemoryError as exc:
        raise LoaderError(f"{kernel.path}: does not fit in guest RAM ({exc}); give the VM more memory") from None


def _load_bzimage(kernel: PreparedKernel, cmdline: str, initrd: Path | None, memory: GuestMemory,
                  e820: list[E820Entry], rsdp_addr: int) -> LinuxBoot:
    bz = kernel.bzimage
    assert bz is not None
    h = bz.header
    pm = bz.protected_mode_kernel
    memory.write(BZIMAGE_LOAD_ADDR, pm)
    # The decompressor works in [max(pref_address, aligned load address), + init_size).
    align = max(h.kernel_alignment, PAGE)
    base = max(h.pref_address, (BZIMAGE_LOAD_ADDR + align - 1) & ~(align - 1)) if h.relocatable \
        else h.pref_address
    kernel_end = max(BZIMAGE_LOAD_ADDR + len(pm), base + h.init_size)
    ram_top = _ram_top(e820)
    if kernel_end > ram_top:
        raise LoaderError(f"{kernel.path}: the kernel needs {kernel_end >> 20} MiB of low RAM to decompress; "
                          f"give the VM more memory")
    cmd = _cmdline_bytes(cmdline, h.cmdline_size if h.cmdline_size else 255)
    memory.write(CMDLINE_ADDR, cmd)
    placed = _place_initrd(memory, initrd, kernel_end, ram_top, h.initrd_addr_max)
    memory.write(PARAMS_ADDR, build_boot_params(h, e820, CMDLINE_ADDR, placed, rsdp_addr))
    gdt_base, gdt_limit = _write_gdt(memory, GDT_LONG)
    cr3 = _write_identity_map(memory)
    log.info("bzImage: protocol %d.%02d, %d bytes at %#x, initrd %s", h.version >> 8, h.version & 0xFF,
             len(pm), BZIMAGE_LOAD_ADDR, f"at {placed[0]:#x}+{placed[1]:#x}" if placed else "none")
    return LinuxBoot(EntryMode.LONG64, BZIMAGE_LOAD_ADDR + BZIMAGE_64BIT_ENTRY, PARAMS_ADDR, cr3,
                     gdt_base, gdt_limit, BZIMAGE_LOAD_ADDR, kernel_end, placed)


def _load_pvh(kernel: PreparedKernel, cmdline: str, initrd: Path | None, memory: GuestMemory,
              e820: list[E820Entry], rsdp_addr: int) -> LinuxBoot:
    elf = kernel.elf
    assert elf is not None and elf.pvh_entry is not None
    ram_top = _ram_top(e820)
    if elf.high > ram_top or elf.low < BZIMAGE_LOAD_ADDR:
        raise LoaderError(f"{kernel.path}: the kernel occupies {elf.low:#x}-{elf.high:#x}, outside low RAM "
                          f"(1 MiB-{ram_top >> 20} MiB); give the VM more memory")
    for s in elf.segments:
        memory.write(s.paddr, elf.segment_bytes(s))
        if s.memsz > s.filesz:
            memory.fill(s.paddr + s.filesz, s.memsz - s.filesz)
    memory.write(CMDLINE_ADDR, _cmdline_bytes(cmdline, MAX_CMDLINE))
    addr_max = kernel.bzimage.header.initrd_addr_max if kernel.bzimage else 0x7FFFFFFF
    placed = _place_initrd(memory, initrd, elf.high, ram_top, addr_max)
    if len(e820) * MEMMAP_ENTRY_SIZE > MODLIST_ADDR - MEMMAP_ADDR:
        raise LoaderError(f"the e820 map has too many entries ({len(e820)}) for the PVH start info")
    memory.write(MEMMAP_ADDR, build_memmap(e820))
    modules = [placed] if placed else []
    memory.write(MODLIST_ADDR, build_modlist(modules))
    memory.write(PARAMS_ADDR, build_start_info(CMDLINE_ADDR, rsdp_addr, MEMMAP_ADDR, len(e820),
                                               MODLIST_ADDR if modules else 0, len(modules)))
    gdt_base, gdt_limit = _write_gdt(memory, GDT_FLAT32)
    log.info("PVH: kernel at %#x-%#x, entry %#x, initrd %s", elf.low, elf.high, elf.pvh_entry,
             f"at {placed[0]:#x}+{placed[1]:#x}" if placed else "none")
    return LinuxBoot(EntryMode.PVH32, elf.pvh_entry, PARAMS_ADDR, 0, gdt_base, gdt_limit,
                     elf.low, elf.high, placed)
