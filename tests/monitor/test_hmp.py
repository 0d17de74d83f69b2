"""human-monitor-command against a running guest: info, x/xp dumps (incl. the page walk), lifecycle words."""

from __future__ import annotations

import asyncio
import re

import pytest
from qemu.qmp import QMPClient

from tests.monitor.conftest import COUNTER_ADDR, arun, wait_until

pytestmark = pytest.mark.kvm_host


async def _hmp(path, *lines: str) -> list[str]:
    qmp = QMPClient("hmp")
    await qmp.connect(str(path))
    out = [await qmp.execute("human-monitor-command", {"command-line": line}) for line in lines]
    await qmp.disconnect()
    return out


def test_info_commands(vm) -> None:
    status, cpus, regs, mtree, flat, version = arun(_hmp(
        vm.path, "info status", "info cpus", "info registers", "info mtree", "info mtree -f", "info version"))
    assert status == "VM status: running\r\n"
    assert cpus == f"* CPU #0: thread_id={vm.machine.board.threads[0].native_id}\r\n"
    assert regs.startswith("\r\nCPU#0\r\n")
    # The counter guest runs in 32-bit protected mode with flat segments.
    assert re.search(r"EIP=[0-9a-f]{8} EFL=[0-9a-f]{8} \[[-DOSZAPC]{7}\] CPL=0", regs), regs
    assert re.search(r"\nCS =00[0-9a-f]{2} 00000000 ffffffff 00c[0-9a-f]9[ab]00 DPL=0\r\n", regs), regs
    assert all(line.endswith("\r") for line in regs.split("\n")[:-1])
    assert "address-space: memory\r\n" in mtree
    assert "(prio 0, ram): alias ram-below-4g @pc.ram 0000000000000000-0000000001ffffff" in mtree
    assert "00000000000003f8-00000000000003ff (prio 0, i/o): serial0" in mtree
    assert "0000000000000000-0000000001ffffff (prio 0, ram): pc.ram" in flat
    assert version.startswith("7.2.0 (kvmpy ")
    # The VM kept running through the register read.
    before = vm.count()
    assert wait_until(lambda: vm.count() != before, 10)


def test_xp_reads_the_counter_and_x_translates(vm) -> None:
    assert wait_until(lambda: vm.count() > 0, 10)  # the guest has started counting
    out = arun(_hmp(vm.path, "stop", f"xp /1xw {COUNTER_ADDR:#x}", f"x /1xw {COUNTER_ADDR:#x}", "cont"))
    value = vm.memory_value = int(out[1].split()[1], 16)
    assert out[1] == f"{COUNTER_ADDR:016x}: 0x{value:08x}\r\n"
    assert out[2] == out[1]  # paging is off in this guest: linear == physical
    assert value > 0


def test_page_walk_in_long_mode() -> None:
    """The 4-level walk against tables written by hand into guest RAM (no guest needed to run)."""
    from kvmpy.monitor.hmp import translate

    mem = bytearray(1 << 20)

    class Memory:
        def read(self, addr: int, size: int) -> bytes:
            return bytes(mem[addr:addr + size])

    class Seg:
        l = 1

    class Sregs:
        cr0, cr4, efer, cr3, cs = 0x80000011, 0x20, 0x500, 0x10000, Seg()

    class Vcpu:
        def sregs(self):
            return Sregs()

    def put(addr: int, value: int) -> None:
        mem[addr:addr + 8] = value.to_bytes(8, "little")

    va = 0x0000_7F12_3456_7ABC
    put(0x10000 + ((va >> 39) & 511) * 8, 0x11000 | 3)
    put(0x11000 + ((va >> 30) & 511) * 8, 0x12000 | 3)
    put(0x12000 + ((va >> 21) & 511) * 8, 0x13000 | 3)
    put(0x13000 + ((va >> 12) & 511) * 8, 0x8000_0000_0004_5000 | 3)  # NX bit set: must be masked off
    assert translate(Vcpu(), Memory(), va) == 0x45ABC
    put(0x12000 + ((va >> 21) & 511) * 8, 0x0060_0000 | 0x83)  # a 2 MiB page
    assert translate(Vcpu(), Memory(), va) == 0x60_0000 | (va & 0x1F_FFFF)
    assert translate(Vcpu(), Memory(), 0x1234) is None  # PML4 entry 0 not present


def test_errors_and_bounds_come_back_as_text(vm) -> None:
    out = arun(_hmp(vm.path, "xp /4xw 0xfee00000", "xp /1xw 0x100000000000", "xp /100000xg 0",
                    "xp /2qw 0", "xp", "info bogus", "nonsense", "help"))
    assert out[0] == "00000000fee00000: Cannot access memory\r\n"  # MMIO (LAPIC), not RAM
    assert out[1] == "0000100000000000: Cannot access memory\r\n"
    assert out[2].startswith("Error: at most")
    assert out[3].startswith("Error: invalid format")
    assert out[4].startswith("Error:")
    assert "unknown or unsupported" in out[5]
    assert out[6] == "unknown command: 'nonsense'\r\n"
    assert "xp /fmt addr" in out[7]


def test_stop_and_cont_through_hmp(vm) -> None:
    async def go() -> None:
        qmp = QMPClient("hmp-life")
        await qmp.connect(str(vm.path))
        with qmp.listener(("STOP", "RESUME")) as events:
            await qmp.execute("human-monitor-command", {"command-line": "stop"})
            assert (await asyncio.wait_for(events.get(), 5))["event"] == "STOP"
            assert (await qmp.execute("query-status"))["status"] == "paused"
            await qmp.execute("human-monitor-command", {"command-line": "c"})
            assert (await asyncio.wait_for(events.get(), 5))["event"] == "RESUME"
        await qmp.disconnect()

    arun(go())
