"""Puts tests/tcg_fallback/guests on sys.path so tests can import ``build`` and ``oracle``
(guest builds at test time, the kvmpy and qemu-system-riscv64 runners)."""

import sys
from pathlib import Path

_GUESTS = str(Path(__file__).resolve().parent / "guests")
if _GUESTS not in sys.path:
    sys.path.insert(0, _GUESTS)
