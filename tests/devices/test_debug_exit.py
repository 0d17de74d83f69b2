"""isa-debug-exit's status formula, as in QEMU."""

from kvmpy.devices.debug_exit import DebugExit


def test_status_is_value_shifted_with_low_bit_set() -> None:
    got = []
    dev = DebugExit(on_exit=got.append, iosize=4)
    dev.write(0, 4, 0x10)
    dev.write(0, 1, 0)
    assert got == [33, 1]
