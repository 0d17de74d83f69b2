"""The PVH boot ABI: the ``hvm_start_info`` structure, its memory map and module list.

Layouts are facts from Xen's public ``arch-x86/hvm/start_info.h`` (version 1,
which adds the memory map). A PVH kernel starts in 32-bit protected mode with
paging off and EBX pointing at this structure.
"""

from __future__ import annotations

import struct

from kvmpy.loader.e820 import E820Entry

HVM_START_MAGIC = 0x336EC578
HVM_START_VERSION = 1
START_INFO_SIZE = 56
MODLIST_ENTRY_SIZE = 32
MEMMAP_ENTRY_SIZE = 24


def build_start_info(cmdline_addr: int, rsdp_addr: int, memmap_addr: int, memmap_entries: int,
                     modlist_addr: int, nr_modules: int) -> bytes:
    return struct.pack("<IIIIQQQQII", HVM_START_MAGIC, HVM_START_VERSION, 0, nr_modules, modlist_addr,
                       cmdline_addr, rsdp_addr, memmap_addr, memmap_entries, 0)


def build_memmap(e820: list[E820Entry]) -> bytes:
    # hvm_memmap_table_entry: addr, size, type, reserved; the types are e820's.
    return b"".join(struct.pack("<QQII", e.addr, e.size, e.type, 0) for e in e820)


def build_modlist(modules: list[tuple[int, int]]) -> bytes:
    return b"".join(struct.pack("<QQQQ", addr, size, 0, 0) for addr, size in modules)
