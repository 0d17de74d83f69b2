"""PC keyboard scancodes by QKeyCode name: set 1 (XT, what the i8042 hands the guest when it
translates) and set 2 (AT, what a PS/2 keyboard sends by default). Facts from the PC keyboard
references (and the same tables QEMU's ps2.c and Linux's atkbd use).

Each entry is the make code without its 0xE0 prefix, and whether the key has that prefix. A
release is the make code with bit 7 set in set 1, and 0xF0 before the code in set 2.
Print Screen and Pause have sequences of their own (see :func:`sequence`).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

# name: (set 1 make code, set 2 make code, 0xE0-prefixed)
_KEYS: dict[str, tuple[int, int, bool]] = {
    "esc": (0x01, 0x76, False), "1": (0x02, 0x16, False), "2": (0x03, 0x1E, False),
    "3": (0x04, 0x26, False), "4": (0x05, 0x25, False), "5": (0x06, 0x2E, False),
    "6": (0x07, 0x36, False), "7": (0x08, 0x3D, False), "8": (0x09, 0x3E, False),
    "9": (0x0A, 0x46, False), "0": (0x0B, 0x45, False), "minus": (0x0C, 0x4E, False),
    "equal": (0x0D, 0x55, False), "backspace": (0x0E, 0x66, False), "tab": (0x0F, 0x0D, False),
    "q": (0x10, 0x15, False), "w": (0x11, 0x1D, False), "e": (0x12, 0x24, False),
    "r": (0x13, 0x2D, False), "t": (0x14, 0x2C, False), "y": (0x15, 0x35, False),
    "u": (0x16, 0x3C, False), "i": (0x17, 0x43, False), "o": (0x18, 0x44, False),
    "p": (0x19, 0x4D, False), "bracket_left": (0x1A, 0x54, False), "bracket_right": (0x1B, 0x5B, False),
    "ret": (0x1C, 0x5A, False), "ctrl": (0x1D, 0x14, False), "a": (0x1E, 0x1C, False),
    "s": (0x1F, 0x1B, False), "d": (0x20, 0x23, False), "f": (0x21, 0x2B, False),
    "g": (0x22, 0x34, False), "h": (0x23, 0x33, False), "j": (0x24, 0x3B, False),
    "k": (0x25, 0x42, False), "l": (0x26, 0x4B, False), "semicolon": (0x27, 0x4C, False),
    "apostrophe": (0x28, 0x52, False), "grave_accent": (0x29, 0x0E, False), "shift": (0x2A, 0x12, False),
    "backslash": (0x2B, 0x5D, False), "z": (0x2C, 0x1A, False), "x": (0x2D, 0x22, False),
    "c": (0x2E, 0x21, False), "v": (0x2F, 0x2A, False), "b": (0x30, 0x32, False),
    "n": (0x31, 0x31, False), "m": (0x32, 0x3A, False), "comma": (0x33, 0x41, False),
    "dot": (0x34, 0x49, False), "slash": (0x35, 0x4A, False), "shift_r": (0x36, 0x59, False),
    "kp_multiply": (0x37, 0x7C, False), "alt": (0x38, 0x11, False), "spc": (0x39, 0x29, False),
    "caps_lock": (0x3A, 0x58, False), "f1": (0x3B, 0x05, False), "f2": (0x3C, 0x06, False),
    "f3": (0x3D, 0x04, False), "f4": (0x3E, 0x0C, False), "f5": (0x3F, 0x03, False),
    "f6": (0x40, 0x0B, False), "f7": (0x41, 0x83, False), "f8": (0x42, 0x0A, False),
    "f9": (0x43, 0x01, False), "f10": (0x44, 0x09, False), "num_lock": (0x45, 0x77, False),
    "scroll_lock": (0x46, 0x7E, False), "kp_7": (0x47, 0x6C, False), "kp_8": (0x48, 0x75, False),
    "kp_9": (0x49, 0x7D, False), "kp_subtract": (0x4A, 0x7B, False), "kp_4": (0x4B, 0x6B, False),
    "kp_5": (0x4C, 0x73, False), "kp_6": (0x4D, 0x74, False), "kp_add": (0x4E, 0x79, False),
    "kp_1": (0x4F, 0x69, False), "kp_2": (0x50, 0x72, False), "kp_3": (0x51, 0x7A, False),
    "kp_0": (0x52, 0x70, False), "kp_decimal": (0x53, 0x71, False), "sysrq": (0x54, 0x84, False),
    "less": (0x56, 0x61, False), "f11": (0x57, 0x78, False), "f12": (0x58, 0x07, False),
    "kp_equals": (0x59, 0x0F, False), "kp_comma": (0x7E, 0x6D, False),
    "kp_enter": (0x1C, 0x5A, True), "ctrl_r": (0x1D, 0x14, True), "kp_divide": (0x35, 0x4A, True),
    "alt_r": (0x38, 0x11, True), "home": (0x47, 0x6C, True), "up": (0x48, 0x75, True),
    "pgup": (0x49, 0x7D, True), "left": (0x4B, 0x6B, True), "right": (0x4D, 0x74, True),
    "end": (0x4F, 0x69, True), "down": (0x50, 0x72, True), "pgdn": (0x51, 0x7A, True),
    "insert": (0x52, 0x70, True), "delete": (0x53, 0x71, True), "meta_l": (0x5B, 0x1F, True),
    "meta_r": (0x5C, 0x27, True), "menu": (0x5D, 0x2F, True),
}
KEYS: Mapping[str, tuple[int, int, bool]] = MappingProxyType(_KEYS)

# Print Screen sends fake-shift + the key; Pause has a make sequence and no break at all.
_PRINT = {1: ((0xE0, 0x2A, 0xE0, 0x37), (0xE0, 0xB7, 0xE0, 0xAA)),
          2: ((0xE0, 0x12, 0xE0, 0x7C), (0xE0, 0xF0, 0x7C, 0xE0, 0xF0, 0x12))}
_PAUSE = {1: (0xE1, 0x1D, 0x45, 0xE1, 0x9D, 0xC5), 2: (0xE1, 0x14, 0x77, 0xE1, 0xF0, 0x14, 0xF0, 0x77)}

QCODES = frozenset(_KEYS) | {"print", "pause"}

# QEMU's key numbers ("qnum", used by QMP send-key's number keys and the VNC QEMU extended key
# event): the set-1 make code, plus 0x80 for an 0xE0-prefixed key.
QNUM_TO_QCODE: Mapping[int, str] = MappingProxyType(
    {set1 | (0x80 if e0 else 0): name for name, (set1, _, e0) in _KEYS.items()} | {0xB7: "print", 0xC6: "pause"})


def sequence(qcode: str, down: bool, scancode_set: int) -> bytes:
    """The bytes a keyboard in ``scancode_set`` (1 or 2) sends when ``qcode`` goes down or up;
    KeyError for a key this table does not know."""
    if qcode == "print":
        return bytes(_PRINT[scancode_set][0 if down else 1])
    if qcode == "pause":
        return bytes(_PAUSE[scancode_set]) if down else b""
    set1, set2, e0 = _KEYS[qcode]
    prefix = b"\xe0" if e0 else b""
    if scancode_set == 1:
        return prefix + bytes([set1 | (0 if down else 0x80)])
    return prefix + (b"" if down else b"\xf0") + bytes([set2])
