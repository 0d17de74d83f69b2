"""Loading riscv64 programs: real riscv64 guests load; hostile or foreign files give one clear error."""

from __future__ import annotations

import struct

import pytest

from tests.guests.riscv.oracle import guest
from kvmpy.config import MachineConfig
from kvmpy.boards.riscv_virt_run import read_program
from kvmpy.tcg.errors import TcgUserError
from kvmpy.boards.riscv_virt_run import run_machine


def test_guest_elf_parses():
    img = read_program(guest("hello"))
    assert img.entry == 0x80000000
    assert img.low == 0x80000000


@pytest.mark.parametrize("blob,words", [
    (b"", "not an ELF"), (b"\x7fELF", "truncated"),
    (b"\x7fELF\x01\x01" + bytes(58), "64-bit"),
    (b"\x7fELF\x02\x01" + bytes(10) + struct.pack("<HH", 2, 62) + bytes(44), "not RISC-V"),
])
def test_bad_files(tmp_path, blob, words):
    p = tmp_path / "bad.elf"
    p.write_bytes(blob)
    with pytest.raises(TcgUserError, match=words):
        read_program(p)


def test_truncated_guest_and_huge_phnum(tmp_path):
    data = bytearray(guest("hello").read_bytes())
    p = tmp_path / "cut.elf"
    p.write_bytes(bytes(data[:200]))
    with pytest.raises(TcgUserError):
        read_program(p)
    struct.pack_into("<H", data, 56, 0xFFFF)          # e_phnum
    p.write_bytes(bytes(data))
    with pytest.raises(TcgUserError, match="outside the file"):
        read_program(p)


def test_too_little_memory(tmp_path):
    data = bytearray(guest("hello").read_bytes())
    phoff = struct.unpack_from("<Q", data, 32)[0]
    for i in range(struct.unpack_from("<H", data, 56)[0]):
        if struct.unpack_from("<I", data, phoff + 56 * i)[0] == 1:          # PT_LOAD: move p_paddr
            struct.pack_into("<Q", data, phoff + 56 * i + 24, 0x80000000 + (3 << 20))
    k = tmp_path / "k.elf"
    k.write_bytes(bytes(data))
    with pytest.raises(TcgUserError, match="does not fit"):
        run_machine(MachineConfig(arch="riscv64", kernel=k, memory=1 << 20, serial="none"))
