"""Multiboot loader: ELF and a.out-kludge kernels, the info block, and hostile images."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kvmpy.loader.e820 import pc_e820
from kvmpy.loader.errors import LoaderError
from kvmpy.loader.multiboot import ADDR_E820_MAP, ADDR_MBI, BOOTLOADER_MAGIC, MAGIC, load_multiboot
from kvmpy.memory.address_space import AddressSpace
from kvmpy.memory.guest_memory import GuestMemory
from kvmpy.memory.ramblock import RAMBlock
from kvmpy.memory.region import MemoryRegion
from tests.guests.build import build_guest

MiB = 1 << 20


@pytest.fixture
def memory() -> GuestMemory:
    block = RAMBlock.allocate("ram", 16 * MiB)
    root = MemoryRegion.container("sys", 1 << 32)
    root.add_subregion(0, MemoryRegion.ram_region("ram", block))
    space = AddressSpace("sys", root)
    space.commit()
    return GuestMemory(space)


def aout_kernel(tmp_path: Path, body: bytes, load_addr: int = 0x200000, bss: int = 0x1000, entry_off: int = 48) -> Path:
    flags = 1 << 16
    header = struct.pack("<III", MAGIC, flags, (-(MAGIC + flags)) & 0xFFFFFFFF)
    # header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr (header at file offset 0)
    image_len = 48 + len(body)
    header += struct.pack("<5I", load_addr, load_addr, load_addr + image_len, load_addr + image_len + bss,
                          load_addr + entry_off)
    header = header.ljust(48, b"\0")
    path = tmp_path / "aout.bin"
    path.write_bytes(header + body)
    return path


def test_aout_kludge_kernel_and_info_block(tmp_path: Path, memory: GuestMemory) -> None:
    body = b"\xf4" * 100
    path = aout_kernel(tmp_path, body)
    memory.fill(0x200000 + 48 + 100, 0x1000, 0xCC)
    e820 = pc_e820(16 * MiB, amd=False)
    boot = load_multiboot(path, "console=x", memory, e820)
    assert (boot.entry, boot.eax, boot.ebx) == (0x200030, BOOTLOADER_MAGIC, ADDR_MBI)
    assert memory.read(0x200030, 100) == body
    assert memory.read(0x200030 + 100, 0x1000) == bytes(0x1000)  # bss zeroed
    flags, lower, upper, bootdev, cmdline, mods_count = struct.unpack("<6I", memory.read(ADDR_MBI, 24))
    assert flags == 0x24F and lower == 639 and upper == (16 * MiB - MiB - 0x20000) // 1024
    assert bootdev == 0x8000FFFF and mods_count == 0
    text = memory.read(cmdline, 200).split(b"\0")[0].decode()
    assert text == f"{path} console=x"
    mmap_len, mmap_addr = struct.unpack("<II", memory.read(ADDR_MBI + 44, 8))
    assert mmap_addr == ADDR_E820_MAP and mmap_len == 24 * len(e820)
    size, addr, length, kind = struct.unpack("<IQQI", memory.read(mmap_addr + 24 * 3, 24))
    assert (size, addr, kind) == (20, MiB, 1)
    loader = struct.unpack("<I", memory.read(ADDR_MBI + 64, 4))[0]
    assert memory.read(loader, 6) == b"kvmpy\0"


def test_modules_are_loaded_page_aligned_with_their_command_lines(tmp_path: Path, memory: GuestMemory) -> None:
    path = aout_kernel(tmp_path, b"\x90" * 10)
    mod = tmp_path / "mod.bin"
    mod.write_bytes(b"MODULE" * 1000)
    load_multiboot(path, "", memory, pc_e820(16 * MiB, amd=False), modules=[f"{mod} arg1 arg2"])
    count, addr = struct.unpack("<II", memory.read(ADDR_MBI + 20, 8))
    assert count == 1
    start, end, cmd, _ = struct.unpack("<4I", memory.read(addr, 16))
    assert start % 4096 == 0 and end - start == 6000
    assert memory.read(start, 6000) == mod.read_bytes()
    assert memory.read(cmd, 100).split(b"\0")[0] == f"{mod} arg1 arg2".encode()


def test_elf_guest_loads_at_its_physical_address(memory: GuestMemory) -> None:
    boot = load_multiboot(build_guest("hello"), "", memory, pc_e820(16 * MiB, amd=True))
    assert boot.load_low == 0x100000 and 0x100000 <= boot.entry < boot.load_high


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b"\0" * len(b), "no multiboot header"),
    (lambda b: b[:4] + b"\x02" + b[5:], "x86-64"),  # ELFCLASS64
    (lambda b: b[:44] + b"\xff\xff" + b[46:], "program header"),  # e_phnum
    (lambda b: b[:28] + struct.pack("<I", 0xFFFFFF00) + b[32:], "program header"),  # e_phoff
])
def test_hostile_elf_images_are_clear_errors(tmp_path: Path, memory: GuestMemory, mutate, message: str) -> None:
    image = build_guest("hello").read_bytes()
    bad = tmp_path / "bad.elf"
    bad.write_bytes(mutate(image))
    with pytest.raises(LoaderError, match=message):
        load_multiboot(bad, "", memory, pc_e820(16 * MiB, amd=False))


def test_kernel_that_does_not_fit_in_ram(tmp_path: Path, memory: GuestMemory) -> None:
    path = aout_kernel(tmp_path, b"\x90" * 16, load_addr=15 * MiB, bss=4 * MiB)
    with pytest.raises(LoaderError, match="does not fit"):
        load_multiboot(path, "", memory, pc_e820(16 * MiB, amd=False))


def test_aout_header_inconsistencies(tmp_path: Path, memory: GuestMemory) -> None:
    path = aout_kernel(tmp_path, b"\x90" * 16)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, 20, 0x100)  # load_end_addr below load_addr
    path.write_bytes(bytes(raw))
    with pytest.raises(LoaderError, match="load_end_addr"):
        load_multiboot(path, "", memory, pc_e820(16 * MiB, amd=False))
    with pytest.raises(LoaderError, match="cannot read"):
        load_multiboot(tmp_path / "missing", "", memory, pc_e820(16 * MiB, amd=False))


@pytest.mark.parametrize("size", range(0, 13))
def test_tiny_kernels_have_no_header_instead_of_a_struct_error(size: int) -> None:
    from kvmpy.loader.multiboot import find_header

    assert find_header(b"\0" * size) is None
    header = struct.pack("<III", MAGIC, 0, (-MAGIC) & 0xFFFFFFFF)
    assert (find_header(header[:size]) is not None) == (size == 12)
