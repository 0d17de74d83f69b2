"""RiscvMachineConfig validation and the QEMU-style size/trace parsers."""

from __future__ import annotations

import pytest

from kvmpy.boards.riscv_virt_config import RiscvMachineConfig, parse_memory_size, parse_trace_flags
from kvmpy.tcg.errors import TcgUserError


def test_memory_sizes():
    assert parse_memory_size("128M") == 128 << 20
    assert parse_memory_size("1G") == 1 << 30
    assert parse_memory_size("64") == 64 << 20
    with pytest.raises(TcgUserError):
        parse_memory_size("lots")


@pytest.mark.parametrize("field,value,words", [
    ("bios", "opensbi.bin", "-bios none"), ("smp", 2, "one hart"), ("memory", 1024, "outside"),
    ("serial", "tcp:1", "serial backend"), ("machine", "sifive_u", "virt"), ("trace", {"bogus"}, "unknown"),
])
def test_bad_values_are_user_errors(tmp_path, field, value, words):
    k = tmp_path / "k.elf"
    k.write_bytes(b"x")
    cfg = RiscvMachineConfig(kernel=k)
    setattr(cfg, field, value)
    with pytest.raises(TcgUserError, match=words):
        cfg.validate()


def test_missing_kernel(tmp_path):
    with pytest.raises(TcgUserError, match="not found"):
        RiscvMachineConfig(kernel=tmp_path / "nope.elf").validate()


def test_trace_flags():
    assert parse_trace_flags("in_asm,exec") == {"in_asm", "exec"}
    with pytest.raises(TcgUserError):
        parse_trace_flags("in_asm,warp")


def test_memory_size_with_thousands_of_digits_is_a_user_error() -> None:
    with pytest.raises(TcgUserError, match="too large"):
        parse_memory_size("9" * 5000)
