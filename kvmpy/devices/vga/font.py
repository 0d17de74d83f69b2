"""The fallback text-mode font: a PC Screen Font (PSF1/PSF2) file from Debian's console-setup fonts.

A VGA renders text with the glyphs the guest loaded into plane 2 (every VGA BIOS
does that at its mode set). Before any guest did, the adapter draws with a font
read from ``/usr/share/consolefonts`` (package ``console-setup-linux``): its glyphs
are looked up through the file's Unicode table by the code page 437 meaning of
each character byte, so the result is in the order a VGA's character generator
holds it (256 glyphs of up to 32 rows, one byte a row, bit 7 leftmost).
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FONT_DIRS = (Path("/usr/share/consolefonts"), Path("/usr/share/kbd/consolefonts"))
DEFAULT_FONTS = ("Uni2-VGA16.psf.gz", "Lat15-VGA16.psf.gz", "default8x16.psf.gz")
PSF1_MAGIC, PSF2_MAGIC = b"\x36\x04", b"\x72\xb5\x4a\x86"
PSF1_MODE512, PSF1_MODEHASTAB = 0x01, 0x02
PSF2_HAS_UNICODE_TABLE = 0x01
MAX_FONT_BYTES = 4 << 20
GLYPH_ROWS = 32  # a VGA glyph slot


class FontError(ValueError):
    """A font file that is not a PSF font kvmpy can use."""


@dataclass(frozen=True)
class PsfFont:
    """Glyph bitmaps (``height`` rows of ``(width + 7) // 8`` bytes each) and a Unicode -> glyph map."""

    width: int
    height: int
    glyphs: tuple[bytes, ...]
    unicode: dict[int, int]

    def glyph_for(self, codepoint: int) -> bytes | None:
        index = self.unicode.get(codepoint)
        if index is None and not self.unicode and codepoint < len(self.glyphs):
            index = codepoint  # a font without a table is in code-page order
        return self.glyphs[index] if index is not None else None

    def vga_table(self) -> bytes:
        """256 glyph slots of 32 bytes (the layout of VGA plane 2), by code page 437."""
        out = bytearray(256 * GLYPH_ROWS)
        for code in range(256):
            cp = ord(bytes([code]).decode("cp437")) if code >= 0x20 else _CP437_CONTROL[code]
            glyph = self.glyph_for(cp)
            if glyph is None:
                continue
            stride = (self.width + 7) // 8
            for row in range(min(self.height, GLYPH_ROWS)):
                out[code * GLYPH_ROWS + row] = glyph[row * stride]  # the leftmost 8 columns
        return bytes(out)


# Code page 437's pictures for 0x00-0x1F (what a VGA shows for those bytes).
_CP437_CONTROL = (0x0000, 0x263A, 0x263B, 0x2665, 0x2666, 0x2663, 0x2660, 0x2022, 0x25D8, 0x25CB, 0x25D9,
                  0x2642, 0x2640, 0x266A, 0x266B, 0x263C, 0x25BA, 0x25C4, 0x2195, 0x203C, 0x00B6, 0x00A7,
                  0x25AC, 0x21A8, 0x2191, 0x2193, 0x2192, 0x2190, 0x221F, 0x2194, 0x25B2, 0x25BC)


def parse_psf(data: bytes) -> PsfFont:
    """A PSF1 or PSF2 font from its (uncompressed) bytes; FontError when malformed."""
    if data[:2] == PSF1_MAGIC and len(data) >= 4:
        mode, height = data[2], data[3]
        count = 512 if mode & PSF1_MODE512 else 256
        width, stride, start = 8, 1, 4
        has_table = bool(mode & PSF1_MODEHASTAB) or bool(mode & 0x04)
        unit, term, seq = 2, 0xFFFF, 0xFFFE
    elif data[:4] == PSF2_MAGIC and len(data) >= 32:
        fields = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "little") for i in range(7)]
        _version, start, flags, count, charsize, height, width = fields
        stride = (width + 7) // 8
        if charsize != stride * height or count > 65536:
            raise FontError("PSF2 header is inconsistent")
        has_table = bool(flags & PSF2_HAS_UNICODE_TABLE)
        unit, term, seq = 1, 0xFF, 0xFE
    else:
        raise FontError("not a PSF font")
    if height == 0 or width == 0:
        raise FontError("PSF font with empty glyphs")
    size = stride * height
    end = start + count * size
    if end > len(data):
        raise FontError("PSF font is truncated")
    glyphs = tuple(data[start + i * size:start + (i + 1) * size] for i in range(count))
    table: dict[int, int] = {}
    if has_table:
        _read_table(data[end:], unit, term, seq, count, table)
    return PsfFont(width, height, glyphs, table)


def _read_table(raw: bytes, unit: int, term: int, seq: int, count: int, table: dict[int, int]) -> None:
    glyph, pos, in_seq = 0, 0, False
    while glyph < count and pos < len(raw):
        if unit == 2:
            if pos + 2 > len(raw):
                break
            value = int.from_bytes(raw[pos:pos + 2], "little")
            pos += 2
        else:
            value = raw[pos]
            if value not in (term, seq):
                end = pos + 1
                while end < len(raw) and raw[end] & 0xC0 == 0x80:
                    end += 1
                try:
                    value = ord(raw[pos:end].decode("utf-8"))
                except (UnicodeDecodeError, TypeError):
                    value = -1
                pos = end
            else:
                pos += 1
        if value == term:
            glyph, in_seq = glyph + 1, False
        elif value == seq:
            in_seq = True
        elif not in_seq and value >= 0:
            table.setdefault(value, glyph)


def load_psf(path: Path) -> PsfFont:
    """Read a (possibly gzip-compressed) PSF file."""
    with open(path, "rb") as f:
        head = f.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    with opener(path, "rb") as f:  # type: ignore[operator]
        data = f.read(MAX_FONT_BYTES + 1)
    if len(data) > MAX_FONT_BYTES:
        raise FontError(f"{path}: too large for a console font")
    return parse_psf(data)


def default_font() -> PsfFont | None:
    """The first installed default font, or None (then text is drawn as blank cells) — logged once."""
    for d in FONT_DIRS:
        for name in DEFAULT_FONTS:
            path = d / name
            if path.exists():
                try:
                    return load_psf(path)
                except (OSError, FontError) as exc:
                    log.warning("cannot use console font %s: %s", path, exc)
    log.warning("no console font found (install console-setup-linux): text before the guest loads a font is blank")
    return None
