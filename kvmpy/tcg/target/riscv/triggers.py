"""The debug trigger module's M-mode CSRs (tselect, tdata1-3, tinfo) as QEMU 7.2 exposes them.

Facts matched against qemu-system-riscv64 7.2 (tests/guests/riscv/conformance.S):

- two triggers, both reset to type 2 (address/data match, ``mcontrol``) with
  every other tdata1 field zero; tdata2 = tdata3 = 0;
- ``tinfo`` reads 0x44: types 2 and 6 (``mcontrol6``) are supported;
- a tselect write outside 0..1 is ignored;
- a tdata1 write whose type field (bits 63:60) is neither 2 nor 6 is ignored;
  otherwise tdata1 becomes the new type with only the load/store/execute and
  privilege-mode bits kept (plus VU/VS for type 6), and the size field kept only
  when it encodes a supported access size (any, 1, 2, 4 or 8 bytes); dmode,
  match, chain, action, timing, select and hit read back as zero;
- tdata2 holds any value; tdata3 writes are ignored (it reads 0).

Only the register behaviour is modelled: kvmpy does not yet raise the
breakpoint exception when a trigger matches (QEMU does).
"""

from __future__ import annotations

from dataclasses import dataclass, field

N_TRIGGERS = 2
TYPE_MCONTROL = 2
TYPE_MCONTROL6 = 6
TINFO = (1 << TYPE_MCONTROL) | (1 << TYPE_MCONTROL6)

TSELECT, TDATA1, TDATA2, TDATA3, TINFO_CSR = 0x7A0, 0x7A1, 0x7A2, 0x7A3, 0x7A4
CSRS = frozenset({TSELECT, TDATA1, TDATA2, TDATA3, TINFO_CSR})

_MODE_AND_ACCESS = 0x5F              # load, store, execute, U, S, M
_VU_VS = (1 << 23) | (1 << 24)       # mcontrol6 only
_SUPPORTED_SIZES = frozenset({0, 1, 2, 3, 5})     # any, 1, 2, 4 and 8 bytes


def _legalize(value: int) -> int | None:
    """The tdata1 a write of ``value`` leaves, or None when the write is ignored."""
    kind = value >> 60
    if kind == TYPE_MCONTROL:
        kept = value & _MODE_AND_ACCESS
        size = ((value >> 21) & 3) << 2 | (value >> 16) & 3
        if size in _SUPPORTED_SIZES:
            kept |= value & ((3 << 16) | (3 << 21))
    elif kind == TYPE_MCONTROL6:
        kept = value & (_MODE_AND_ACCESS | _VU_VS)
        if (value >> 16) & 0xF in _SUPPORTED_SIZES:
            kept |= value & (0xF << 16)
    else:
        return None
    return kind << 60 | kept


@dataclass
class TriggerModule:
    select: int = 0
    tdata1: list[int] = field(default_factory=lambda: [TYPE_MCONTROL << 60] * N_TRIGGERS)
    tdata2: list[int] = field(default_factory=lambda: [0] * N_TRIGGERS)

    def read(self, csr: int) -> int:
        if csr == TSELECT:
            return self.select
        if csr == TDATA1:
            return self.tdata1[self.select]
        if csr == TDATA2:
            return self.tdata2[self.select]
        if csr == TINFO_CSR:
            return TINFO
        return 0                                  # tdata3

    def write(self, csr: int, value: int) -> None:
        if csr == TSELECT:
            if value < N_TRIGGERS:
                self.select = value
        elif csr == TDATA1:
            new = _legalize(value)
            if new is not None:
                self.tdata1[self.select] = new
        elif csr == TDATA2:
            self.tdata2[self.select] = value
        # tdata3 and the read-only tinfo: writes are ignored
