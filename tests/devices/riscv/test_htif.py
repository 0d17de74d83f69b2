"""HTIF tohost/fromhost: exit, console character and proxy-kernel write, driven by real guest stores."""

from __future__ import annotations

import pytest

from kvmpy.devices.bus import Bus
from kvmpy.devices.riscv.htif import Htif
from kvmpy.tcg.errors import MachineExit
from kvmpy.tcg.softmmu import AccessFaults, SoftMmu

RAM = 0x80000000
TOHOST, FROMHOST = RAM + 0x1000, RAM + 0x1040


@pytest.fixture
def htif():
    mem = SoftMmu(RAM, 1 << 20, Bus("mmio"), AccessFaults(5, 7, 1))
    out: list[bytes] = []
    return Htif(mem, TOHOST, FROMHOST, out.append), mem, out


def test_exit_code(htif):
    _, mem, _ = htif
    with pytest.raises(MachineExit) as exc:
        mem.store(TOHOST, 8, (3 << 1) | 1, RAM, 0)            # a guest sd to tohost: exit 3
    assert exc.value.status == 3


def test_console_character_and_reply(htif):
    _, mem, out = htif
    mem.store(TOHOST, 8, (1 << 56) | (1 << 48) | ord("k"), RAM, 0)
    assert out == [b"k"]
    assert mem.phys_read(TOHOST, 8) == 0                      # consumed
    assert mem.phys_read(FROMHOST, 8) == (1 << 56) | (1 << 48)


def test_proxy_kernel_write_syscall(htif):
    _, mem, out = htif
    block, buf = RAM + 0x2000, RAM + 0x3000
    mem.ram[buf - RAM:buf - RAM + 5] = b"hello"
    for i, v in enumerate((64, 1, buf, 5)):                   # SYS_write(1, buf, 5)
        mem.phys_write(block + 8 * i, 8, v)
    mem.store(TOHOST, 8, block, RAM, 0)
    assert out == [b"hello"] and mem.phys_read(block, 8) == 5 and mem.phys_read(FROMHOST, 8) == 1
    for i, v in enumerate((64, 1, RAM + (1 << 20) - 2, 5)):   # buffer runs past RAM: -ENOSYS, no output
        mem.phys_write(block + 8 * i, 8, v)
    mem.store(TOHOST, 8, block, RAM, 0)
    assert out == [b"hello"] and mem.phys_read(block, 8) == (1 << 64) - 38
