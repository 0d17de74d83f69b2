"""VNC Authentication (RFC 6143 7.2.2): a 16-byte challenge the client encrypts with DES under its password.

The key is the password's first 8 bytes, NUL-padded, with the bits of every byte
reversed: the original VNC code fed the bytes to a DES implementation that numbered
bits from the other end, and every viewer since does the same. DES itself comes
from pycryptodome (a well-kept library), not from code of our own.
"""

from __future__ import annotations

import hmac
import os

from Crypto.Cipher import DES

CHALLENGE_SIZE = 16
PASSWORD_BYTES = 8  # only the first 8 characters of a VNC password count


def vnc_key(password: str) -> bytes:
    """The DES key VNC derives from ``password``."""
    raw = password.encode("latin-1", "replace")[:PASSWORD_BYTES].ljust(PASSWORD_BYTES, b"\0")
    return bytes(int(f"{b:08b}"[::-1], 2) for b in raw)


def new_challenge() -> bytes:
    return os.urandom(CHALLENGE_SIZE)


def response(password: str, challenge: bytes) -> bytes:
    """What a client holding ``password`` answers to ``challenge``."""
    return DES.new(vnc_key(password), DES.MODE_ECB).encrypt(challenge)


def check(password: str | None, challenge: bytes, answer: bytes) -> bool:
    """Whether ``answer`` proves the client knows ``password``; no password set never passes (as QEMU)."""
    if not password:
        return False
    return hmac.compare_digest(response(password, challenge), answer)
