"""The PCI display adapters QEMU calls ``VGA`` (std VGA) and ``bochs-display``, as a DisplaySource.

``VGA`` (1234:1111 rev 2, class 0x0300): BAR0 is the prefetchable framebuffer
(``vgamem_mb``, default 16 MiB, a power of two from 1 to 512), a RAM block
mapped into the guest as its own KVM slot and logged for dirty pages; BAR2 is
4 KiB of MMIO: the EDID blob at 0x000, the VGA ports 0x3C0-0x3DF at 0x400, the
Bochs DISPI registers at 0x500 (16-bit, index = offset / 2) and QEMU's extension
registers at 0x600 (size, framebuffer byte order). The legacy side is the ISA
ports 0x3B0-0x3DF, the DISPI index/data ports 0x1CE/0x1CF and the 0xA0000-0xBFFFF
window. ``bochs-display`` (class 0x0380) has the same BARs without any legacy VGA.

``refresh()`` is the display contract's DisplaySource: in a VBE mode it reads
KVM's dirty log for the framebuffer slot and redraws only the scanlines whose
pages changed; text mode redraws the cells whose character, attribute or cursor
changed. State (registers and mode) saves and restores with the PCI config
space; the framebuffer is RAM and migrates with the guest's RAM.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from kvmpy.devices.device import check_keys
from kvmpy.devices.pci.device import Bar, BarKind, PciDevice, PciIdentity
from kvmpy.devices.vga import core as c
from kvmpy.devices.vga import dispi as vbe
from kvmpy.devices.vga import render
from kvmpy.devices.vga.edid import EdidInfo, generate
from kvmpy.devices.vga.font import default_font
from kvmpy.display.surface import BYTES_PER_PIXEL, Frame, Rect, Update
from kvmpy.memory.ramblock import PAGE_SHIFT, RAMBlock

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

VENDOR_QEMU, DEVICE_QEMU_VGA = 0x1234, 0x1111
CLASS_DISPLAY_VGA, CLASS_DISPLAY_OTHER = 0x0300, 0x0380
MMIO_SIZE = 0x1000
EDID_OFFSET, EDID_SIZE = 0x000, 384
IOPORT_OFFSET, IOPORT_SIZE = 0x400, 0x3E0 - 0x3C0
BOCHS_OFFSET, BOCHS_SIZE = 0x500, 0x0B * 2
QEXT_OFFSET, QEXT_SIZE = 0x600, 2 * 4
QEXT_REG_SIZE, QEXT_REG_BYTEORDER = 0, 4
QEXT_LITTLE_ENDIAN, QEXT_BIG_ENDIAN = 0x1E1E1E1E, 0xBEBEBEBE
# The ISA ports a VGA answers (QEMU's vga_portio_list); others in 0x3B0-0x3DF read as unassigned.
LEGACY_PORTS = frozenset({0x3B4, 0x3B5, 0x3BA, *range(0x3C0, 0x3D0), 0x3D4, 0x3D5, 0x3DA})
DEFAULT_VGAMEM_MB = 16
BLANK_SIZE = (640, 480)  # what a console shows before the guest set any mode


class FramebufferLog(Protocol):
    """Where the framebuffer's dirty pages come from: the board's KVM slots (``KvmSlots``)."""

    def track_block(self, block: RAMBlock) -> None: ...

    def display_dirty(self, block: RAMBlock) -> "np.ndarray": ...


class _Mmio:
    """BAR2's 4 KiB: EDID, the VGA ports, DISPI and QEMU's extension registers."""

    def __init__(self, owner: "VgaPci") -> None:
        self.owner = owner

    def read(self, offset: int, size: int) -> int:
        return self.owner.mmio_read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.owner.mmio_write(offset, size, value)


class _LegacyPorts:
    """0x3B0-0x3DF (offsets from 0x3B0); wider accesses are split into bytes, low byte first."""

    def __init__(self, vga: c.VgaCore) -> None:
        self.vga = vga

    def read(self, offset: int, size: int) -> int:
        value = 0
        for i in range(min(size, 4)):
            port = c.PORT_BASE + offset + i
            byte = self.vga.ioport_read(port) if port in LEGACY_PORTS else 0xFF
            value |= byte << (8 * i)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        for i in range(min(size, 4)):
            port = c.PORT_BASE + offset + i
            if port in LEGACY_PORTS:
                self.vga.ioport_write(port, (value >> (8 * i)) & 0xFF)


class _DispiPorts:
    """0x1CE (index) and 0x1CF (data), 16 bits wide."""

    def __init__(self, vga: c.VgaCore) -> None:
        self.vga = vga

    def read(self, offset: int, size: int) -> int:
        with self.vga.lock:
            d = self.vga.dispi
            value = d.index if offset == 0 else d.read_data()
        return value & ((1 << (8 * min(size, 2))) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        with self.vga.lock:
            d = self.vga.dispi
            if offset == 0:
                d.index = value & 0xFFFF
            else:
                d.write_data(value)


class _LegacyWindow:
    """0xA0000-0xBFFFF, byte by byte (QEMU's vga_mem_ops are 1-byte)."""

    def __init__(self, vga: c.VgaCore) -> None:
        self.vga = vga

    def read(self, offset: int, size: int) -> int:
        return sum(self.vga.mem_readb(offset + i) << (8 * i) for i in range(min(size, 8)))

    def write(self, offset: int, size: int, value: int) -> None:
        for i in range(min(size, 8)):
            self.vga.mem_writeb(offset + i, (value >> (8 * i)) & 0xFF)


class VgaPci(PciDevice):
    """One std VGA (``legacy``) or bochs-display function and its renderer."""

    def __init__(self, name: str, vgamem_mb: int = DEFAULT_VGAMEM_MB, legacy: bool = True,
                 edid: EdidInfo | None = EdidInfo(), dirty_log: FramebufferLog | None = None) -> None:
        size = vgamem_mb << 20
        self.vram = RAMBlock.allocate(f"{name}.vram", size)
        self.core = c.VgaCore(self.vram.mv, size, self._vmm_wrote)
        self.legacy = legacy
        self.edid = generate(EDID_SIZE, edid) if edid is not None else b""
        self.big_endian_fb = False
        self.dirty_log = dirty_log
        self.font = None
        self.fallback_font: bytes | None = None
        self._font_loaded = False
        self._vmm_pages: set[int] = set()
        self._last: tuple | None = None  # what the previous refresh drew (mode key)
        self._pix: "np.ndarray | None" = None
        self._cells: "np.ndarray | None" = None
        self._cursor: tuple | None = None
        self._font_sig = b""
        self._blink_epoch = time.monotonic()
        if dirty_log is not None:
            dirty_log.track_block(self.vram)
        ident = PciIdentity(VENDOR_QEMU, DEVICE_QEMU_VGA, CLASS_DISPLAY_VGA if legacy else CLASS_DISPLAY_OTHER,
                            revision=2)
        bars = (Bar(0, BarKind.MEM32, size, _Mmio(self), prefetchable=True, ram=self.vram),
                Bar(2, BarKind.MEM32, MMIO_SIZE, _Mmio(self)))
        super().__init__(name, ident, bars)
        self.legacy_ports = _LegacyPorts(self.core)
        self.dispi_ports = _DispiPorts(self.core)
        self.legacy_window = _LegacyWindow(self.core)

    # ---- BAR2 -------------------------------------------------------------------------------
    def mmio_read(self, offset: int, size: int) -> int:
        ones = (1 << (8 * min(max(size, 1), 8))) - 1
        if EDID_OFFSET <= offset < EDID_OFFSET + EDID_SIZE:
            return sum((self.edid[offset + i] if offset + i < len(self.edid) else 0) << (8 * i)
                       for i in range(min(size, 4)))
        if IOPORT_OFFSET <= offset < IOPORT_OFFSET + IOPORT_SIZE and self.legacy:
            port = 0x3C0 + offset - IOPORT_OFFSET
            if size == 1:
                return self.core.ioport_read(port)
            if size == 2:
                return self.core.ioport_read(port) | (self.core.ioport_read(port + 1) << 8)
            return 0
        if BOCHS_OFFSET <= offset < BOCHS_OFFSET + BOCHS_SIZE:
            with self.core.lock:
                self.core.dispi.index = (offset - BOCHS_OFFSET) >> 1
                return self.core.dispi.read_data() & ones
        if QEXT_OFFSET <= offset < QEXT_OFFSET + QEXT_SIZE:
            reg = offset - QEXT_OFFSET
            if reg == QEXT_REG_SIZE:
                return QEXT_SIZE
            if reg == QEXT_REG_BYTEORDER:
                return QEXT_BIG_ENDIAN if self.big_endian_fb else QEXT_LITTLE_ENDIAN
            return 0
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if IOPORT_OFFSET <= offset < IOPORT_OFFSET + IOPORT_SIZE and self.legacy:
            port = 0x3C0 + offset - IOPORT_OFFSET
            if size == 1:
                self.core.ioport_write(port, value & 0xFF)
            elif size == 2:  # low byte (the index) first, so one word sets an indexed register
                self.core.ioport_write(port, value & 0xFF)
                self.core.ioport_write(port + 1, (value >> 8) & 0xFF)
        elif BOCHS_OFFSET <= offset < BOCHS_OFFSET + BOCHS_SIZE:
            with self.core.lock:
                self.core.dispi.index = (offset - BOCHS_OFFSET) >> 1
                self.core.dispi.write_data(value & 0xFFFF)
        elif offset - QEXT_OFFSET == QEXT_REG_BYTEORDER and size == 4:
            if value == QEXT_BIG_ENDIAN:
                self.big_endian_fb = True
            elif value == QEXT_LITTLE_ENDIAN:
                self.big_endian_fb = False

    # ---- dirty tracking -----------------------------------------------------------------------
    def _vmm_wrote(self, offset: int, length: int) -> None:
        self.vram.mark_dirty(offset, length)  # migration sees it
        if length > 0:
            self._vmm_pages.update(range(offset >> PAGE_SHIFT, ((offset + length - 1) >> PAGE_SHIFT) + 1))

    def _dirty_pages(self) -> "np.ndarray | None":
        """Pages changed since the last refresh, or None when unknown (redraw everything)."""
        import numpy as np

        if self.dirty_log is None:
            return None
        bits = self.dirty_log.display_dirty(self.vram)
        if self._vmm_pages:
            pages = np.fromiter(self._vmm_pages, dtype=np.int64)
            self._vmm_pages.clear()
            bits[pages[pages < len(bits)]] = True
        return bits

    # ---- DisplaySource --------------------------------------------------------------------------
    def refresh(self) -> Update:
        """Render the current mode; report the rectangles that changed since the previous call."""
        import numpy as np

        with self.core.lock:
            vga = self.core
            if self.legacy and not vga.ar_index & 0x20:
                return self._blank()
            mode = vga.dispi.mode()
            if mode is not None and mode.bpp != 4 and vga.gr[c.GFX_MISC] & c.GR06_GRAPHICS_MODE:
                return self._graphic(mode)
            if not self.legacy or vga.gr[c.GFX_MISC] & c.GR06_GRAPHICS_MODE:
                return self._blank()  # planar and CGA graphics modes are not drawn
            return self._text(np)

    def _frame(self) -> Frame:
        assert self._pix is not None
        h, w = self._pix.shape
        return Frame(w, h, w * BYTES_PER_PIXEL, self._pix.tobytes())

    def _prepare(self, key: tuple, width: int, height: int) -> tuple[bool, bool]:
        """(resized, full): a new picture size, or anything else that invalidates every line."""
        import numpy as np

        resized = self._pix is None or self._pix.shape != (height, width)
        if resized:
            self._pix = np.zeros((height, width), dtype=np.uint32)
        full = resized or key != self._last
        if full:
            self._cells = None
        self._last = key
        return resized, full

    def _blank(self) -> Update:
        w, h = (self._pix.shape[1], self._pix.shape[0]) if self._pix is not None else BLANK_SIZE
        resized, full = self._prepare(("blank",), w, h)
        if full:
            assert self._pix is not None
            self._pix[:] = 0
            return Update(self._frame(), [Rect(0, 0, w, h)], resized)
        return Update(self._frame(), [], False)

    def _graphic(self, mode: vbe.VbeMode) -> Update:
        import numpy as np

        pal = render.palette256(self.core) if mode.bpp == 8 else None
        key = ("vbe", mode, self.big_endian_fb, None if pal is None else pal.tobytes())
        resized, full = self._prepare(key, mode.width, mode.height)
        pages = self._dirty_pages()
        assert self._pix is not None
        if full or pages is None:
            rows = np.arange(mode.height)
        else:
            first, last = render.vbe_row_pages(mode, PAGE_SHIFT)
            last = np.minimum(last, len(pages) - 1)
            csum = np.concatenate([[0], np.cumsum(pages, dtype=np.int64)])
            rows = np.nonzero(csum[last + 1] - csum[np.minimum(first, last + 1)] > 0)[0]
        if full or pages is None:
            render.render_vbe_rows(self.vram.mv, mode, rows, pal, self._pix)
            return Update(self._frame(), _row_rects(rows, mode.width), resized)
        # A dirty page says which rows may have changed; the pixels say which columns did (a 64x64
        # block drawn on a wide screen dirties whole rows). Rows rewritten with the same pixels drop out.
        before = self._pix[rows]
        render.render_vbe_rows(self.vram.mv, mode, rows, pal, self._pix)
        return Update(self._frame(), _changed_rects(rows, before != self._pix[rows]), False)

    def _text(self, np: Any) -> Update:
        vga = self.core
        geo = render.text_geometry(vga)
        if geo.cols * geo.rows <= 1 or geo.cols * geo.rows > render.MAX_TEXT_CELLS:
            return self._blank()
        fonts = render.font_tables(vga, self._fallback())
        if vga.plane_updated & 4:  # plane 2 written: the font may have changed
            self._font_sig = fonts[0].tobytes() + fonts[1].tobytes()
            vga.plane_updated = 0
        pal = render.palette16(vga)
        phase = int((time.monotonic() - self._blink_epoch) / (render.CURSOR_PERIOD_S / 2)) % 2 == 0
        cursor = (render.cursor_position(vga, geo), vga.cr[c.CRTC_CURSOR_START], vga.cr[c.CRTC_CURSOR_END], phase)
        width, height = geo.size
        key = ("text", geo, pal.tobytes(), vga.ar[c.ATC_MODE] & 0x04, self._font_sig)
        resized, full = self._prepare(key, width, height)
        cells = render.text_cells(vga, geo)
        if full or self._cells is None:
            changed_rows = np.arange(geo.rows)
        else:
            changed = (cells != self._cells).any(axis=1)
            if cursor != self._cursor:
                for where in (cursor[0], self._cursor[0] if self._cursor else None):
                    if where is not None:
                        changed[where[0]] = True
            changed_rows = np.nonzero(changed)[0]
        self._cells, self._cursor = cells, cursor
        if len(changed_rows):
            pix = render.render_text(vga, geo, cells, fonts, phase)
            assert self._pix is not None
            for r in changed_rows.tolist():
                self._pix[r * geo.cell_h:(r + 1) * geo.cell_h] = pix[r * geo.cell_h:(r + 1) * geo.cell_h]
        rects = [Rect(0, y * geo.cell_h, width, n * geo.cell_h) for y, n in _runs(changed_rows)]
        return Update(self._frame(), rects, resized)

    def _fallback(self) -> bytes | None:
        if not self._font_loaded:
            self._font_loaded = True
            font = default_font()
            self.fallback_font = font.vga_table() if font is not None else None
        return self.fallback_font

    # ---- device protocol ---------------------------------------------------------------------------
    def reset(self) -> None:
        super().reset()
        self.core.reset()
        self.big_endian_fb = False
        self._last = None

    def save(self) -> dict[str, Any]:
        return {"pci": super().save(), "vga": self.core.save(), "big_endian_fb": self.big_endian_fb}

    def validate(self, state: dict[str, Any]) -> Any:  # type: ignore[override]
        check_keys(state, {"pci", "vga", "big_endian_fb"})
        if type(state["big_endian_fb"]) is not bool:
            from kvmpy.devices.device import DeviceStateError

            raise DeviceStateError("big_endian_fb must be a boolean")
        return super().validate(state["pci"]), self.core.validate(state["vga"])

    def restore(self, state: dict[str, Any]) -> None:
        (config, intx), _ = self.validate(state)
        self.restore_config(config, intx)
        self.core.restore(state["vga"])
        self.big_endian_fb = state["big_endian_fb"]
        self._last = None  # redraw everything from the restored memory
        self.config_restored()

    def device_ram(self) -> list[RAMBlock]:
        """Device memory that migrates with the guest's RAM (the framebuffer)."""
        return [self.vram]


def _runs(rows: "np.ndarray") -> list[tuple[int, int]]:
    """(first, count) of each run of consecutive row numbers."""
    out: list[tuple[int, int]] = []
    for r in rows.tolist():
        if out and out[-1][0] + out[-1][1] == r:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((r, 1))
    return out


def _row_rects(rows: "np.ndarray", width: int) -> list[Rect]:
    return [Rect(0, y, width, n) for y, n in _runs(rows)]


def _changed_rects(rows: "np.ndarray", diff: "np.ndarray") -> list[Rect]:
    """One rectangle per run of consecutive changed rows, spanning the columns that changed in it.

    ``diff[i, x]`` is True where pixel ``x`` of row ``rows[i]`` changed."""
    import numpy as np

    changed = diff.any(axis=1)
    rects: list[Rect] = []
    index = np.nonzero(changed)[0]
    for first, count in _runs(rows[index]):
        start = int(np.searchsorted(rows, first))
        cols = np.nonzero(diff[start:start + count].any(axis=0))[0]
        rects.append(Rect(int(cols[0]), first, int(cols[-1]) - int(cols[0]) + 1, count))
    return rects
