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

Matching, as QEMU 7.2 fires them (found by experiment, tests/guests/riscv/triggers.S):

- a trigger is armed while its execute, load or store bit is set; it fires only
  when the privilege bit of the current mode (M, S or U) is set too.  VU/VS of
  type 6 never match: there is no hypervisor extension.  The action is always
  the breakpoint exception (cause 3, tval 0), taken like any other exception
  (delegable to S through medeleg); there is no tcontrol, so an M-mode trigger
  also fires inside an M-mode trap handler;
- execute: before the instruction that starts exactly at tdata2 runs (by any
  path: straight line, jump, return; compressed or not); epc is that pc, and it
  wins over the instruction's own exceptions, even over a fault fetching it;
- load/store: before an access that overlaps [tdata2, tdata2 + n) by at least
  one byte, epc is the accessing instruction and a store has not written.
  ``n`` is the size field's raw encoding (1, 2, 3 or 5 bytes for the 1/2/4/8
  encodings) and 8 for "any", as QEMU 7.2 passes it on as a length; a range
  that wraps past the top of the address space never matches.  LR is a load,
  SC and AMOs are both (as QEMU's atomic path checks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

N_TRIGGERS = 2
TYPE_MCONTROL = 2
TYPE_MCONTROL6 = 6
TINFO = (1 << TYPE_MCONTROL) | (1 << TYPE_MCONTROL6)

TSELECT, TDATA1, TDATA2, TDATA3, TINFO_CSR = 0x7A0, 0x7A1, 0x7A2, 0x7A3, 0x7A4
CSRS = frozenset({TSELECT, TDATA1, TDATA2, TDATA3, TINFO_CSR})

LOAD, STORE, EXECUTE = 1, 2, 4
_MODE_AND_ACCESS = 0x5F              # load, store, execute, U, S, M
_ANY_SIZE_LENGTH = 8
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


def _length(tdata1: int) -> int:
    """The watched length: the size field's raw encoding, 8 when it says "any"."""
    if tdata1 >> 60 == TYPE_MCONTROL:
        size = ((tdata1 >> 21) & 3) << 2 | (tdata1 >> 16) & 3
    else:
        size = (tdata1 >> 16) & 0xF
    return size or _ANY_SIZE_LENGTH


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

    # ---- matching ----------------------------------------------------------
    def execute_addresses(self) -> frozenset[int]:
        """The pcs of armed execute triggers (whatever their privilege bits)."""
        return frozenset(self.tdata2[i] for i in range(N_TRIGGERS) if self.tdata1[i] & EXECUTE)

    def data_ranges(self) -> list[tuple[int, int]]:
        """(start, length) of every armed load or store trigger that can match."""
        out = []
        for t1, t2 in zip(self.tdata1, self.tdata2):
            n = _length(t1)
            if t1 & (LOAD | STORE) and t2 + n - 1 < 1 << 64:
                out.append((t2, n))
        return out

    def fires_execute(self, pc: int, priv: int) -> bool:
        """Whether an execute trigger stops the instruction at ``pc`` in mode ``priv`` (0 U, 1 S, 3 M)."""
        return any(t1 & EXECUTE and t2 == pc and t1 >> 3 & (1 << priv)
                   for t1, t2 in zip(self.tdata1, self.tdata2))

    def fires_data(self, vaddr: int, size: int, access: int, priv: int) -> bool:
        """Whether a trigger stops an access of ``size`` bytes at ``vaddr``; ``access``: LOAD, STORE or both."""
        for t1, t2 in zip(self.tdata1, self.tdata2):
            if t1 & access and t1 >> 3 & (1 << priv):
                n = _length(t1)
                if t2 + n - 1 < 1 << 64 and t2 < vaddr + size and vaddr < t2 + n:
                    return True
        return False
