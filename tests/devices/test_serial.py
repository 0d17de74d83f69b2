"""The 16550A model: what drivers probe (scratch, loopback, FIFO), interrupts and flow of data."""

from __future__ import annotations

from kvmpy.devices import serial as s
from kvmpy.devices.serial import Uart16550


class Line:
    def __init__(self) -> None:
        self.level = False
        self.changes = 0

    def set_level(self, level: bool) -> None:
        self.level = level
        self.changes += 1


def make():
    out = bytearray()
    irq = Line()
    return Uart16550(output=out.extend, irq=irq), out, irq


def test_transmit_and_line_status() -> None:
    u, out, _ = make()
    for ch in b"ok\n":
        u.write(s.RBR_THR_DLL, 1, ch)
    assert bytes(out) == b"ok\n"
    assert u.read(s.LSR, 1) & (s.LSR_THRE | s.LSR_TEMT) == s.LSR_THRE | s.LSR_TEMT


def test_probe_sequence_finds_a_16550a() -> None:
    u, out, _ = make()
    u.write(s.SCR, 1, 0xA5)
    assert u.read(s.SCR, 1) == 0xA5
    u.write(s.IIR_FCR, 1, s.FCR_ENABLE)
    assert u.read(s.IIR_FCR, 1) & 0xC0 == 0xC0  # FIFOs present and enabled
    u.write(s.MCR, 1, s.MCR_LOOP | 0x0A)  # loopback with RTS and OUT2
    assert u.read(s.MSR, 1) & 0xF0 == 0x90  # CTS and DCD follow them
    u.write(s.RBR_THR_DLL, 1, 0x55)
    assert u.read(s.LSR, 1) & s.LSR_DR and u.read(s.RBR_THR_DLL, 1) == 0x55
    assert bytes(out) == b""  # loopback data never leaves
    u.write(s.LCR, 1, s.LCR_DLAB)
    u.write(s.RBR_THR_DLL, 1, 0x01)
    u.write(s.IER_DLM, 1, 0x00)
    assert (u.read(s.RBR_THR_DLL, 1), u.read(s.IER_DLM, 1)) == (1, 0)


def test_receive_interrupt_raised_and_cleared_by_reading() -> None:
    u, _, irq = make()
    u.write(s.IIR_FCR, 1, s.FCR_ENABLE)
    u.write(s.IER_DLM, 1, s.IER_RDI)
    assert not irq.level
    u.receive(b"hi")
    assert irq.level and u.read(s.IIR_FCR, 1) & 0x0F == s.IIR_RDI
    assert u.read(0, 1) == ord("h") and irq.level
    assert u.read(0, 1) == ord("i") and not irq.level
    assert u.read(s.IIR_FCR, 1) & 0x0F == s.IIR_NO_INT


def test_input_beyond_the_fifo_waits_instead_of_being_lost() -> None:
    u, _, _ = make()
    u.write(s.IIR_FCR, 1, s.FCR_ENABLE)
    data = bytes(range(40))
    u.receive(data)
    got = bytearray()
    while u.read(s.LSR, 1) & s.LSR_DR:
        got.append(u.read(0, 1))
    assert bytes(got) == data


def test_thre_interrupt_on_enable_and_ack_by_iir_read() -> None:
    u, _, irq = make()
    u.write(s.IER_DLM, 1, s.IER_THRI)
    assert irq.level
    assert u.read(s.IIR_FCR, 1) & 0x0F == s.IIR_THRI
    assert not irq.level
    u.write(0, 1, ord("x"))
    assert irq.level  # the byte left at once, so THR is empty again


def test_irq_line_is_only_driven_on_changes() -> None:
    u, _, irq = make()
    for _ in range(100):
        u.read(s.LSR, 1)
        u.write(s.SCR, 1, 1)
    assert irq.changes == 0


def test_save_restore_round_trip() -> None:
    u, _, _ = make()
    u.write(s.IIR_FCR, 1, s.FCR_ENABLE)
    u.write(s.IER_DLM, 1, s.IER_RDI)
    u.receive(b"abc")
    state = u.save()
    v, _, irq = make()
    v.restore(state)
    assert irq.level
    assert bytes(v.read(0, 1) for _ in range(3)) == b"abc"
