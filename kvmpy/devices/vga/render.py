"""Rendering a VGA's video memory into the display contract's B,G,R,X pixels (numpy).

Three pictures, chosen as QEMU's vga_update_display chooses them: blank (the
attribute controller's palette-address-source bit is clear), text (GR6 bit 0
clear) or graphics. Text cells are (character, attribute) byte pairs in planes
0/1 every 4 bytes from the CRTC start address; glyphs come from plane 2
(32 rows a glyph, character-map select in SR3) or, before the guest loaded
any, from the PSF fallback font; colours go through the attribute palette and
the 6-bit DAC; the CRTC cursor is drawn over its cell in its blink phase.
Graphics are the Bochs VBE linear modes at 8 (DAC palette), 15/16, 24 and 32
bits per pixel, converted row by row with the same bit expansion as QEMU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvmpy.devices.vga import core as c
from kvmpy.devices.vga.dispi import VbeMode

if TYPE_CHECKING:
    import numpy as np

CURSOR_PERIOD_S = 2 * 16 / 60  # QEMU: 16 state changes per 60 Hz frame pair
MAX_TEXT_CELLS = 160 * 100  # QEMU's CH_ATTR_SIZE


@dataclass(frozen=True)
class TextGeometry:
    cols: int
    rows: int
    cell_w: int
    cell_h: int

    @property
    def size(self) -> tuple[int, int]:
        return self.cols * self.cell_w, self.rows * self.cell_h


def c6_to_8(v: "np.ndarray") -> "np.ndarray":
    v = v & 0x3F
    return (v << 2) | ((v & 1) << 1) | (v & 1)


def text_geometry(vga: c.VgaCore) -> TextGeometry:
    cr = vga.cr
    cheight = (cr[c.CRTC_MAX_SCAN] & 0x1F) + 1
    clock = vga.seq(c.SEQ_CLOCK_MODE)
    cw = 16 if clock & 0x08 else (8 if clock & 0x01 else 9)
    width = cr[c.CRTC_H_DISP] + 1
    if cr[c.CRTC_V_TOTAL] == 100:
        height = 100
    else:
        lines = cr[c.CRTC_V_DISP_END] | ((cr[c.CRTC_OVERFLOW] & 0x02) << 7) | ((cr[c.CRTC_OVERFLOW] & 0x40) << 3)
        height = (lines + 1) // cheight
    return TextGeometry(width, height, cw, cheight)


def palette16(vga: c.VgaCore) -> "np.ndarray":
    """The 16 text/planar colours as uint32 0x00RRGGBB."""
    import numpy as np

    ar = vga.ar
    idx = []
    for i in range(16):
        v = ar[i]
        if ar[c.ATC_MODE] & 0x80:
            v = ((ar[c.ATC_COLOR_PAGE] & 0xF) << 4) | (v & 0xF)
        else:
            v = ((ar[c.ATC_COLOR_PAGE] & 0xC) << 4) | (v & 0x3F)
        idx.append(v)
    pal = np.frombuffer(bytes(vga.palette), dtype=np.uint8).reshape(256, 3).astype(np.uint32)[idx]
    pal = c6_to_8(pal)
    return (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]


def palette256(vga: c.VgaCore) -> "np.ndarray":
    import numpy as np

    pal = np.frombuffer(bytes(vga.palette), dtype=np.uint8).reshape(256, 3).astype(np.uint32)
    if not vga.dispi.dac_8bit:
        pal = c6_to_8(pal)
    return (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]


def text_cells(vga: c.VgaCore, geo: TextGeometry) -> "np.ndarray":
    """(rows, cols) uint16 array of char | attr << 8, following the CRTC start, offset and line compare."""
    import numpy as np

    cr = vga.cr
    start = cr[c.CRTC_START_LO] | (cr[c.CRTC_START_HI] << 8)
    line_offset = cr[c.CRTC_OFFSET] << 3
    line_compare = cr[c.CRTC_LINE_COMPARE] | ((cr[c.CRTC_OVERFLOW] & 0x10) << 4) | ((cr[c.CRTC_MAX_SCAN] & 0x40) << 3)
    out = np.zeros((geo.rows, geo.cols), dtype=np.uint16)
    vram = vga.vram
    offset = start * 4
    line = 0
    for row in range(geo.rows):
        end = min(offset + geo.cols * 4, len(vram) - (len(vram) % 4))
        if end > offset:
            words = np.frombuffer(vram[offset:end], dtype=np.uint32)
            out[row, :len(words)] = (words & 0xFFFF).astype(np.uint16)
        line1 = line + geo.cell_h
        offset += line_offset
        if line < line_compare <= line1:
            offset = 0
        line = line1
    return out


def font_tables(vga: c.VgaCore, fallback: bytes | None) -> tuple["np.ndarray", "np.ndarray"]:
    """The two active character sets (SR3) as (256, 32) uint8 glyph rows each."""
    import numpy as np

    v = vga.seq(c.SEQ_CHARACTER_MAP)
    tables = []
    for sel in ((((v >> 4) & 1) | ((v << 1) & 6)), (((v >> 5) & 1) | ((v >> 1) & 6))):
        base = sel * 8192 * 4 + 2
        end = base + 256 * 32 * 4
        if end <= len(vga.vram):
            tables.append(np.frombuffer(vga.vram[base:end], dtype=np.uint8)[::4].reshape(256, 32))
        else:
            tables.append(np.zeros((256, 32), dtype=np.uint8))
    if fallback is not None and not tables[0].any() and not tables[1].any():
        fb = np.frombuffer(fallback, dtype=np.uint8).reshape(256, 32)
        return fb, fb
    return tables[0], tables[1]


def render_text(vga: c.VgaCore, geo: TextGeometry, cells: "np.ndarray", fonts: tuple["np.ndarray", "np.ndarray"],
                cursor_on: bool) -> "np.ndarray":
    """The text screen as a (height, width) uint32 array of 0x00RRGGBB."""
    import numpy as np

    pal = palette16(vga)
    ch = (cells & 0xFF).astype(np.intp)
    attr = (cells >> 8).astype(np.intp)
    rows_h = min(geo.cell_h, 32)
    glyph_rows = np.where(((attr >> 3) & 1)[..., None].astype(bool),
                          fonts[1][ch, :rows_h], fonts[0][ch, :rows_h])  # (R, C, h)
    bits = np.unpackbits(glyph_rows[..., None], axis=-1).astype(bool)  # (R, C, h, 8), bit 7 first
    if geo.cell_w == 9:
        dup = ((ch >= 0xB0) & (ch <= 0xDF) & bool(vga.ar[c.ATC_MODE] & 0x04))[..., None, None]
        ninth = np.where(dup, bits[..., 7:8], False)
        bits = np.concatenate([bits, ninth], axis=-1)
    elif geo.cell_w == 16:
        bits = np.repeat(bits, 2, axis=-1)
    cursor = _cursor_cell(vga, geo)
    if cursor is not None and cursor_on and cursor[2] < rows_h:
        r, col, first, last = cursor
        bits[r, col, first:last + 1, :] = True  # the cursor fills its lines in the foreground colour
    fg = pal[attr & 0xF][..., None, None]
    bg = pal[attr >> 4][..., None, None]
    pix = np.where(bits, fg, bg)  # (R, C, h, w)
    if rows_h < geo.cell_h:
        pix = np.concatenate([pix, np.broadcast_to(bg, pix.shape[:2] + (geo.cell_h - rows_h, pix.shape[3]))], axis=2)
    return pix.transpose(0, 2, 1, 3).reshape(geo.rows * geo.cell_h, geo.cols * geo.cell_w).astype(np.uint32)


def _cursor_cell(vga: c.VgaCore, geo: TextGeometry) -> tuple[int, int, int, int] | None:
    cr = vga.cr
    if cr[c.CRTC_CURSOR_START] & 0x20:
        return None
    start = cr[c.CRTC_START_LO] | (cr[c.CRTC_START_HI] << 8)
    pos = ((cr[c.CRTC_CURSOR_HI] << 8) | cr[c.CRTC_CURSOR_LO]) - start
    if not 0 <= pos < geo.cols * geo.rows:
        return None
    first = cr[c.CRTC_CURSOR_START] & 0x1F
    last = min(cr[c.CRTC_CURSOR_END] & 0x1F, geo.cell_h - 1)
    if last < first or first >= geo.cell_h:
        return None
    return pos // geo.cols, pos % geo.cols, first, last


def cursor_position(vga: c.VgaCore, geo: TextGeometry) -> tuple[int, int] | None:
    cell = _cursor_cell(vga, geo)
    return None if cell is None else (cell[0], cell[1])


def render_vbe_rows(vram: memoryview, mode: VbeMode, rows: "np.ndarray", pal256: "np.ndarray | None",
                    out: "np.ndarray") -> None:
    """Convert the listed rows of a VBE mode into ``out`` ((height, width) uint32 0x00RRGGBB), in place."""
    import numpy as np

    w, bpp = mode.width, mode.bpp
    bwidth = (w * bpp + 7) // 8
    for y in rows.tolist():
        at = mode.start + y * mode.line_offset
        if at + bwidth > len(vram):
            out[y] = 0
            continue
        raw = np.frombuffer(vram[at:at + bwidth], dtype=np.uint8)
        if bpp == 32:
            out[y] = raw.view(np.uint32) & 0xFFFFFF
        elif bpp == 24:
            px = raw.reshape(w, 3).astype(np.uint32)
            out[y] = (px[:, 2] << 16) | (px[:, 1] << 8) | px[:, 0]
        elif bpp in (15, 16):
            v = raw.view(np.uint16).astype(np.uint32)
            if bpp == 16:
                r, g, b = (v >> 8) & 0xF8, (v >> 3) & 0xFC, (v << 3) & 0xF8
            else:
                r, g, b = (v >> 7) & 0xF8, (v >> 2) & 0xF8, (v << 3) & 0xF8
            out[y] = (r << 16) | (g << 8) | b
        elif bpp == 8 and pal256 is not None:
            out[y] = pal256[raw]
        else:
            out[y] = 0  # 4 bpp planar VBE modes are not drawn


def vbe_row_pages(mode: VbeMode, page_shift: int) -> tuple["np.ndarray", "np.ndarray"]:
    """First and last framebuffer page of each visible row (for the dirty log)."""
    import numpy as np

    bwidth = (mode.width * mode.bpp + 7) // 8
    starts = mode.start + np.arange(mode.height, dtype=np.int64) * mode.line_offset
    return starts >> page_shift, (starts + max(bwidth, 1) - 1) >> page_shift
