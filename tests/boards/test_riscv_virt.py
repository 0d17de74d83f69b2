"""The riscv ``virt`` board: its device table, reset walking it, and the chardev console."""

from __future__ import annotations

import time

import pytest

from kvmpy.boards.riscv_virt import (CLINT_BASE, MROM_BASE, PLIC_BASE, SIFIVE_TEST_BASE, TIMEBASE_HZ, UART_BASE,
                                    VirtBoard)
from kvmpy.cli import main, parse_qemu_args
from kvmpy.tcg.target.riscv.cpu import MTIP
from kvmpy.boards.riscv_virt_run import read_program
from kvmpy.devices.chardev import BufferBackend, FileBackend, NullBackend
from kvmpy.tcg.target.riscv.translate import INSTRET, PC
from tests.guests.riscv.oracle import guest


def test_device_table_is_the_memory_map():
    board = VirtBoard(4 << 20)
    assert [(s.name, s.base) for s in board.devices] == [
        ("mrom", MROM_BASE), ("sifive_test", SIFIVE_TEST_BASE), ("clint", CLINT_BASE), ("plic", PLIC_BASE),
        ("uart0", UART_BASE), *((f"virtio-mmio@{0x10001000 + 0x1000 * i:x}", 0x10001000 + 0x1000 * i)
                                 for i in range(8))]
    for slot in board.devices:
        assert board.bus.find(slot.base) is not None and board.bus.find(slot.base + slot.size - 1) is not None
        assert callable(slot.device.reset)


def test_guest_reset_resets_every_device_in_the_table():
    board = VirtBoard(4 << 20)
    img = read_program(guest("hello"))
    board.load(img, "hello")
    board.bus.write(PLIC_BASE + 4 * 10, 4, 5)               # UART source priority
    board.bus.write(PLIC_BASE + 0x2000, 4, 1 << 10)         # enabled for context 0
    board.bus.write(CLINT_BASE + 0x4000, 8, 12345)          # mtimecmp
    board.bus.write(UART_BASE + 3, 1, 0x1B)                 # LCR
    board.reset()
    assert board.bus.read(PLIC_BASE + 4 * 10, 4) == 0
    assert board.bus.read(PLIC_BASE + 0x2000, 4) == 0
    assert board.bus.read(CLINT_BASE + 0x4000, 8) == 0
    assert board.bus.read(UART_BASE + 3, 1) == 0
    assert board.cpu.R[PC] == img.entry
    ex = board.run()
    assert (ex.status, ex.reason) == (0, "sifive_test: pass")


def test_output_goes_to_the_chardev_backend():
    console = BufferBackend()
    board = VirtBoard(4 << 20, console)
    board.load(read_program(guest("hello")), "hello")
    assert board.run().status == 0
    assert console.output == b"hello from riscv64\n"


def test_typed_bytes_reach_the_guest_through_the_uart():
    console = BufferBackend()
    console.expect(b"ready\n", then=b"abq")
    board = VirtBoard(4 << 20, console)
    board.load(read_program(guest("echo")), "echo")
    ex = board.run()
    assert (ex.status, console.output) == (0, b"ready\nabq")


def test_console_quit_ends_the_machine():
    console = BufferBackend()
    board = VirtBoard(4 << 20, console)
    board.load(read_program(guest("echo")), "echo")
    board.input.request_quit()                              # what C-a x does on a terminal
    ex = board.run()
    assert ex.status == 0 and "C-a x" in ex.reason


def test_input_is_bounded_and_only_interactive_backends_are_polled(tmp_path):
    board = VirtBoard(4 << 20, BufferBackend())
    assert board.interactive
    assert board.input.receive(bytes(board.input.limit + 10)) == board.input.limit
    assert board.input.receive(b"x") == 0
    assert len(board.input.take()) == board.input.limit and board.input.receive(b"x") == 1
    assert not VirtBoard(4 << 20, NullBackend()).interactive
    file_console = FileBackend(tmp_path / "out")
    try:
        assert not VirtBoard(4 << 20, file_console).interactive
    finally:
        file_console.close()


def test_mtime_is_real_time_at_10mhz_by_default_and_icount_is_deterministic():
    board = VirtBoard(4 << 20)
    t0, m0 = time.monotonic(), board.cpu.mtime
    time.sleep(0.2)
    ticks, seconds = board.cpu.mtime - m0, time.monotonic() - t0
    assert abs(ticks - seconds * TIMEBASE_HZ) < 0.01 * TIMEBASE_HZ       # within 10 ms
    board.clint.write(0xBFF8, 8, 1 << 40)                               # a CLINT write sets it; it runs on
    assert 1 << 40 <= board.cpu.mtime < (1 << 40) + TIMEBASE_HZ
    det = VirtBoard(4 << 20, ns_per_insn=1 << 8)                         # -icount shift=8: 256 ns each
    det.cpu.R[INSTRET] = 1000
    time.sleep(0.01)
    assert det.cpu.mtime == 1000 * 256 // 100


def test_real_time_wfi_waits_for_the_timer():
    """WFI with the timer armed 50 ms ahead: the hart sleeps until then (real time), not spins or skips."""
    board = VirtBoard(4 << 20)
    cpu = board.cpu
    cpu.mie = MTIP
    board.clint.write(0x4000, 8, cpu.mtime + TIMEBASE_HZ // 20)
    t0 = time.monotonic()
    while not cpu.hw_ip & MTIP:
        assert cpu.idle()                        # the board's WFI hook, as the CPU calls it
    assert 0.04 < time.monotonic() - t0 < 0.5


@pytest.mark.parametrize("argv, shift", [(["-icount", "3"], 3), (["-icount", "shift=10"], 10)])
def test_icount_option(argv, shift, tmp_path):
    cfg = parse_qemu_args(["-M", "virt", "-kernel", str(guest("hello")), *argv])
    assert cfg.icount == shift


@pytest.mark.parametrize("argv, words", [
    (["-M", "virt", "-icount", "auto"], "only -icount shift=N"),
    (["-M", "virt", "-icount", "shift=11"], "shift must be 0 to 10"),
    (["-enable-kvm", "-icount", "1"], "-icount is a TCG option"),
])
def test_icount_mistakes_are_one_line(argv, words, capsys):
    assert main([*argv, "-kernel", str(guest("hello"))]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
