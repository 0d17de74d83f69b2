"""SiFive PLIC with level-triggered sources and two contexts per hart (hart N: M-mode 2N, S-mode 2N+1).

Layout facts (as QEMU's virt): priorities at 0x0 + 4*source, pending bits at
0x1000, enables at 0x2000 + 0x80*context, threshold at 0x200000 + 0x1000*context
and claim/complete at threshold + 4.  A claimed source is not signalled again
until it is completed.  Registers of contexts the board does not have read as
zero and ignore writes, as QEMU's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

NUM_SOURCES = 96
SIZE = 0x600000
PRIORITY_MASK = 7


@dataclass
class PlicLine:
    """The IrqLine a device holds for one PLIC source."""

    plic: "Plic"
    source: int

    def set_level(self, level: bool) -> None:
        self.plic.set_level(self.source, level)


class Plic:
    def __init__(self, outputs: list[Callable[[bool], None]]) -> None:
        """``outputs[c]`` drives context c's line: MEIP of hart c // 2 for even c, its SEIP for odd c."""
        self.outputs = outputs
        self.contexts = len(outputs)
        self._clear()

    def _clear(self) -> None:
        self.priority = [0] * NUM_SOURCES
        self.level = [False] * NUM_SOURCES
        self.pending = 0
        self.claimed = 0
        self.enable = [0] * self.contexts
        self.threshold = [0] * self.contexts

    # ---- device protocol -------------------------------------------------
    def reset(self) -> None:
        """Power-on state: every priority, enable and threshold 0, nothing pending or claimed.

        Source levels are cleared too: each device drives its line again on its own reset."""
        self._clear()
        self.update()

    def save(self) -> dict[str, Any]:
        return {"priority": list(self.priority), "level": list(self.level), "pending": self.pending,
                "claimed": self.claimed, "enable": list(self.enable), "threshold": list(self.threshold)}

    def restore(self, state: dict[str, Any]) -> None:
        """Validate everything first, then apply: a bad state changes nothing."""
        sources = (1 << NUM_SOURCES) - 2              # source 0 does not exist
        priority = [int(p) for p in state["priority"]]
        level = [bool(v) for v in state["level"]]
        enable = [int(e) for e in state["enable"]]
        threshold = [int(t) for t in state["threshold"]]
        pending, claimed = int(state["pending"]), int(state["claimed"])
        if (len(priority) != NUM_SOURCES or len(level) != NUM_SOURCES or len(enable) != self.contexts
                or len(threshold) != self.contexts
                or any(not 0 <= p <= PRIORITY_MASK for p in priority + threshold)
                or any(not 0 <= v <= sources or v & ~sources for v in enable + [pending, claimed])):
            raise ValueError("plic: saved state has the wrong shape or out-of-range values")
        self.priority, self.level, self.enable, self.threshold = priority, level, enable, threshold
        self.pending, self.claimed = pending, claimed
        self.update()

    def line(self, source: int) -> PlicLine:
        if not 0 < source < NUM_SOURCES:
            raise ValueError(f"PLIC source {source} out of range")
        return PlicLine(self, source)

    def set_level(self, source: int, level: bool) -> None:
        self.level[source] = level
        if level and not self.claimed >> source & 1:
            self.pending |= 1 << source
        elif not level:
            self.pending &= ~(1 << source)
        self.update()

    def _best(self, ctx: int) -> int:
        cand = self.pending & self.enable[ctx] & ~self.claimed
        best, best_prio = 0, self.threshold[ctx]
        src = 1
        while cand >> src:
            if cand >> src & 1 and self.priority[src] > best_prio:
                best, best_prio = src, self.priority[src]
            src += 1
        return best

    def update(self) -> None:
        for ctx, out in enumerate(self.outputs):
            out(self._best(ctx) != 0)

    def read(self, offset: int, size: int) -> int:
        if offset < 0x1000:
            src = offset >> 2
            return self.priority[src] if src < NUM_SOURCES else 0
        if offset < 0x2000:
            word = (offset - 0x1000) >> 2
            return (self.pending >> (32 * word)) & 0xFFFFFFFF
        if offset < 0x200000:
            ctx, word = divmod(offset - 0x2000, 0x80)
            if ctx < self.contexts:
                return (self.enable[ctx] >> (8 * word)) & 0xFFFFFFFF
            return 0
        ctx, reg = divmod(offset - 0x200000, 0x1000)
        if ctx >= self.contexts:
            return 0
        if reg == 0:
            return self.threshold[ctx]
        if reg == 4:
            src = self._best(ctx)
            if src:
                self.pending &= ~(1 << src)
                self.claimed |= 1 << src
                self.update()
            return src
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFFFFFFFF
        if offset < 0x1000:
            src = offset >> 2
            if 0 < src < NUM_SOURCES:
                self.priority[src] = value & PRIORITY_MASK
        elif offset < 0x2000:
            return                    # pending bits are read-only
        elif offset < 0x200000:
            ctx, byte = divmod(offset - 0x2000, 0x80)
            if ctx < self.contexts and byte < NUM_SOURCES // 8:
                shift = 8 * byte
                mask = (0xFFFFFFFF << shift) & ((1 << NUM_SOURCES) - 2)
                self.enable[ctx] = (self.enable[ctx] & ~mask) | ((value << shift) & mask)
        else:
            ctx, reg = divmod(offset - 0x200000, 0x1000)
            if ctx >= self.contexts:
                return
            if reg == 0:
                self.threshold[ctx] = value & PRIORITY_MASK
            elif reg == 4 and 0 < value < NUM_SOURCES:
                self.claimed &= ~(1 << value)
                if self.level[value]:
                    self.pending |= 1 << value
        self.update()
