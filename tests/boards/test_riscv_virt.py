"""The riscv ``virt`` board: its device table, reset walking it, and the chardev console."""

from __future__ import annotations

from kvmpy.boards.riscv_virt import CLINT_BASE, MROM_BASE, PLIC_BASE, SIFIVE_TEST_BASE, UART_BASE, VirtBoard
from kvmpy.boards.riscv_virt_run import read_program
from kvmpy.devices.chardev import BufferBackend, FileBackend, NullBackend
from kvmpy.tcg.target.riscv.translate import PC
from tests.guests.riscv.oracle import guest


def test_device_table_is_the_memory_map():
    board = VirtBoard(4 << 20)
    assert [(s.name, s.base) for s in board.devices] == [
        ("mrom", MROM_BASE), ("sifive_test", SIFIVE_TEST_BASE), ("clint", CLINT_BASE), ("plic", PLIC_BASE),
        ("uart0", UART_BASE)]
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
