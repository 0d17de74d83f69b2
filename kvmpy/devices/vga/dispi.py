"""The Bochs VBE "DISPI" register file: index/data registers that set linear-framebuffer modes.

Eleven 16-bit registers (ID, XRES, YRES, BPP, ENABLE, BANK, VIRT_WIDTH,
VIRT_HEIGHT, X_OFFSET, Y_OFFSET, VIDEO_MEMORY_64K), reached through I/O ports
0x1CE/0x1CF or the MMIO BAR at 0x500 (index = offset / 2). As QEMU does, a write
never fails: the mode registers are clamped to the closest valid mode for the
video memory (``fixup``), GETCAPS makes XRES/YRES/BPP read the maxima, and
enabling a mode clears the visible part of the framebuffer unless NOCLEARMEM.
Constants are from QEMU's include/hw/display/bochs-vbe.h.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

INDEX_ID, INDEX_XRES, INDEX_YRES, INDEX_BPP, INDEX_ENABLE, INDEX_BANK = 0, 1, 2, 3, 4, 5
INDEX_VIRT_WIDTH, INDEX_VIRT_HEIGHT, INDEX_X_OFFSET, INDEX_Y_OFFSET = 6, 7, 8, 9
INDEX_VIDEO_MEMORY_64K, INDEX_NB = 0xA, 0xA
ID0, ID5 = 0xB0C0, 0xB0C5
DISABLED, ENABLED, GETCAPS, DAC_8BIT, LFB_ENABLED, NOCLEARMEM = 0x00, 0x01, 0x02, 0x20, 0x40, 0x80
MAX_XRES, MAX_YRES, MAX_BPP = 16000, 12000, 32
IOPORT_INDEX, IOPORT_DATA = 0x1CE, 0x1CF
BPP_VALID = (4, 8, 16, 24, 32)


@dataclass(frozen=True)
class VbeMode:
    """An enabled linear mode: what the renderer needs."""

    width: int
    height: int
    bpp: int
    line_offset: int  # bytes per line
    start: int  # byte offset of the first visible pixel


class Dispi:
    """The register file for ``vbe_size`` bytes of video memory; ``on_enable`` hears mode switches."""

    def __init__(self, vbe_size: int, clear: Callable[[int], None], changed: Callable[[], None]) -> None:
        self.vbe_size = vbe_size
        self.clear = clear  # clear(n): zero the first n bytes of video memory
        self.changed = changed  # the mode registers moved (the VGA side mirrors them)
        self.index = 0
        self.regs = [0] * INDEX_NB
        self.line_offset = 0
        self.start_addr = 0  # in 4-byte units, as QEMU keeps it
        self.bank_offset = 0
        self.dac_8bit = False
        self.reset()

    @property
    def bank_mask(self) -> int:
        return (self.vbe_size >> 16) - 1

    def reset(self) -> None:
        self.index = 0
        self.regs = [0] * INDEX_NB
        self.regs[INDEX_ID] = ID5
        self.line_offset = 0
        self.start_addr = 0
        self.bank_offset = 0
        self.dac_8bit = False

    @property
    def enabled(self) -> bool:
        return bool(self.regs[INDEX_ENABLE] & ENABLED)

    def mode(self) -> VbeMode | None:
        if not self.enabled:
            return None
        r = self.regs
        return VbeMode(r[INDEX_XRES], r[INDEX_YRES], r[INDEX_BPP], self.line_offset, self.start_addr * 4)

    # ---- accesses ------------------------------------------------------------------
    def read_data(self) -> int:
        i = self.index
        if i < INDEX_NB:
            if self.regs[INDEX_ENABLE] & GETCAPS:
                return {INDEX_XRES: MAX_XRES, INDEX_YRES: MAX_YRES, INDEX_BPP: MAX_BPP}.get(i, self.regs[i])
            return self.regs[i]
        if i == INDEX_VIDEO_MEMORY_64K:
            return self.vbe_size >> 16
        return 0

    def write_data(self, value: int) -> None:
        i, value = self.index, value & 0xFFFF
        r = self.regs
        if i == INDEX_ID:
            if ID0 <= value <= ID5:
                r[i] = value
        elif i in (INDEX_XRES, INDEX_YRES, INDEX_BPP, INDEX_VIRT_WIDTH, INDEX_X_OFFSET, INDEX_Y_OFFSET):
            r[i] = value
            self.fixup()
            self.changed()
        elif i == INDEX_BANK:
            value &= self.bank_mask
            r[i] = value
            self.bank_offset = value << 16
            self.changed()
        elif i == INDEX_ENABLE:
            if value & ENABLED and not self.enabled:
                r[INDEX_VIRT_WIDTH] = r[INDEX_X_OFFSET] = r[INDEX_Y_OFFSET] = 0
                r[INDEX_ENABLE] |= ENABLED
                self.fixup()
                self.changed()
                if not value & NOCLEARMEM:
                    self.clear(r[INDEX_YRES] * self.line_offset)
            else:
                self.bank_offset = 0
            self.dac_8bit = bool(value & DAC_8BIT)
            r[INDEX_ENABLE] = value
            self.changed()

    def fixup(self) -> None:
        """Clamp the mode registers to a mode that fits (QEMU's vbe_fixup_regs)."""
        if not self.enabled:
            return
        r = self.regs
        if r[INDEX_BPP] in BPP_VALID:
            bits = r[INDEX_BPP]
        elif r[INDEX_BPP] == 15:
            bits = 16
        else:
            bits = r[INDEX_BPP] = 8
        r[INDEX_XRES] &= ~7 & 0xFFFF
        if r[INDEX_XRES] == 0:
            r[INDEX_XRES] = 8
        r[INDEX_XRES] = min(r[INDEX_XRES], MAX_XRES)
        r[INDEX_VIRT_WIDTH] &= ~7 & 0xFFFF
        r[INDEX_VIRT_WIDTH] = max(min(r[INDEX_VIRT_WIDTH], MAX_XRES), r[INDEX_XRES])
        linelength = r[INDEX_VIRT_WIDTH] * bits // 8
        maxy = self.vbe_size // linelength
        if r[INDEX_YRES] == 0:
            r[INDEX_YRES] = 1
        r[INDEX_YRES] = min(r[INDEX_YRES], MAX_YRES, maxy)
        r[INDEX_X_OFFSET] = min(r[INDEX_X_OFFSET], MAX_XRES)
        r[INDEX_Y_OFFSET] = min(r[INDEX_Y_OFFSET], MAX_YRES)
        offset = r[INDEX_X_OFFSET] * bits // 8 + r[INDEX_Y_OFFSET] * linelength
        if offset + r[INDEX_YRES] * linelength > self.vbe_size:
            r[INDEX_Y_OFFSET] = 0
            offset = r[INDEX_X_OFFSET] * bits // 8
            if offset + r[INDEX_YRES] * linelength > self.vbe_size:
                r[INDEX_X_OFFSET] = 0
                offset = 0
        r[INDEX_VIRT_HEIGHT] = maxy & 0xFFFF
        self.line_offset = linelength
        self.start_addr = offset // 4
