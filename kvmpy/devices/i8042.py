"""The i8042 keyboard controller with its PS/2 keyboard (IRQ1) and PS/2 mouse on the aux port (IRQ12).

Ports 0x60 (data) and 0x64 (status/command). The reset line is pulsed by
command 0xFE, or by clearing bit 0 of the output port (command 0xD1); either
calls ``on_reset``. The devices themselves live in :mod:`kvmpy.devices.ps2`; this
controller routes the guest's bytes to them (0xD4 for the mouse), queues their
answers and their input, and is the :class:`KeyboardSink` and :class:`PointerSink`
the display front ends feed (keys by QKeyCode name, relative pointer motion).
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from kvmpy.devices.device import DeviceStateError, bool_field, check_keys, int_field
from kvmpy.devices.irq import IrqLine, NullIrqLine
from kvmpy.devices.ps2 import Ps2Keyboard, Ps2Mouse

log = logging.getLogger(__name__)

DATA_PORT = 0x60
STATUS_PORT = 0x64

ST_OBF = 0x01  # output buffer full
ST_IBF = 0x02
ST_SYS = 0x04  # system flag: POST passed
ST_CMD = 0x08  # last write was a command
ST_UNLOCKED = 0x10
ST_AUX_OBF = 0x20

CTR_KBD_INT = 0x01
CTR_AUX_INT = 0x02
CTR_SYS = 0x04
CTR_KBD_DISABLE = 0x10
CTR_AUX_DISABLE = 0x20
CTR_XLATE = 0x40

OUTPORT_RESET = 0x01  # active low
OUTPORT_A20 = 0x02
QUEUE_DEPTH = 64  # bytes waiting for the guest to read them


@dataclass
class I8042:
    on_reset: Callable[[], None]
    kbd_irq: IrqLine = field(default_factory=NullIrqLine)
    aux_irq: IrqLine = field(default_factory=NullIrqLine)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: collections.deque[tuple[int, bool]] = collections.deque()  # (byte, from_aux)
        self.keyboard = Ps2Keyboard()
        self.mouse = Ps2Mouse()
        self._reset()

    def reset(self) -> None:
        """Power-on state; both interrupt lines are lowered."""
        with self._lock:
            self._reset()
            self.kbd_irq.set_level(False)
            self.aux_irq.set_level(False)

    def _reset(self) -> None:
        self.ctr = CTR_KBD_INT | CTR_SYS | CTR_XLATE
        self.outport = OUTPORT_RESET | OUTPORT_A20
        self.pending_cmd: int | None = None
        self.status_cmd = False
        self._queue.clear()
        self._irq_levels = (False, False)
        self.keyboard.reset()
        self.mouse.reset()

    # ---- bus interface -----------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        with self._lock:
            if offset == 0:
                value = self._queue.popleft()[0] if self._queue else 0
                # Reading empties the output buffer, which drops the line; the next queued byte then
                # fills it and raises the line again. ISA IRQs 1 and 12 are edge-triggered, so each
                # byte needs its own rising edge (a line left high would deliver only the first).
                self._lower()
                self._update_irq()
                return value
            if offset == 4:
                st = ST_SYS if self.ctr & CTR_SYS else 0
                st |= ST_UNLOCKED | (ST_CMD if self.status_cmd else 0)
                if self._queue:
                    st |= ST_OBF | (ST_AUX_OBF if self._queue[0][1] else 0)
                return st
            return 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        reset = False
        with self._lock:
            if offset == 4:
                self.status_cmd = True
                reset = self._command(value)
            elif offset == 0:
                self.status_cmd = False
                reset = self._data(value)
            self._update_irq()
        if reset:
            self.on_reset()

    # ---- controller logic (lock held) -------------------------------------
    def _out(self, byte: int, aux: bool = False) -> None:
        if len(self._queue) < QUEUE_DEPTH:
            self._queue.append((byte & 0xFF, aux))

    def _command(self, cmd: int) -> bool:
        if cmd == 0x20:
            self._out(self.ctr)
        elif cmd in (0x60, 0xD1, 0xD2, 0xD3, 0xD4):
            self.pending_cmd = cmd
        elif cmd == 0xA7:
            self.ctr |= CTR_AUX_DISABLE
        elif cmd == 0xA8:
            self.ctr &= ~CTR_AUX_DISABLE
        elif cmd in (0xA9, 0xAB):
            self._out(0x00)  # interface test passed
        elif cmd == 0xAA:
            self._out(0x55)  # controller self test passed
        elif cmd == 0xAD:
            self.ctr |= CTR_KBD_DISABLE
        elif cmd == 0xAE:
            self.ctr &= ~CTR_KBD_DISABLE
        elif cmd == 0xC0:
            self._out(0x00)
        elif cmd == 0xD0:
            self._out(self.outport)
        elif cmd == 0xFE:
            return True
        elif 0xF0 <= cmd <= 0xFF:
            return not cmd & 1  # pulse output lines: bit 0 low pulses reset
        return False

    def _data(self, value: int) -> bool:
        cmd, self.pending_cmd = self.pending_cmd, None
        if cmd == 0x60:
            self.ctr = value
        elif cmd == 0xD1:
            self.outport = value
            return not value & OUTPORT_RESET
        elif cmd == 0xD2:
            self._out(value)
        elif cmd == 0xD3:
            self._out(value, aux=True)
        elif cmd == 0xD4:
            for byte in self.mouse.command(value):
                self._out(byte, aux=True)
        else:
            for byte in self.keyboard.command(value, translated=bool(self.ctr & CTR_XLATE)):
                self._out(byte)
        return False

    # ---- input (KeyboardSink, PointerSink) --------------------------------------
    def key_event(self, qcode: str, down: bool) -> None:
        """A key pressed or released: its scancodes for the guest, IRQ1. Dropped whole if the
        queue has no room for all of them (a real keyboard would report an overrun)."""
        with self._lock:
            try:
                data = self.keyboard.key(qcode, down, translated=bool(self.ctr & CTR_XLATE))
            except KeyError:
                log.warning("i8042: no scancode for key %r", qcode)
                return
            if self.ctr & CTR_KBD_DISABLE or len(self._queue) + len(data) > QUEUE_DEPTH:
                return
            for byte in data:
                self._out(byte)
            self._update_irq()

    def pointer_event(self, dx: int, dy: int, buttons: int) -> None:
        """Relative motion and the button mask: the mouse's packets on the aux port, IRQ12."""
        with self._lock:
            data = self.mouse.motion(dx, dy, buttons)
            if self.ctr & CTR_AUX_DISABLE or len(self._queue) + len(data) > QUEUE_DEPTH:
                return
            for byte in data:
                self._out(byte, aux=True)
            self._update_irq()

    def _levels(self) -> tuple[bool, bool]:
        """(keyboard, aux) interrupt levels: the byte at the head of the queue, if its source is enabled."""
        head = self._queue[0] if self._queue else None
        return (bool(head and not head[1] and self.ctr & CTR_KBD_INT),
                bool(head and head[1] and self.ctr & CTR_AUX_INT))

    def _lower(self) -> None:
        if self._irq_levels[0]:
            self.kbd_irq.set_level(False)
        if self._irq_levels[1]:
            self.aux_irq.set_level(False)
        self._irq_levels = (False, False)

    def _update_irq(self) -> None:
        kbd, aux = self._levels()
        if (kbd, aux) != self._irq_levels:
            if kbd != self._irq_levels[0]:
                self.kbd_irq.set_level(kbd)
            if aux != self._irq_levels[1]:
                self.aux_irq.set_level(aux)
            self._irq_levels = (kbd, aux)

    # ---- migration ---------------------------------------------------------
    def save(self) -> dict[str, Any]:
        with self._lock:
            return {"ctr": self.ctr, "outport": self.outport, "pending_cmd": self.pending_cmd,
                    "status_cmd": self.status_cmd, "queue": [[b, a] for b, a in self._queue],
                    "keyboard": self.keyboard.save(), "mouse": self.mouse.save()}

    def validate(self, state: dict[str, Any]) -> tuple[int, int, int | None, bool, list[tuple[int, bool]],
                                                       Ps2Keyboard, Ps2Mouse]:
        """The checked fields of a saved state; DeviceStateError if any is unfit. A state saved
        before the keyboard and mouse had state of their own restores them at their defaults."""
        check_keys(state, {"ctr", "outport", "queue"}, {"pending_cmd", "status_cmd", "keyboard", "mouse"})
        ctr, outport = int_field(state, "ctr", 0, 0xFF), int_field(state, "outport", 0, 0xFF)
        pending_cmd = None if state.get("pending_cmd") is None else int_field(state, "pending_cmd", 0, 0xFF)
        status_cmd = bool_field(state, "status_cmd") if "status_cmd" in state else False
        raw_queue = state["queue"]
        if not isinstance(raw_queue, (list, tuple)) or len(raw_queue) > QUEUE_DEPTH:
            raise DeviceStateError(f"queue must be a list of at most {QUEUE_DEPTH} [byte, aux] pairs")
        queue = []
        for item in raw_queue:
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise DeviceStateError("each queue entry must be a [byte, aux] pair")
            pair = {"byte": item[0], "aux": item[1]}
            queue.append((int_field(pair, "byte", 0, 0xFF), bool_field(pair, "aux")))
        keyboard = Ps2Keyboard.validate(state.get("keyboard", {}))
        mouse = Ps2Mouse.validate(state.get("mouse", {}))
        return ctr, outport, pending_cmd, status_cmd, queue, keyboard, mouse

    def restore(self, state: dict[str, Any]) -> None:
        """Checks every field first (DeviceStateError), then applies them all."""
        ctr, outport, pending_cmd, status_cmd, queue, keyboard, mouse = self.validate(state)
        with self._lock:
            self.keyboard, self.mouse = keyboard, mouse
            self.ctr, self.outport = ctr, outport
            self.pending_cmd, self.status_cmd = pending_cmd, status_cmd
            self._queue = collections.deque(queue)
            kbd, aux = self._levels()
            self.kbd_irq.set_level(kbd)  # drive both lines whatever they were
            self.aux_irq.set_level(aux)
            self._irq_levels = (kbd, aux)
