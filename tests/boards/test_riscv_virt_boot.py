"""Booting the virt board as QEMU 7.2's hw/riscv/boot.c does: where -bios, -kernel and the device tree go,
and what the hart finds in a0/a1/a2 and in the MROM's fw_dynamic_info."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kvmpy.boards.riscv_fdt import FDT_MAGIC
from kvmpy.boards.riscv_virt import DRAM_BASE, MROM_BASE, BootImage, BootSpec, VirtBoard
from kvmpy.boards.riscv_virt_run import find_firmware, read_image, read_program, run_machine
from kvmpy.config import ConfigError, MachineConfig
from kvmpy.tcg.errors import TcgUserError
from kvmpy.tcg.target.riscv.translate import PC
from tests.guests.riscv.oracle import guest

FW_DYNAMIC_MAGIC = 0x4942534F


def dinfo(board: VirtBoard) -> tuple[int, ...]:
    """fw_dynamic_info as OpenSBI reads it through a2."""
    a2 = board.cpu.R[12]
    return tuple(board.bus.read(a2 + 8 * i, 8) for i in range(6))


def test_raw_firmware_and_kernel_go_where_qemu_puts_them():
    board = VirtBoard(128 << 20)
    info = board.boot(BootSpec(kernel=BootImage("k", raw=b"\x13\x00\x00\x00" * 4),
                               firmware=BootImage("fw", raw=b"\x6f\x00\x00\x00" * 100), bootargs="x"))
    R = board.cpu.R
    assert (R[PC], R[10], R[11]) == (DRAM_BASE, 0, 0x87E00000)      # DTB: 2 MiB-aligned below the end of RAM
    assert info.next_addr == 0x80200000 and board.mem.phys_read(0x80200000, 4) == 0x13
    assert board.mem.phys_read(DRAM_BASE, 4) == 0x6F
    assert struct.unpack(">I", bytes(board.mem.ram[0x7E00000:0x7E00004]))[0] == FDT_MAGIC
    assert dinfo(board) == (FW_DYNAMIC_MAGIC, 2, 0x80200000, 1, 0, 0)
    # the reset vector before it loads a1 and the start address from the two dwords that follow it
    assert board.bus.read(MROM_BASE, 4) == 0x00000297
    assert (board.bus.read(MROM_BASE + 24, 8), board.bus.read(MROM_BASE + 32, 8)) == (DRAM_BASE, 0x87E00000)
    board.bus.write(MROM_BASE, 4, 0)                                  # ROM: writes are ignored
    assert board.bus.read(MROM_BASE, 4) == 0x00000297


def test_a_kernel_goes_to_the_next_2mib_boundary_after_the_firmware():
    board = VirtBoard(128 << 20)
    info = board.boot(BootSpec(kernel=BootImage("k", raw=b"k"), firmware=BootImage("fw", raw=bytes((2 << 20) + 1))))
    assert info.next_addr == 0x80400000


def test_elf_kernel_after_firmware_is_the_next_stage_at_its_lowest_address():
    img = read_program(guest("hello"))
    board = VirtBoard(128 << 20)
    with pytest.raises(TcgUserError, match="overlaps fw"):        # both at DRAM base: QEMU refuses too
        board.boot(BootSpec(kernel=BootImage("hello", elf=img), firmware=BootImage("fw", raw=bytes(64))))


def test_bare_elf_starts_at_its_entry_with_the_dtb_in_a1():
    img = read_program(guest("hello"))
    board = VirtBoard(128 << 20)
    board.load(img, "hello")
    assert (board.cpu.R[PC], board.cpu.R[11]) == (img.entry, 0x87E00000)
    assert dinfo(board)[2] == img.low
    board.reset()
    assert (board.cpu.R[PC], board.cpu.R[11]) == (img.entry, 0x87E00000)
    assert board.run().status == 0


def test_small_ram_runs_a_bare_program_without_a_dtb():
    board = VirtBoard(1 << 20)
    board.load(read_program(guest("hello")), "hello")
    assert board.cpu.R[11] == 0 and board.run().status == 0


def test_read_image_elf_raw_and_empty(tmp_path):
    assert read_image(guest("hello"), "kernel").elf is not None
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"\x01\x02")
    assert read_image(raw, "kernel").raw == b"\x01\x02"
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(TcgUserError, match="empty"):
        read_image(empty, "kernel")


def test_firmware_lookup(tmp_path):
    (tmp_path / "fw.bin").write_bytes(b"x")
    assert find_firmware("fw.bin", (tmp_path,)) == tmp_path / "fw.bin"
    with pytest.raises(TcgUserError, match="Unable to load the RISC-V firmware"):
        find_firmware("no-such-firmware.bin", (tmp_path,))
    if any(p.is_file() for p in (Path("/usr/share/qemu/opensbi-riscv64-generic-fw_dynamic.bin"),
                                 Path("/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_dynamic.bin"))):
        assert find_firmware("default").name.endswith("fw_dynamic.bin")


def test_firmware_alone_runs_and_a_firmware_that_fits_nowhere_is_one_line(tmp_path):
    fw = tmp_path / "fw.bin"
    # li t0, 0x100000 (sifive_test); li t1, 0x5555; sw t1, 0(t0)
    fw.write_bytes(struct.pack("<5I", 0x001002B7, 0x00005337, 0x5553031B, 0x0062A023, 0x0000006F))
    assert run_machine(MachineConfig(arch="riscv64", bios=str(fw), memory=4 << 20, serial="none")) == 0
    with pytest.raises(TcgUserError, match="the device tree at 0x80000000.* overlaps"):
        run_machine(MachineConfig(arch="riscv64", bios=str(fw), memory=1 << 20, serial="none"))
    with pytest.raises(ConfigError, match="-append only allowed with -kernel"):
        run_machine(MachineConfig(arch="riscv64", bios=str(fw), append="x", memory=4 << 20, serial="none"))
