"""VgaCore: the standard VGA's registers, its legacy memory window, and their coupling to Bochs VBE.

The register set a VGA BIOS and text-mode guests program through ports
0x3B0-0x3DF: sequencer (SR), graphics controller (GR), attribute controller (AR,
with its index/data flip-flop reset by reading input status 1), CRT controller
(CR, with the CR0-7 write protection), miscellaneous output, and the DAC (256
RGB palette entries through read/write indexes and a 3-step sub-index). Mono or
colour decoding follows MISC bit 0 as on real hardware.

Video memory is one buffer shared with the PCI framebuffer BAR, in QEMU's layout:
the four planes interleaved byte-wise (plane p of address a at 4*a + p). The
legacy window 0xA0000-0xBFFFF maps onto it by GR6's memory map, in chain-4,
odd/even (text) or planar (latched, write modes 0-3, logical ops, bit mask) mode.
While VBE is enabled the sequencer view used for memory decoding is a separate
copy (``sr_vbe``), as in QEMU, and enabling a mode rewrites GR/CR to match it.
All register masks and the reset state are QEMU 7.2's hw/display/vga.c facts.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from kvmpy.devices.device import DeviceStateError, bytes_field, check_keys, int_field
from kvmpy.devices.vga.dispi import INDEX_BPP, INDEX_NB, INDEX_XRES, INDEX_YRES, Dispi

SR_MASK = (0x03, 0x3D, 0x0F, 0x3F, 0x0E, 0x00, 0x00, 0xFF)
GR_MASK = (0x0F, 0x0F, 0x0F, 0x1F, 0x03, 0x7B, 0x0F, 0x0F, 0xFF, 0, 0, 0, 0, 0, 0, 0)
AR_COUNT = 0x15
# Ports (absolute).
ATT_W, ATT_R, MIS_W, SEQ_I, SEQ_D = 0x3C0, 0x3C1, 0x3C2, 0x3C4, 0x3C5
PEL_IR, PEL_IW, PEL_D, FTC_R, MIS_R, GFX_I, GFX_D = 0x3C7, 0x3C8, 0x3C9, 0x3CA, 0x3CC, 0x3CE, 0x3CF
CRT_IM, CRT_DM, IS1_RM, CRT_IC, CRT_DC, IS1_RC = 0x3B4, 0x3B5, 0x3BA, 0x3D4, 0x3D5, 0x3DA
PORT_BASE, PORT_END = 0x3B0, 0x3E0
# Register indexes.
SEQ_CLOCK_MODE, SEQ_PLANE_WRITE, SEQ_CHARACTER_MAP, SEQ_MEMORY_MODE = 1, 2, 3, 4
GFX_SR_VALUE, GFX_SR_ENABLE, GFX_COMPARE_VALUE, GFX_DATA_ROTATE = 0, 1, 2, 3
GFX_PLANE_READ, GFX_MODE, GFX_MISC, GFX_COMPARE_MASK, GFX_BIT_MASK = 4, 5, 6, 7, 8
CRTC_H_DISP, CRTC_V_TOTAL, CRTC_OVERFLOW, CRTC_MAX_SCAN = 0x01, 0x06, 0x07, 0x09
CRTC_CURSOR_START, CRTC_CURSOR_END, CRTC_START_HI, CRTC_START_LO = 0x0A, 0x0B, 0x0C, 0x0D
CRTC_CURSOR_HI, CRTC_CURSOR_LO, CRTC_V_SYNC_END, CRTC_V_DISP_END = 0x0E, 0x0F, 0x11, 0x12
CRTC_OFFSET, CRTC_MODE, CRTC_LINE_COMPARE = 0x13, 0x17, 0x18
ATC_MODE, ATC_OVERSCAN, ATC_PLANE_ENABLE, ATC_PEL, ATC_COLOR_PAGE = 0x10, 0x11, 0x12, 0x13, 0x14
SR04_CHN_4M, SR02_ALL_PLANES, CR11_LOCK_CR0_CR7, GR06_GRAPHICS_MODE = 0x08, 0x0F, 0x80, 0x01
ST01_V_RETRACE, ST01_DISP_ENABLE = 0x08, 0x01
MIS_COLOR = 0x01
LEGACY_BASE, LEGACY_SIZE = 0xA0000, 0x20000


def _mask16(v: int) -> int:
    """4 bits -> a 32-bit mask with 0xFF in each byte whose bit is set (one byte per plane)."""
    return sum(0xFF << (8 * p) for p in range(4) if v >> p & 1)


class VgaCore:
    """The register state of one VGA over ``vram`` (a writable memoryview of video memory)."""

    def __init__(self, vram: memoryview, vbe_size: int, mark_dirty: Callable[[int, int], None]) -> None:
        self.vram = vram
        self.vram_size = len(vram)
        self.mark_dirty = mark_dirty  # the VMM wrote video memory [offset, +length)
        self.lock = threading.RLock()
        self.dispi = Dispi(vbe_size, self._clear, self._vbe_changed)
        self.plane_updated = 0  # planes written since the renderer last looked (font changes)
        self.reset()

    # ---- state ----------------------------------------------------------------------
    def reset(self) -> None:
        with self.lock:
            self.sr_index = self.gr_index = self.ar_index = self.cr_index = 0
            self.sr = bytearray(8)
            self.sr_vbe = bytearray(8)
            self.gr = bytearray(16)
            self.ar = bytearray(AR_COUNT)
            self.cr = bytearray(256)
            self.ar_flip_flop = 0
            self.msr = self.fcr = self.st00 = self.st01 = 0
            self.dac_state = self.dac_sub_index = self.dac_read_index = self.dac_write_index = 0
            self.dac_cache = bytearray(3)
            self.palette = bytearray(768)
            self.latch = 0
            self.dispi.reset()
            self.plane_updated = 0xF

    def seq(self, idx: int) -> int:
        """The sequencer register the hardware uses (the VBE copy while VBE is on)."""
        return self.sr_vbe[idx] if self.dispi.enabled else self.sr[idx]

    def _clear(self, length: int) -> None:
        n = max(0, min(length, self.vram_size))
        self.vram[:n] = bytes(n)
        self.mark_dirty(0, n)

    def _vbe_changed(self) -> None:
        """Mirror an enabled VBE mode into the VGA registers (QEMU's vbe_update_vgaregs)."""
        d = self.dispi
        if not d.enabled:
            return
        gr, cr = self.gr, self.cr
        gr[GFX_MISC] = (gr[GFX_MISC] & ~0x0C & 0xFF) | 0x04 | GR06_GRAPHICS_MODE
        cr[CRTC_MODE] |= 3
        cr[CRTC_OFFSET] = (d.line_offset >> 3) & 0xFF
        cr[CRTC_H_DISP] = ((d.regs[INDEX_XRES] >> 3) - 1) & 0xFF
        h = d.regs[INDEX_YRES] - 1
        cr[CRTC_V_DISP_END] = h & 0xFF
        cr[CRTC_OVERFLOW] = (cr[CRTC_OVERFLOW] & ~0x42 & 0xFF) | ((h >> 7) & 0x02) | ((h >> 3) & 0x40)
        cr[CRTC_LINE_COMPARE] = 0xFF
        cr[CRTC_OVERFLOW] |= 0x10
        cr[CRTC_MAX_SCAN] |= 0x40
        if d.regs[INDEX_BPP] == 4:
            shift_control = 0
            self.sr_vbe[SEQ_CLOCK_MODE] &= ~8 & 0xFF
        else:
            shift_control = 2
            self.sr_vbe[SEQ_MEMORY_MODE] |= SR04_CHN_4M
            self.sr_vbe[SEQ_PLANE_WRITE] |= SR02_ALL_PLANES
        gr[GFX_MODE] = (gr[GFX_MODE] & ~0x60 & 0xFF) | (shift_control << 5)
        cr[CRTC_MAX_SCAN] &= ~0x9F & 0xFF

    # ---- I/O ports ------------------------------------------------------------------------
    def _port_invalid(self, port: int) -> bool:
        if self.msr & MIS_COLOR:
            return 0x3B0 <= port <= 0x3BF
        return 0x3D0 <= port <= 0x3DF

    def ioport_read(self, port: int) -> int:
        with self.lock:
            if self._port_invalid(port):
                return 0xFF
            if port == ATT_W:
                return self.ar_index if self.ar_flip_flop == 0 else 0
            if port == ATT_R:
                i = self.ar_index & 0x1F
                return self.ar[i] if i < AR_COUNT else 0
            if port == MIS_W:
                return self.st00
            if port == SEQ_I:
                return self.sr_index
            if port == SEQ_D:
                return self.sr[self.sr_index]
            if port == PEL_IR:
                return self.dac_state
            if port == PEL_IW:
                return self.dac_write_index
            if port == PEL_D:
                val = self.palette[self.dac_read_index * 3 + self.dac_sub_index]
                self.dac_sub_index += 1
                if self.dac_sub_index == 3:
                    self.dac_sub_index = 0
                    self.dac_read_index = (self.dac_read_index + 1) & 0xFF
                return val
            if port == FTC_R:
                return self.fcr
            if port == MIS_R:
                return self.msr
            if port == GFX_I:
                return self.gr_index
            if port == GFX_D:
                return self.gr[self.gr_index]
            if port in (CRT_IM, CRT_IC):
                return self.cr_index
            if port in (CRT_DM, CRT_DC):
                return self.cr[self.cr_index]
            if port in (IS1_RM, IS1_RC):
                self.st01 ^= ST01_V_RETRACE | ST01_DISP_ENABLE  # toggles, to satisfy retrace polling
                self.ar_flip_flop = 0
                return self.st01
            return 0

    def ioport_write(self, port: int, val: int) -> None:
        val &= 0xFF
        with self.lock:
            if self._port_invalid(port):
                return
            if port == ATT_W:
                if self.ar_flip_flop == 0:
                    self.ar_index = val & 0x3F
                else:
                    i = self.ar_index & 0x1F
                    if i < 0x10:
                        self.ar[i] = val & 0x3F
                    elif i == ATC_MODE:
                        self.ar[i] = val & ~0x10 & 0xFF
                    elif i == ATC_OVERSCAN:
                        self.ar[i] = val
                    elif i == ATC_PLANE_ENABLE:
                        self.ar[i] = val & ~0xC0 & 0xFF
                    elif i in (ATC_PEL, ATC_COLOR_PAGE):
                        self.ar[i] = val & ~0xF0 & 0xFF
                self.ar_flip_flop ^= 1
            elif port == MIS_W:
                self.msr = val & ~0x10 & 0xFF
            elif port == SEQ_I:
                self.sr_index = val & 7
            elif port == SEQ_D:
                self.sr[self.sr_index] = val & SR_MASK[self.sr_index]
            elif port == PEL_IR:
                self.dac_read_index, self.dac_sub_index, self.dac_state = val, 0, 3
            elif port == PEL_IW:
                self.dac_write_index, self.dac_sub_index, self.dac_state = val, 0, 0
            elif port == PEL_D:
                self.dac_cache[self.dac_sub_index] = val
                self.dac_sub_index += 1
                if self.dac_sub_index == 3:
                    at = self.dac_write_index * 3
                    self.palette[at:at + 3] = self.dac_cache
                    self.dac_sub_index = 0
                    self.dac_write_index = (self.dac_write_index + 1) & 0xFF
            elif port == GFX_I:
                self.gr_index = val & 0x0F
            elif port == GFX_D:
                self.gr[self.gr_index] = val & GR_MASK[self.gr_index]
                self._vbe_changed()
            elif port in (CRT_IM, CRT_IC):
                self.cr_index = val
            elif port in (CRT_DM, CRT_DC):
                if self.cr[CRTC_V_SYNC_END] & CR11_LOCK_CR0_CR7 and self.cr_index <= CRTC_OVERFLOW:
                    if self.cr_index == CRTC_OVERFLOW:  # bit 4 stays writable
                        self.cr[CRTC_OVERFLOW] = (self.cr[CRTC_OVERFLOW] & ~0x10 & 0xFF) | (val & 0x10)
                        self._vbe_changed()
                    return
                self.cr[self.cr_index] = val
                self._vbe_changed()
            elif port in (IS1_RM, IS1_RC):
                self.fcr = val & 0x10

    # ---- the legacy memory window (offsets from 0xA0000) ------------------------------------
    def _window(self, addr: int) -> int | None:
        addr &= 0x1FFFF
        mode = (self.gr[GFX_MISC] >> 2) & 3
        if mode == 1:
            return None if addr >= 0x10000 else addr + self.dispi.bank_offset
        if mode == 2:
            addr -= 0x10000
        elif mode == 3:
            addr -= 0x18000
        return addr if mode == 0 or 0 <= addr < 0x8000 else None

    def mem_readb(self, offset: int) -> int:
        with self.lock:
            addr = self._window(offset)
            if addr is None:
                return 0xFF
            if self.seq(SEQ_MEMORY_MODE) & SR04_CHN_4M:
                return self.vram[addr] if addr < self.vram_size else 0xFF
            if self.gr[GFX_MODE] & 0x10:  # odd/even (text mode)
                plane = (self.gr[GFX_PLANE_READ] & 2) | (addr & 1)
                a = ((addr & ~1) << 1) | plane
                return self.vram[a] if a < self.vram_size else 0xFF
            if addr * 4 + 4 > self.vram_size:
                return 0xFF
            self.latch = int.from_bytes(self.vram[addr * 4:addr * 4 + 4], "little")
            if not self.gr[GFX_MODE] & 0x08:
                return (self.latch >> (8 * (self.gr[GFX_PLANE_READ] & 3))) & 0xFF
            ret = (self.latch ^ _mask16(self.gr[GFX_COMPARE_VALUE])) & _mask16(self.gr[GFX_COMPARE_MASK])
            ret |= ret >> 16
            ret |= ret >> 8
            return ~ret & 0xFF

    def mem_writeb(self, offset: int, val: int) -> None:
        val &= 0xFF
        with self.lock:
            addr = self._window(offset)
            if addr is None:
                return
            if self.seq(SEQ_MEMORY_MODE) & SR04_CHN_4M:
                mask = 1 << (addr & 3)
                if self.seq(SEQ_PLANE_WRITE) & mask and addr < self.vram_size:
                    self.vram[addr] = val
                    self.plane_updated |= mask
                    self.mark_dirty(addr, 1)
                return
            if self.gr[GFX_MODE] & 0x10:
                plane = (self.gr[GFX_PLANE_READ] & 2) | (addr & 1)
                mask = 1 << plane
                if self.seq(SEQ_PLANE_WRITE) & mask:
                    a = ((addr & ~1) << 1) | plane
                    if a < self.vram_size:
                        self.vram[a] = val
                        self.plane_updated |= mask
                        self.mark_dirty(a, 1)
                return
            self._planar_write(addr, val)

    def _planar_write(self, addr: int, val: int) -> None:
        gr = self.gr
        write_mode = gr[GFX_MODE] & 3
        if write_mode == 1:
            v = self.latch
        else:
            if write_mode == 0:
                b = gr[GFX_DATA_ROTATE] & 7
                v = ((val >> b) | (val << (8 - b))) & 0xFF
                v *= 0x01010101
                set_mask = _mask16(gr[GFX_SR_ENABLE])
                v = (v & ~set_mask) | (_mask16(gr[GFX_SR_VALUE]) & set_mask)
                bit_mask = gr[GFX_BIT_MASK]
            elif write_mode == 2:
                v = _mask16(val & 0x0F)
                bit_mask = gr[GFX_BIT_MASK]
            else:
                b = gr[GFX_DATA_ROTATE] & 7
                rot = (val >> b) | (val << (8 - b))
                bit_mask = gr[GFX_BIT_MASK] & rot & 0xFF
                v = _mask16(gr[GFX_SR_VALUE])
            func = gr[GFX_DATA_ROTATE] >> 3
            if func == 1:
                v &= self.latch
            elif func == 2:
                v |= self.latch
            elif func == 3:
                v ^= self.latch
            bit_mask *= 0x01010101
            v = (v & bit_mask) | (self.latch & ~bit_mask)
        mask = self.seq(SEQ_PLANE_WRITE)
        self.plane_updated |= mask
        write_mask = _mask16(mask)
        if addr * 4 + 4 > self.vram_size:
            return
        old = int.from_bytes(self.vram[addr * 4:addr * 4 + 4], "little")
        new = (old & ~write_mask) | (v & write_mask)
        self.vram[addr * 4:addr * 4 + 4] = (new & 0xFFFFFFFF).to_bytes(4, "little")
        self.mark_dirty(addr * 4, 4)

    # ---- migration ------------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        with self.lock:
            d = self.dispi
            return {"sr_index": self.sr_index, "sr": bytes(self.sr), "sr_vbe": bytes(self.sr_vbe),
                    "gr_index": self.gr_index, "gr": bytes(self.gr), "ar_index": self.ar_index,
                    "ar": bytes(self.ar), "ar_flip_flop": self.ar_flip_flop, "cr_index": self.cr_index,
                    "cr": bytes(self.cr), "msr": self.msr, "fcr": self.fcr, "st00": self.st00, "st01": self.st01,
                    "dac_state": self.dac_state, "dac_sub_index": self.dac_sub_index,
                    "dac_read_index": self.dac_read_index, "dac_write_index": self.dac_write_index,
                    "dac_cache": bytes(self.dac_cache), "palette": bytes(self.palette), "latch": self.latch,
                    "vbe_index": d.index, "vbe_regs": list(d.regs), "vbe_line_offset": d.line_offset,
                    "vbe_start_addr": d.start_addr, "bank_offset": d.bank_offset, "dac_8bit": d.dac_8bit}

    _BYTES = {"sr": 8, "sr_vbe": 8, "gr": 16, "ar": AR_COUNT, "cr": 256, "dac_cache": 3, "palette": 768}
    _BYTE_INTS = ("sr_index", "gr_index", "ar_index", "cr_index", "msr", "fcr", "st00", "st01", "dac_state",
                  "dac_read_index", "dac_write_index")

    def validate(self, state: dict[str, Any]) -> dict[str, Any]:
        check_keys(state, set(self._BYTES) | set(self._BYTE_INTS) | {
            "ar_flip_flop", "dac_sub_index", "latch", "vbe_index", "vbe_regs", "vbe_line_offset", "vbe_start_addr",
            "bank_offset", "dac_8bit"})
        out: dict[str, Any] = {k: bytes_field(state, k, n, exact=True) for k, n in self._BYTES.items()}
        for k in self._BYTE_INTS:
            out[k] = int_field(state, k, 0, 0xFF)
        if out["sr_index"] > 7 or out["gr_index"] > 15 or out["ar_index"] > 0x3F:
            raise DeviceStateError("a VGA register index is out of range")
        out["ar_flip_flop"] = int_field(state, "ar_flip_flop", 0, 1)
        out["dac_sub_index"] = int_field(state, "dac_sub_index", 0, 2)
        out["latch"] = int_field(state, "latch", 0, 0xFFFFFFFF)
        out["vbe_index"] = int_field(state, "vbe_index", 0, 0xFFFF)
        regs = state["vbe_regs"]
        if not isinstance(regs, list) or len(regs) != INDEX_NB or any(type(r) is not int or not 0 <= r <= 0xFFFF
                                                                      for r in regs):
            raise DeviceStateError(f"vbe_regs must be {INDEX_NB} 16-bit integers")
        out["vbe_regs"] = list(regs)
        vbe = self.dispi.vbe_size
        out["vbe_line_offset"] = int_field(state, "vbe_line_offset", 0, 0xFFFFF)
        out["vbe_start_addr"] = int_field(state, "vbe_start_addr", 0, vbe // 4)
        out["bank_offset"] = int_field(state, "bank_offset", 0, max(0, vbe - 0x10000))
        dac8 = state["dac_8bit"]
        if type(dac8) is not bool:
            raise DeviceStateError("dac_8bit must be a boolean")
        out["dac_8bit"] = dac8
        return out

    def restore(self, state: dict[str, Any]) -> None:
        s = self.validate(state)
        with self.lock:
            for k in self._BYTES:
                setattr(self, k, bytearray(s[k]))
            for k in (*self._BYTE_INTS, "ar_flip_flop", "dac_sub_index", "latch"):
                setattr(self, k, s[k])
            d = self.dispi
            d.index, d.regs, d.line_offset = s["vbe_index"], s["vbe_regs"], s["vbe_line_offset"]
            d.start_addr, d.bank_offset, d.dac_8bit = s["vbe_start_addr"], s["bank_offset"], s["dac_8bit"]
            d.fixup()  # a hostile stream cannot describe a mode beyond video memory
            self._vbe_changed()
            self.plane_updated = 0xF
