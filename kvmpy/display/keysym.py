"""X11 keysyms (what RFB KeyEvents carry) mapped to QEMU's QKeyCode names, for a US keyboard layout.

A viewer sends the symbol a key produced (``A`` with Shift held, ``!`` for Shift+1)
and sends Shift itself separately, so each symbol maps back to the key that types it
on a US layout, as QEMU's default ``en-us`` keymap does. Facts from X11's keysymdef.h
and QEMU's qapi QKeyCode enumeration.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

# The printable ASCII keysyms (keysym == code point) by the key that types them, unshifted then shifted.
_US_KEYS = {
    "grave_accent": "`~", "1": "1!", "2": "2@", "3": "3#", "4": "4$", "5": "5%", "6": "6^", "7": "7&",
    "8": "8*", "9": "9(", "0": "0)", "minus": "-_", "equal": "=+", "bracket_left": "[{",
    "bracket_right": "]}", "backslash": "\\|", "semicolon": ";:", "apostrophe": "'\"", "comma": ",<",
    "dot": ".>", "slash": "/?", "spc": " ",
}

# Function and modifier keysyms (0xfexx/0xffxx).
_SPECIAL = {
    0xFF08: "backspace", 0xFF09: "tab", 0xFE20: "tab", 0xFF0D: "ret", 0xFF13: "pause",
    0xFF14: "scroll_lock", 0xFF15: "sysrq", 0xFF1B: "esc", 0xFFFF: "delete",
    0xFF50: "home", 0xFF51: "left", 0xFF52: "up", 0xFF53: "right", 0xFF54: "down",
    0xFF55: "pgup", 0xFF56: "pgdn", 0xFF57: "end", 0xFF61: "print", 0xFF63: "insert",
    0xFF67: "menu", 0xFF7F: "num_lock",
    0xFF8D: "kp_enter", 0xFF95: "kp_7", 0xFF96: "kp_4", 0xFF97: "kp_8", 0xFF98: "kp_6",
    0xFF99: "kp_2", 0xFF9A: "kp_9", 0xFF9B: "kp_3", 0xFF9C: "kp_1", 0xFF9D: "kp_5",
    0xFF9E: "kp_0", 0xFF9F: "kp_decimal", 0xFFAA: "kp_multiply", 0xFFAB: "kp_add",
    0xFFAC: "kp_comma", 0xFFAD: "kp_subtract", 0xFFAE: "kp_decimal", 0xFFAF: "kp_divide",
    0xFFBD: "kp_equals",
    0xFFE1: "shift", 0xFFE2: "shift_r", 0xFFE3: "ctrl", 0xFFE4: "ctrl_r", 0xFFE5: "caps_lock",
    0xFFE7: "meta_l", 0xFFE8: "meta_r", 0xFFE9: "alt", 0xFFEA: "alt_r", 0xFE03: "alt_r",
    0xFFEB: "meta_l", 0xFFEC: "meta_r",
}
_SPECIAL.update({0xFFB0 + n: f"kp_{n}" for n in range(10)})
_SPECIAL.update({0xFFBE + n: f"f{n + 1}" for n in range(12)})


def _build() -> dict[int, str]:
    table = dict(_SPECIAL)
    for qcode, chars in _US_KEYS.items():
        for ch in chars:
            table[ord(ch)] = qcode
    for ch in "abcdefghijklmnopqrstuvwxyz":
        table[ord(ch)] = ch
        table[ord(ch.upper())] = ch
    return table


KEYSYM_TO_QCODE: Mapping[int, str] = MappingProxyType(_build())


def keysym_to_qcode(keysym: int) -> str | None:
    """The QKeyCode of the key that types ``keysym`` on a US layout; None for a symbol it cannot type."""
    return KEYSYM_TO_QCODE.get(keysym)
