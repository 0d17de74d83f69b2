"""A PS/2 keyboard and a PS/2 mouse: what they answer to the guest's commands and what they send when used.

Each device takes the bytes the guest writes to it (through the i8042) and returns the
bytes it answers; the i8042 queues them, raises IRQ1/IRQ12 and owns the locking. The
keyboard sends scancode set 2 by default and set 1 when the guest picks it (``F0 01``);
when the controller translates (its XLATE bit, on after reset) a set-2 keyboard's keys
reach the guest as set 1, as a real i8042's translation gives. The mouse is a standard
PS/2 mouse in stream mode (3-byte packets) that becomes an IntelliMouse (ID 3, a fourth
byte for the wheel) after the sample-rate knock 200, 100, 80, as Linux's psmouse probes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvmpy.devices.device import DeviceStateError, bool_field, check_keys, int_field
from kvmpy.devices.scancodes import sequence

ACK = 0xFA
RESEND = 0xFE
BAT_OK = 0xAA
ECHO = 0xEE

# Keyboard commands.
KBD_SET_LEDS = 0xED
KBD_ECHO = 0xEE
KBD_SCANCODE_SET = 0xF0
KBD_IDENTIFY = 0xF2
KBD_TYPEMATIC = 0xF3
KBD_ENABLE = 0xF4
KBD_DISABLE = 0xF5
KBD_DEFAULTS = 0xF6
KBD_RESET = 0xFF
_KBD_WITH_ARG = (KBD_SET_LEDS, KBD_SCANCODE_SET, KBD_TYPEMATIC)

# Mouse commands.
AUX_SCALE_11 = 0xE6
AUX_SCALE_21 = 0xE7
AUX_SET_RESOLUTION = 0xE8
AUX_STATUS = 0xE9
AUX_STREAM = 0xEA
AUX_READ = 0xEB
AUX_RESET_WRAP = 0xEC
AUX_WRAP = 0xEE
AUX_REMOTE = 0xF0
AUX_GET_ID = 0xF2
AUX_SAMPLE_RATE = 0xF3
AUX_ENABLE = 0xF4
AUX_DISABLE = 0xF5
AUX_DEFAULTS = 0xF6
AUX_RESET = 0xFF
_AUX_WITH_ARG = (AUX_SET_RESOLUTION, AUX_SAMPLE_RATE)
INTELLIMOUSE_KNOCK = (200, 100, 80)

# Button bits of the contract's mask (kvmpy.display.surface.PointerSink).
BTN_LEFT, BTN_MIDDLE, BTN_RIGHT, BTN_WHEEL_UP, BTN_WHEEL_DOWN = 1, 2, 4, 8, 16


def _opt_int(state: dict[str, Any], key: str, lo: int, hi: int, default: int) -> int:
    return int_field(state, key, lo, hi) if key in state else default


def _opt_cmd(state: dict[str, Any]) -> int | None:
    return None if state.get("pending") is None else int_field(state, "pending", 0, 0xFF)


@dataclass
class Ps2Keyboard:
    """An MF2 keyboard: its command state and the scancodes its keys send."""

    scanning: bool = True
    scancode_set: int = 2
    leds: int = 0
    pending: int | None = None  # a command waiting for its argument byte

    def reset(self) -> None:
        self.scanning, self.scancode_set, self.leds, self.pending = True, 2, 0, None

    def command(self, value: int, translated: bool) -> list[int]:
        """The keyboard's answer to a byte the guest wrote to it."""
        cmd, self.pending = self.pending, None
        if cmd is not None:
            return self._argument(cmd, value, translated)
        if value in _KBD_WITH_ARG:
            self.pending = value
            return [ACK]
        if value == KBD_RESET:
            self.reset()
            return [ACK, BAT_OK]
        if value == KBD_IDENTIFY:
            return [ACK, 0xAB, 0x41 if translated else 0x83]
        if value == KBD_ECHO:
            return [ECHO]
        if value == KBD_ENABLE:
            self.scanning = True
        elif value == KBD_DISABLE:  # also restores the defaults
            self.scanning, self.scancode_set, self.leds = False, 2, 0
        elif value == KBD_DEFAULTS:
            self.scanning, self.scancode_set, self.leds = True, 2, 0
        return [ACK]

    def _argument(self, cmd: int, value: int, translated: bool) -> list[int]:
        if cmd == KBD_SCANCODE_SET:
            if value == 0:  # report the set: translated, the guest sees set 2's ID through the table
                return [ACK, {1: 0x43, 2: 0x41}[self.scancode_set] if translated else self.scancode_set]
            if value in (1, 2):
                self.scancode_set = value
                return [ACK]
            return [RESEND]  # set 3 is not offered
        if cmd == KBD_SET_LEDS:
            self.leds = value & 0x07
        return [ACK]

    def key(self, qcode: str, down: bool, translated: bool) -> bytes:
        """What the guest reads for a key going down or up; empty while scanning is off.
        KeyError for a key the keyboard does not have."""
        data = sequence(qcode, down, 1 if translated or self.scancode_set == 1 else 2)
        return data if self.scanning else b""

    def save(self) -> dict[str, Any]:
        return {"scanning": self.scanning, "set": self.scancode_set, "leds": self.leds, "pending": self.pending}

    @staticmethod
    def validate(state: Any) -> Ps2Keyboard:
        check_keys(state, set(), {"scanning", "set", "leds", "pending"})
        return Ps2Keyboard(bool_field(state, "scanning") if "scanning" in state else True,
                           _opt_int(state, "set", 1, 2, 2), _opt_int(state, "leds", 0, 7, 0), _opt_cmd(state))


