"""SiFive CLINT (core-local interruptor): msip and mtimecmp for each hart, and the shared mtime.

Register layout (QEMU/SiFive facts): hart N's msip at 0x0 + 4*N, its mtimecmp at
0x4000 + 8*N, mtime at 0xbff8; 32- and 64-bit accesses.  The registers of harts the
board does not have read as zero and ignore writes, as QEMU's.  Time is the
machine's ``mtime`` (10 MHz: real time, or counted instructions under -icount).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

MSIP_OFF = 0x0
MTIMECMP_OFF = 0x4000
MTIME_OFF = 0xBFF8
SIZE = 0x10000
MASK64 = (1 << 64) - 1
MAX_HARTS = (MTIME_OFF - MTIMECMP_OFF) // 8     # the layout has room for this many harts' mtimecmp


class Clint:
    def __init__(self, get_time: Callable[[], int], set_time: Callable[[int], None],
                 set_msip: Sequence[Callable[[bool], None]], set_mtip: Sequence[Callable[[bool], None]]) -> None:
        """``set_msip[n]``/``set_mtip[n]`` drive hart n's MSIP and MTIP lines; one entry per hart."""
        if len(set_msip) != len(set_mtip) or not 1 <= len(set_msip) <= MAX_HARTS:
            raise ValueError(f"clint: 1 to {MAX_HARTS} harts, each with an MSIP and an MTIP line")
        self.get_time = get_time
        self.set_time = set_time
        self.set_msip = list(set_msip)
        self.set_mtip = list(set_mtip)
        self.harts = len(set_msip)
        self.msip = [0] * self.harts
        self.mtimecmp = [0] * self.harts    # QEMU resets it to 0: MTIP is pending at boot

    @staticmethod
    def _slice(value: int, offset: int, size: int) -> int:
        return (value >> (8 * offset)) & ((1 << (8 * size)) - 1)

    @staticmethod
    def _merge(old: int, offset: int, size: int, value: int) -> int:
        mask = ((1 << (8 * size)) - 1) << (8 * offset)
        return (old & ~mask) | ((value << (8 * offset)) & mask)

    def read(self, offset: int, size: int) -> int:
        if offset < 4 * self.harts:
            hart, off = divmod(offset, 4)
            return self._slice(self.msip[hart], off, size)
        if MTIMECMP_OFF <= offset < MTIMECMP_OFF + 8 * self.harts:
            hart, off = divmod(offset - MTIMECMP_OFF, 8)
            return self._slice(self.mtimecmp[hart], off, size)
        if MTIME_OFF <= offset < MTIME_OFF + 8:
            return self._slice(self.get_time(), offset - MTIME_OFF, size)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset < 4 * self.harts:
            hart, off = divmod(offset, 4)
            self.msip[hart] = self._merge(self.msip[hart], off, size, value) & 1
            self.set_msip[hart](bool(self.msip[hart]))
        elif MTIMECMP_OFF <= offset < MTIMECMP_OFF + 8 * self.harts:
            hart, off = divmod(offset - MTIMECMP_OFF, 8)
            self.mtimecmp[hart] = self._merge(self.mtimecmp[hart], off, size, value) & MASK64
            self.update()
        elif MTIME_OFF <= offset < MTIME_OFF + 8:
            self.set_time(self._merge(self.get_time(), offset - MTIME_OFF, size, value) & MASK64)
            self.update()

    def update(self) -> None:
        now = self.get_time()
        for cmp, line in zip(self.mtimecmp, self.set_mtip):
            line(now >= cmp)

    # ---- device protocol -------------------------------------------------
    def reset(self) -> None:
        """Power-on state: no software interrupt, mtimecmp 0 (so MTIP is pending at boot, as in QEMU)."""
        self.msip = [0] * self.harts
        self.mtimecmp = [0] * self.harts
        for line in self.set_msip:
            line(False)
        self.update()

    def save(self) -> dict[str, Any]:
        return {"msip": list(self.msip), "mtimecmp": list(self.mtimecmp)}

    def restore(self, state: dict[str, Any]) -> None:
        msip, mtimecmp = [int(v) for v in state["msip"]], [int(v) for v in state["mtimecmp"]]
        if (len(msip) != self.harts or len(mtimecmp) != self.harts or any(v not in (0, 1) for v in msip)
                or any(not 0 <= v <= MASK64 for v in mtimecmp)):
            raise ValueError(f"clint: bad state msip={msip} mtimecmp={mtimecmp} for {self.harts} hart(s)")
        self.msip, self.mtimecmp = msip, mtimecmp
        for level, line in zip(msip, self.set_msip):
            line(bool(level))
        self.update()
