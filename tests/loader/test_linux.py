"""The Linux loader: format detection, zero page, e820 holes, page tables, initrd and PVH start info."""

import struct

import pytest

from kvmpy.loader import linux
from kvmpy.loader.boot_params import (BP_ACPI_RSDP_ADDR, BP_E820_ENTRIES, BP_E820_TABLE, HDR_CMD_LINE_PTR,
                                      HDR_RAMDISK_IMAGE, HDR_TYPE_OF_LOADER)
from kvmpy.loader.e820 import E820_RAM, pc_e820
from kvmpy.loader.errors import LoaderError
from kvmpy.loader.pvh import HVM_START_MAGIC

from loader_helpers import MiB, guest_memory, lz4_legacy, tiny_bzimage, tiny_elf

RSDP = 0xF0000


def _e820_from_zero_page(zp: bytes) -> list[tuple[int, int, int]]:
    n = zp[BP_E820_ENTRIES]
    return [struct.unpack_from("<QQI", zp, BP_E820_TABLE + 20 * i) for i in range(n)]


def test_detect_format(tmp_path):
    (tmp_path / "bz").write_bytes(tiny_bzimage())
    (tmp_path / "elf").write_bytes(tiny_elf())
    (tmp_path / "junk").write_bytes(b"hello world\n" * 100)
    assert linux.detect_format(tmp_path / "bz") is linux.KernelFormat.BZIMAGE
    assert linux.detect_format(tmp_path / "elf") is linux.KernelFormat.ELF
    with pytest.raises(LoaderError, match="not a kernel kvmpy can boot"):
        linux.detect_format(tmp_path / "junk")
    with pytest.raises(LoaderError, match="cannot read"):
        linux.detect_format(tmp_path / "missing")


def test_bzimage_zero_page_and_entry(tmp_path, e820_512m):
    kpath = tmp_path / "bzImage"
    kpath.write_bytes(tiny_bzimage(b"payload"))
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"INITRD" * 1000)
    mem = guest_memory(512 * MiB)
    k = linux.prepare_kernel(kpath)
    boot = linux.load_linux(k, "console=ttyS0 quiet", initrd, mem, e820_512m, RSDP)
    assert boot.mode is linux.EntryMode.LONG64
    assert boot.entry == 0x100200 and boot.params == linux.PARAMS_ADDR
    zp = mem.read(boot.params, 4096)
    assert zp[0x202:0x206] == b"HdrS" and zp[HDR_TYPE_OF_LOADER] == 0xFF
    cmd_ptr, = struct.unpack_from("<I", zp, HDR_CMD_LINE_PTR)
    assert mem.read(cmd_ptr, 20) == b"console=ttyS0 quiet\0"
    rd_addr, rd_size = struct.unpack_from("<II", zp, HDR_RAMDISK_IMAGE)
    assert rd_size == 6000 and rd_addr % 4096 == 0 and mem.read(rd_addr, rd_size) == initrd.read_bytes()
    ram_top = next(e.addr + e.size for e in e820_512m if e.type == E820_RAM and e.addr == 0x100000)
    assert rd_addr + rd_size <= ram_top and rd_addr >= 0x1000000 + 8 * MiB
    assert struct.unpack_from("<Q", zp, BP_ACPI_RSDP_ADDR)[0] == RSDP
    assert _e820_from_zero_page(zp) == [(e.addr, e.size, e.type) for e in e820_512m]
    # The protected-mode kernel sits at 1 MiB; the page tables map 1 GiB + 5 as 2 MiB pages.
    assert mem.read(0x100000, 4) == b"\x90" * 4
    pml4 = mem.read_u64(boot.cr3)
    pdpt = mem.read_u64(pml4 & ~0xFFF)
    pd1 = mem.read_u64((mem.read_u64((pml4 & ~0xFFF) + 8) & ~0xFFF) + 8)
    assert pml4 & 1 and pdpt & 1 and pd1 == (1 << 30) + (1 << 21) | 0x83
    gdt = mem.read(boot.gdt_base, boot.gdt_limit + 1)
    assert struct.unpack_from("<Q", gdt, 0x10)[0] == 0x00AF9A000000FFFF


