"""A 16550A UART: registers, 16-byte receive FIFO, interrupts and loopback.

The model is bus- and architecture-neutral: on x86 it sits on the port-I/O bus
at 0x3f8 with IRQ 4, on the riscv ``virt`` board on an MMIO bus. Transmitted
bytes go to an output callable; received bytes arrive through ``receive()``
from whatever character backend the machine has (stdin, a file, a socket).
Transmission is instantaneous, so THR is always empty and the THRE interrupt
re-arms as soon as a byte is written.
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from kvmpy.devices.device import bool_field, bytes_field, check_keys, int_field
from kvmpy.devices.irq import IrqLine, NullIrqLine

log = logging.getLogger(__name__)

# Register offsets (facts from the 16550 datasheet).
RBR_THR_DLL = 0
IER_DLM = 1
IIR_FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

IER_RDI = 0x01
IER_THRI = 0x02
IER_RLSI = 0x04
IER_MSI = 0x08

IIR_NO_INT = 0x01
IIR_MSI = 0x00
IIR_THRI = 0x02
IIR_RDI = 0x04
IIR_RLSI = 0x06
IIR_FIFO_ENABLED = 0xC0

FCR_ENABLE = 0x01
FCR_CLEAR_RX = 0x02
FCR_CLEAR_TX = 0x04

LCR_DLAB = 0x80

MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10

LSR_DR = 0x01
LSR_OE = 0x02
LSR_THRE = 0x20
LSR_TEMT = 0x40

MSR_DCTS = 0x01
MSR_DDSR = 0x02
MSR_TERI = 0x04
MSR_DDCD = 0x08
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80

FIFO_DEPTH = 16
_BYTE_REGS = ("ier", "lcr", "mcr", "lsr", "msr", "scr", "fcr")
PENDING_LIMIT = 1 << 20


@dataclass
class Uart16550:
    """One 16550A. ``output`` receives transmitted bytes; ``irq`` is the interrupt line."""

    output: Callable[[bytes], None] = lambda data: None
    irq: IrqLine = field(default_factory=NullIrqLine)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._rx: collections.deque[int] = collections.deque()
        # Input that arrived while the FIFO was full: fed in as the guest drains it.
        self._pending: collections.deque[int] = collections.deque()
        self._irq_level = False
        self._reset_registers()

    def _reset_registers(self) -> None:
        self.ier = 0
        self.lcr = 0
        self.mcr = MCR_OUT2
        self.lsr = LSR_THRE | LSR_TEMT
        self.msr = MSR_DCD | MSR_DSR | MSR_CTS
        self.scr = 0
        self.fcr = 0
        self.divisor = 12  # 9600 baud from the 1.8432 MHz clock
        self.thr_ipending = False
        self._rx.clear()

    # ---- bus interface -------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        with self._lock:
            value = self._read_reg(offset & 7)
            self._update_irq()
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        out = None
        with self._lock:
            out = self._write_reg(offset & 7, value & 0xFF)
            self._update_irq()
        if out is not None:
            self.output(out)

    # ---- character backend side ---------------------------------------
    def receive(self, data: bytes) -> int:
        """Queue bytes typed by the user; returns how many were accepted."""
        with self._lock:
            room = PENDING_LIMIT - len(self._pending)
            accepted = data[: max(room, 0)]
            self._pending.extend(accepted)
            self._refill_rx()
            self._update_irq()
        if len(accepted) < len(data):
            log.warning("serial: input buffer full, dropped %d bytes", len(data) - len(accepted))
        return len(accepted)

    def reset(self) -> None:
        with self._lock:
            self._reset_registers()
            self._update_irq()

    # ---- register logic (lock held) ------------------------------------
    def _fifo_depth(self) -> int:
        return FIFO_DEPTH if self.fcr & FCR_ENABLE else 1

    def _refill_rx(self) -> None:
        if self.mcr & MCR_LOOP:
            return
        depth = self._fifo_depth()
        while self._pending and len(self._rx) < depth:
            self._rx.append(self._pending.popleft())
        if self._rx:
            self.lsr |= LSR_DR

    def _push_rx(self, byte: int) -> None:
        if len(self._rx) >= self._fifo_depth():
            self.lsr |= LSR_OE
            return
        self._rx.append(byte)
        self.lsr |= LSR_DR

    def _read_reg(self, reg: int) -> int:
        dlab = self.lcr & LCR_DLAB
        if reg == RBR_THR_DLL:
            if dlab:
                return self.divisor & 0xFF
            value = self._rx.popleft() if self._rx else 0
            if not self._rx:
                self.lsr &= ~LSR_DR
            self._refill_rx()
            return value
        if reg == IER_DLM:
            return (self.divisor >> 8) & 0xFF if dlab else self.ier
        if reg == IIR_FCR:
            iir = self._iir()
            # Reading IIR while it reports THRE acknowledges that interrupt.
            if iir & 0x0F == IIR_THRI:
                self.thr_ipending = False
            return iir | (IIR_FIFO_ENABLED if self.fcr & FCR_ENABLE else 0)
        if reg == LCR:
            return self.lcr
        if reg == MCR:
            return self.mcr
        if reg == LSR:
            value = self.lsr
            self.lsr &= ~LSR_OE
            return value
        if reg == MSR:
            value = self._msr()
            self.msr &= 0xF0  # reading clears the delta bits
            return value
        return self.scr

    def _write_reg(self, reg: int, value: int) -> bytes | None:
        dlab = self.lcr & LCR_DLAB
        if reg == RBR_THR_DLL:
            if dlab:
                self.divisor = (self.divisor & 0xFF00) | value
                return None
            self.thr_ipending = True  # the byte leaves at once
            if self.mcr & MCR_LOOP:
                self._push_rx(value)
                return None
            return bytes((value,))
        if reg == IER_DLM:
            if dlab:
                self.divisor = (self.divisor & 0x00FF) | (value << 8)
                return None
            old = self.ier
            self.ier = value & 0x0F
            # Enabling THRE interrupts while THR is empty raises one straight away.
            if self.ier & IER_THRI and not old & IER_THRI:
                self.thr_ipending = True
            return None
        if reg == IIR_FCR:
            if (value ^ self.fcr) & FCR_ENABLE or value & FCR_CLEAR_RX:
                self._rx.clear()
                self.lsr &= ~LSR_DR
            self.fcr = value & 0xC9
            self._refill_rx()
            return None
        if reg == LCR:
            self.lcr = value
            return None
        if reg == MCR:
            old = self.mcr
            self.mcr = value & 0x1F
            if (old ^ self.mcr) & MCR_LOOP:
                self._rx.clear()
                self.lsr &= ~LSR_DR
                self._refill_rx()
            return None
        if reg == SCR:
            self.scr = value
        return None  # LSR and MSR are read-only

    def _msr(self) -> int:
        if not self.mcr & MCR_LOOP:
            return self.msr
        # Loopback wires the modem outputs back to the inputs.
        m = self.mcr
        status = (
            (MSR_CTS if m & MCR_RTS else 0)
            | (MSR_DSR if m & MCR_DTR else 0)
            | (MSR_RI if m & MCR_OUT1 else 0)
            | (MSR_DCD if m & MCR_OUT2 else 0)
        )
        return status | (self.msr & 0x0F)

    def _iir(self) -> int:
        if self.ier & IER_RLSI and self.lsr & LSR_OE:
            return IIR_RLSI
        if self.ier & IER_RDI and self._rx:
            return IIR_RDI
        if self.ier & IER_THRI and self.thr_ipending:
            return IIR_THRI
        if self.ier & IER_MSI and self.msr & 0x0F:
            return IIR_MSI
        return IIR_NO_INT

    def _update_irq(self) -> None:
        level = self._iir() != IIR_NO_INT
        if level != self._irq_level:
            self._irq_level = level
            self.irq.set_level(level)

    # ---- migration -----------------------------------------------------
    def save(self) -> dict[str, Any]:
        with self._lock:
            return {
                "ier": self.ier, "lcr": self.lcr, "mcr": self.mcr, "lsr": self.lsr,
                "msr": self.msr, "scr": self.scr, "fcr": self.fcr, "divisor": self.divisor,
                "thr_ipending": self.thr_ipending, "rx": bytes(self._rx),
                "pending": bytes(self._pending),
            }

    def validate(self, state: dict[str, Any]) -> tuple[dict[str, int], int, bool, bytes, bytes]:
        """The checked fields of a saved state; DeviceStateError if any is unfit."""
        check_keys(state, {*_BYTE_REGS, "divisor", "thr_ipending", "rx", "pending"})
        return ({name: int_field(state, name, 0, 0xFF) for name in _BYTE_REGS},
                int_field(state, "divisor", 0, 0xFFFF), bool_field(state, "thr_ipending"),
                bytes_field(state, "rx", FIFO_DEPTH), bytes_field(state, "pending", PENDING_LIMIT))

    def restore(self, state: dict[str, Any]) -> None:
        """Checks every field first (DeviceStateError), then applies them all."""
        regs, divisor, thr_ipending, rx, pending = self.validate(state)
        with self._lock:
            for name, value in regs.items():
                setattr(self, name, value)
            self.divisor = divisor
            self.thr_ipending = thr_ipending
            self._rx = collections.deque(rx)
            self._pending = collections.deque(pending)
            self._irq_level = self._iir() != IIR_NO_INT
            self.irq.set_level(self._irq_level)  # drive the line whatever it was