@dataclass
class Ps2Mouse:
    """A PS/2 mouse (an IntelliMouse once knocked): its settings and the packets its motion makes."""

    enabled: bool = False
    remote: bool = False
    wrap: bool = False
    scale21: bool = False
    rate: int = 100
    resolution: int = 2
    mouse_id: int = 0
    buttons: int = 0  # PS/2 bits: 0 left, 1 right, 2 middle
    pending: int | None = None
    knock: list[int] = field(default_factory=list)  # the last sample rates set

    def reset(self) -> None:
        """Power-on defaults: a plain PS/2 mouse, reporting off, stream mode."""
        for name, value in Ps2Mouse().__dict__.items():
            setattr(self, name, value)

    def command(self, value: int) -> list[int]:
        cmd, self.pending = self.pending, None
        if self.wrap and value not in (AUX_RESET_WRAP, AUX_RESET):
            return [value]  # wrap mode echoes everything else
        if cmd is not None:
            if cmd == AUX_SAMPLE_RATE:
                self.rate = value
                self.knock = (self.knock + [value])[-3:]
                if tuple(self.knock) == INTELLIMOUSE_KNOCK:
                    self.mouse_id = 3
            elif cmd == AUX_SET_RESOLUTION:
                self.resolution = value & 3
            return [ACK]
        if value in _AUX_WITH_ARG:
            self.pending = value
            return [ACK]
        if value == AUX_RESET:
            self.reset()
            return [ACK, BAT_OK, 0x00]
        if value == AUX_GET_ID:
            return [ACK, self.mouse_id]
        if value == AUX_STATUS:
            status = (0x40 if self.remote else 0) | (0x20 if self.enabled else 0) | (0x10 if self.scale21 else 0)
            return [ACK, status | self.buttons, self.resolution, self.rate]
        if value == AUX_READ:
            return [ACK, *self._packet(0, 0, 0)]
        if value in (AUX_ENABLE, AUX_DISABLE, AUX_DEFAULTS, AUX_STREAM, AUX_REMOTE, AUX_WRAP,
                     AUX_RESET_WRAP, AUX_SCALE_11, AUX_SCALE_21):
            if value in (AUX_DISABLE, AUX_DEFAULTS):
                self.rate, self.resolution, self.scale21 = 100, 2, False
            self.enabled = value == AUX_ENABLE or (self.enabled and value not in (AUX_DISABLE, AUX_DEFAULTS))
            self.remote = value == AUX_REMOTE or (self.remote and value != AUX_STREAM)
            self.wrap = value == AUX_WRAP or (self.wrap and value != AUX_RESET_WRAP)
            self.scale21 = value == AUX_SCALE_21 or (self.scale21 and value != AUX_SCALE_11)
            return [ACK]
        return [RESEND]

    def motion(self, dx: int, dy: int, buttons: int) -> bytes:
        """The packets for a move of (dx, dy) screen pixels (y grows downwards) with the contract's
        button mask; empty unless reporting is on in stream mode."""
        ps2_buttons = (buttons & BTN_LEFT) | (2 if buttons & BTN_RIGHT else 0) | (4 if buttons & BTN_MIDDLE else 0)
        self.buttons = ps2_buttons
        if not self.enabled or self.remote:
            return b""
        dz = -1 if buttons & BTN_WHEEL_UP else 1 if buttons & BTN_WHEEL_DOWN else 0
        out = bytearray()
        dy = -dy  # PS/2 counts up as positive
        while True:  # a long move goes as several packets within the 9-bit range
            step_x, step_y = max(-255, min(255, dx)), max(-255, min(255, dy))
            out += self._packet(step_x, step_y, dz)
            dx, dy, dz = dx - step_x, dy - step_y, 0
            if dx == 0 and dy == 0:
                return bytes(out)

    def _packet(self, dx: int, dy: int, dz: int) -> bytes:
        head = 0x08 | self.buttons | (0x10 if dx < 0 else 0) | (0x20 if dy < 0 else 0)
        packet = bytes([head, dx & 0xFF, dy & 0xFF])
        return packet + bytes([dz & 0xFF]) if self.mouse_id == 3 else packet

    def save(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "remote": self.remote, "wrap": self.wrap, "scale21": self.scale21,
                "rate": self.rate, "resolution": self.resolution, "id": self.mouse_id, "buttons": self.buttons,
                "pending": self.pending, "knock": list(self.knock)}

    @staticmethod
    def validate(state: Any) -> Ps2Mouse:
        keys = {"enabled", "remote", "wrap", "scale21", "rate", "resolution", "id", "buttons", "pending", "knock"}
        check_keys(state, set(), keys)
        flags = {k: bool_field(state, k) if k in state else False for k in ("enabled", "remote", "wrap", "scale21")}
        knock = state.get("knock", [])
        if not isinstance(knock, list) or len(knock) > 3:
            raise DeviceStateError("knock must be a list of at most 3 sample rates")
        rates = [int_field({"rate": r}, "rate", 0, 0xFF) for r in knock]
        mouse_id = _opt_int(state, "id", 0, 0xFF, 0)
        if mouse_id not in (0, 3):
            raise DeviceStateError(f"mouse id {mouse_id} is not 0 or 3")
        return Ps2Mouse(flags["enabled"], flags["remote"], flags["wrap"], flags["scale21"],
                        _opt_int(state, "rate", 0, 0xFF, 100), _opt_int(state, "resolution", 0, 3, 2),
                        mouse_id, _opt_int(state, "buttons", 0, 7, 0), _opt_cmd(state), rates)