def test_e820_has_pci_hole_above_3g(tmp_path):
    e820 = pc_e820(4 << 30, amd=False)
    zp_entries = [(e.addr, e.size, e.type) for e in e820]
    ram = [(a, s) for a, s, t in zp_entries if t == E820_RAM]
    assert (0, 0x9FC00) in ram
    assert all(not (a < 4 << 30 and a + s > 0xC0000000) for a, s in ram), "RAM overlaps the 32-bit PCI hole"
    assert (4 << 30, 1 << 30) in ram
    assert sum(s for _, s in ram) < 4 << 30


@pytest.mark.parametrize("make,kw,match", [
    (lambda: tiny_bzimage(), {"cmdline": "x" * 3000}, "at most 2047"),
    (lambda: tiny_bzimage(), {"cmdline": "a\0b"}, "NUL"),
    (lambda: tiny_bzimage(init_size=600 * MiB), {}, "to decompress"),
    (lambda: tiny_bzimage(xloadflags=0), {}, "no 64-bit entry"),
])
def test_bzimage_errors(tmp_path, e820_512m, make, kw, match):
    kpath = tmp_path / "k"
    kpath.write_bytes(make())
    with pytest.raises(LoaderError, match=match):
        k = linux.prepare_kernel(kpath)
        linux.load_linux(k, kw.get("cmdline", ""), None, guest_memory(512 * MiB), e820_512m, RSDP)


def test_initrd_too_large(tmp_path):
    kpath = tmp_path / "k"
    kpath.write_bytes(tiny_bzimage())
    initrd = tmp_path / "big"
    initrd.write_bytes(bytes(40 * MiB))
    e820 = pc_e820(48 * MiB, amd=True)
    with pytest.raises(LoaderError, match="more memory"):
        linux.load_linux(linux.prepare_kernel(kpath), "", initrd, guest_memory(48 * MiB), e820, RSDP)


@pytest.mark.parametrize("source", ["elf", "bzimage-pvh"])
def test_pvh_start_info(tmp_path, e820_512m, source):
    kpath = tmp_path / "k"
    elf = tiny_elf(body=b"\xcc" * 100, bss=8192)
    kpath.write_bytes(elf if source == "elf" else tiny_bzimage(lz4_legacy(elf)))
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"R" * 5000)
    mem = guest_memory(512 * MiB)
    mem.write(0x1000000 + 100, b"\xee" * 8192)  # stale bytes where the BSS goes
    k = linux.prepare_kernel(kpath, "pvh" if source != "elf" else "auto")
    boot = linux.load_linux(k, "root=/dev/ram0", initrd, mem, e820_512m, RSDP)
    assert boot.mode is linux.EntryMode.PVH32 and boot.entry == 0x1000123
    assert mem.read(0x1000000, 100) == b"\xcc" * 100 and mem.read(0x1000000 + 100, 8192) == bytes(8192)
    magic, version, flags, nr_modules, modlist, cmdline, rsdp, memmap, nmem = struct.unpack_from(
        "<IIIIQQQQI", mem.read(boot.params, 56))
    assert (magic, version, nr_modules, rsdp) == (HVM_START_MAGIC, 1, 1, RSDP)
    assert mem.read(cmdline, 15) == b"root=/dev/ram0\0"
    mod_addr, mod_size = struct.unpack_from("<QQ", mem.read(modlist, 16))
    assert mem.read(mod_addr, mod_size) == b"R" * 5000
    entries = [struct.unpack_from("<QQI", mem.read(memmap + 24 * i, 20)) for i in range(nmem)]
    assert entries == [(e.addr, e.size, e.type) for e in e820_512m]


def test_elf_without_pvh_note_is_refused(tmp_path):
    kpath = tmp_path / "vmlinux"
    kpath.write_bytes(tiny_elf(pvh_entry=None))
    with pytest.raises(LoaderError, match="no PVH entry note"):
        linux.prepare_kernel(kpath)
