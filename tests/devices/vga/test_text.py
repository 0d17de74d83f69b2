"""Text mode: the PSF fallback font, glyphs from plane 2, attribute colours and the CRTC cursor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kvmpy.devices.vga import core as c
from kvmpy.devices.vga.font import default_font, load_psf, parse_psf, FontError
from kvmpy.devices.vga.pci_vga import VgaPci

FONT = Path("/usr/share/consolefonts/Uni2-VGA16.psf.gz")
needs_font = pytest.mark.skipif(not FONT.exists(), reason="console-setup-linux is not installed (scripts/setup)")

# What a VGA BIOS programs for mode 3 (80x25, 9x16 cells): QEMU's and SeaVGABIOS's tables.
MODE3_SEQ = (0x03, 0x00, 0x03, 0x00, 0x02)
MODE3_CRTC = (0x5F, 0x4F, 0x50, 0x82, 0x55, 0x81, 0xBF, 0x1F, 0x00, 0x4F, 0x0D, 0x0E, 0x00, 0x00, 0x00, 0x00,
              0x9C, 0x8E, 0x8F, 0x28, 0x1F, 0x96, 0xB9, 0xA3, 0xFF)
MODE3_GFX = (0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x0E, 0x0F, 0xFF)
MODE3_ATTR = (0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3A, 0x3B, 0x3C, 0x3D, 0x3E, 0x3F,
              0x0C, 0x00, 0x0F, 0x08, 0x00)
# The EGA palette's 64 DAC entries a BIOS loads for mode 3 (6-bit components).
EGA = [(((i >> 2) & 1) * 42 + ((i >> 5) & 1) * 21, ((i >> 1) & 1) * 42 + ((i >> 4) & 1) * 21,
        (i & 1) * 42 + ((i >> 3) & 1) * 21) for i in range(64)]


def program_mode3(v: VgaPci) -> None:
    out = v.legacy_ports.write
    port = lambda p, val: out(p - c.PORT_BASE, 1, val)  # noqa: E731
    port(c.MIS_W, 0x67)
    for i, val in enumerate(MODE3_SEQ):
        port(c.SEQ_I, i)
        port(c.SEQ_D, val)
    port(c.CRT_IC, 0x11)
    port(c.CRT_DC, 0x0E)  # unlock CR0-7
    for i, val in enumerate(MODE3_CRTC):
        port(c.CRT_IC, i)
        port(c.CRT_DC, val)
    for i, val in enumerate(MODE3_GFX):
        port(c.GFX_I, i)
        port(c.GFX_D, val)
    v.legacy_ports.read(c.IS1_RC - c.PORT_BASE, 1)  # reset the attribute flip-flop
    for i, val in enumerate(MODE3_ATTR):
        port(c.ATT_W, i)
        port(c.ATT_W, val)
    port(c.PEL_IW, 0)
    for rgb in EGA:
        for comp in rgb:
            port(c.PEL_D, comp)
    port(c.ATT_W, 0x20)  # palette address source: the screen is on


def put_text(v: VgaPci, row: int, col: int, text: str, attr: int) -> None:
    for i, ch in enumerate(text.encode("cp437")):
        off = 0x18000 + 2 * (row * 80 + col + i)  # 0xB8000 in the legacy window
        v.legacy_window.write(off, 2, ch | attr << 8)


def to_rgb(frame_row: bytes) -> np.ndarray:
    return np.frombuffer(frame_row, dtype=np.uint32) & 0xFFFFFF


@needs_font
def test_psf_font_parses_with_its_unicode_table() -> None:
    font = load_psf(FONT)
    assert (font.width, font.height) == (8, 16) and len(font.glyphs) == 512
    assert font.glyph_for(ord("A")) is not None and font.glyph_for(0x2591) is not None  # "A", light shade
    with pytest.raises(FontError):
        parse_psf(b"not a font")
    with pytest.raises(FontError):
        parse_psf(b"\x36\x04\x00\x10" + b"\x00" * 100)  # truncated


@needs_font
def test_text_before_a_font_is_loaded_uses_the_psf_glyphs() -> None:
    v = VgaPci("vga", vgamem_mb=1)
    program_mode3(v)
    put_text(v, 2, 5, "A", 0x1E)  # yellow on blue
    u = v.refresh()
    f = u.frame
    assert (f.width, f.height) == (720, 400) and u.resized
    glyph = load_psf(FONT).glyph_for(ord("A"))
    assert glyph is not None
    fg, bg = 0xFFFF57, 0x0000A8  # EGA yellow (DAC 63,63,21) and blue (0,0,42), 6->8 bits as QEMU widens them
    for y in range(16):
        row = to_rgb(f.row(2 * 16 + y))[5 * 9:6 * 9]
        want = [fg if glyph[y] >> (7 - x) & 1 else bg for x in range(8)] + [bg]
        assert row.tolist() == want, y
    assert default_font() is not None


def test_glyphs_come_from_plane_2_once_the_guest_loads_a_font() -> None:
    v = VgaPci("vga", vgamem_mb=1)
    program_mode3(v)
    # Load a font as a BIOS does: plane 2 only, sequential addressing, map at 0xA0000.
    seq = lambda i, val: (v.legacy_ports.write(c.SEQ_I - c.PORT_BASE, 1, i),  # noqa: E731
                          v.legacy_ports.write(c.SEQ_D - c.PORT_BASE, 1, val))
    gfx = lambda i, val: (v.legacy_ports.write(c.GFX_I - c.PORT_BASE, 1, i),  # noqa: E731
                          v.legacy_ports.write(c.GFX_D - c.PORT_BASE, 1, val))
    seq(2, 0x04)
    seq(4, 0x07)
    gfx(4, 0x02)
    gfx(5, 0x00)
    gfx(6, 0x04)
    pattern = bytes([0x81, 0x42, 0x24, 0x18] * 4)  # an X, 16 rows
    for y, b in enumerate(pattern):
        v.legacy_window.write(ord("Z") * 32 + y, 1, b)
    seq(2, 0x03)
    seq(4, 0x02)
    gfx(4, 0x00)
    gfx(5, 0x10)
    gfx(6, 0x0E)
    put_text(v, 0, 0, "Z", 0x07)
    v.legacy_ports.write(c.CRT_IC - c.PORT_BASE, 1, c.CRTC_CURSOR_START)
    v.legacy_ports.write(c.CRT_DC - c.PORT_BASE, 1, 0x20)  # cursor off: it sits on this cell
    f = v.refresh().frame
    for y, b in enumerate(pattern):
        row = to_rgb(f.row(y))[:8]
        assert [(1 if px else 0) for px in row.tolist()] == [b >> (7 - x) & 1 for x in range(8)]


def test_cursor_and_dirty_rows() -> None:
    v = VgaPci("vga", vgamem_mb=1)
    program_mode3(v)
    v.refresh()
    assert v.refresh().dirty == []  # nothing changed: nothing to send
    put_text(v, 10, 0, "x", 0x07)
    u = v.refresh()
    assert [(r.y, r.h) for r in u.dirty] == [(160, 16)] and not u.resized
    pos = 24 * 80 + 3  # move the cursor: its old and new rows are redrawn
    for reg, val in ((c.CRTC_CURSOR_HI, pos >> 8), (c.CRTC_CURSOR_LO, pos & 0xFF)):
        v.legacy_ports.write(c.CRT_IC - c.PORT_BASE, 1, reg)
        v.legacy_ports.write(c.CRT_DC - c.PORT_BASE, 1, val)
    rows = {r.y // 16 for r in v.refresh().dirty}
    assert 24 in rows and rows <= {0, 24}
