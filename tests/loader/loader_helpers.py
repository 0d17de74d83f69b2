"""Loader test helpers: real guest memory (no KVM needed) and synthetic kernel images."""

import struct

import lz4.block

from kvmpy.loader.e820 import pc_e820, split_ram
from kvmpy.memory.address_space import AddressSpace
from kvmpy.memory.guest_memory import GuestMemory
from kvmpy.memory.ramblock import RAMBlock
from kvmpy.memory.region import MemoryRegion

MiB = 1 << 20


def guest_memory(size: int) -> GuestMemory:
    ram = RAMBlock.allocate("ram", size)
    root = MemoryRegion.container("sys", 1 << 40)
    below, above = split_ram(size)
    region = MemoryRegion.ram_region("ram", ram)
    root.add_subregion(0, MemoryRegion.alias("lo", region, 0, below))
    if above:
        root.add_subregion(4 << 30, MemoryRegion.alias("hi", region, below, above))
    space = AddressSpace("sys", root)
    space.commit()
    return GuestMemory(space)


def lz4_legacy(data: bytes) -> bytes:
    """LZ4 legacy frames as the kernel build writes them: magic, sized 8 MiB blocks, size trailer."""
    out = bytearray(b"\x02\x21\x4c\x18")
    for i in range(0, len(data), 8 * MiB):
        block = lz4.block.compress(data[i:i + 8 * MiB], store_size=False)
        out += struct.pack("<I", len(block)) + block
    return bytes(out + struct.pack("<I", len(data)))


def tiny_elf(pvh_entry: int | None = 0x1000123, paddr: int = 0x1000000, body: bytes = b"\xf4" * 64,
             bss: int = 4096) -> bytes:
    """An ELF64 x86-64 executable with one PT_LOAD and (optionally) the Xen PVH note."""
    note = b""
    if pvh_entry is not None:
        note = struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", pvh_entry)
    phnum = 2 if note else 1
    phoff = 64
    data_off = phoff + 56 * phnum
    note_off = data_off + len(body)
    hdr = bytearray(64)
    hdr[:16] = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    struct.pack_into("<HHIQQQIHHHHHH", hdr, 16, 2, 62, 1, 0xFFFFFFFF81000000, phoff, 0, 0, 64, 56, phnum, 64, 0, 0)
    ph = struct.pack("<IIQQQQQQ", 1, 5, data_off, 0xFFFFFFFF81000000, paddr, len(body), len(body) + bss, 4096)
    if note:
        ph += struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4)
    return bytes(hdr) + ph + body + note


def tiny_bzimage(payload: bytes = b"", version: int = 0x20F, xloadflags: int = 0x7F, init_size: int = 8 * MiB,
                 cmdline_size: int = 2047) -> bytes:
    """A bzImage-shaped file: 4 setup sectors with a real setup header, then a protected-mode part."""
    setup = bytearray(5 * 512)
    setup[0x1F1] = 4
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200:0x202] = b"\xeb\x6a"  # jmp to 0x26c: the header ends at 0x26c
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = 0x01  # LOADED_HIGH
    struct.pack_into("<I", setup, 0x214, 0x100000)
    struct.pack_into("<III", setup, 0x22C, 0x7FFFFFFF, 0x200000, 1)  # initrd_addr_max, alignment, relocatable
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    decompressor = b"\x90" * 0x400
    struct.pack_into("<II", setup, 0x248, len(decompressor), len(payload))
    struct.pack_into("<Q", setup, 0x258, 0x1000000)
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + decompressor + payload + b"\0" * 16
