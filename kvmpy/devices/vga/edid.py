"""EDID: the monitor description QEMU's display adapters put at offset 0 of their MMIO BAR.

A guest driver (Linux's ``bochs`` DRM driver) reads it to learn which modes the
"monitor" supports and which one it prefers, so the blob must be byte-for-byte
QEMU's for a guest to pick the same mode under kvmpy and under QEMU. The layout
(header, basic parameters, sRGB chromaticity, established/standard timings, a
detailed timing for the preferred mode, the "additional standard timings 3",
range-limits and name descriptors, a CTA-861 extension block with video data,
and a DisplayID block for screens of 4096 pixels or more) and every constant are
QEMU 7.2's (as Debian 12 ships it) ``hw/display/edid-generate.c`` defaults: 1280x800
preferred, vendor "RHT", name "QEMU Monitor", 75 Hz, 100 dpi. The blob was checked
against the bytes a Linux guest reads from QEMU 7.2's ``-device VGA``
(/sys/class/drm/card0-Virtual-1/edid).
"""

from __future__ import annotations

from dataclasses import dataclass

# (xres, yres, est_byte, est_bit, xtra3_byte, xtra3_bit, cta_vic): where each mode is advertised.
_MODES: tuple[tuple[int, int, int, int, int, int, int], ...] = (
    (5120, 2160, 0, 0, 0, 0, 125),  # CTA-861 extension timings
    (4096, 2160, 0, 0, 0, 0, 101),
    (3840, 2160, 0, 0, 0, 0, 96),
    (2560, 1080, 0, 0, 0, 0, 89),
    (2048, 1152, 0, 0, 0, 0, 0),
    (1920, 1080, 0, 0, 0, 0, 31),
    (3840, 2160, 0, 0, 0, 0, 97),  # CTA-861 at 60 Hz
    (1920, 1200, 0, 0, 10, 0, 0),  # additional standard timings 3 (60 Hz)
    (1600, 1200, 0, 0, 9, 2, 0),
    (1680, 1050, 0, 0, 9, 5, 0),
    (1440, 900, 0, 0, 8, 5, 0),
    (1280, 1024, 0, 0, 7, 1, 0),
    (1280, 960, 0, 0, 7, 3, 0),
    (1280, 768, 0, 0, 7, 6, 0),
    (1920, 1440, 0, 0, 11, 5, 0),
    (1856, 1392, 0, 0, 10, 3, 0),
    (1792, 1344, 0, 0, 10, 5, 0),
    (1440, 1050, 0, 0, 8, 1, 0),
    (1360, 768, 0, 0, 8, 7, 0),
    (1024, 768, 36, 3, 0, 0, 0),  # established timings (60 Hz)
    (800, 600, 35, 0, 0, 0, 0),
    (640, 480, 35, 5, 0, 0, 0),
)
BLOCK = 128
STD_FIRST, STD_END = 38, 54  # the eight standard-timing slots
DESC_FIRST = 54
DEFAULT_REFRESH = 75000  # mHz
DEFAULT_DPI = 100
DEFAULT_PREF = (1280, 800)


@dataclass(frozen=True)
class EdidInfo:
    """What a display adapter's properties (xres, yres, xmax, ymax, refresh_rate) set; 0 means QEMU's default."""

    prefx: int = 0
    prefy: int = 0
    maxx: int = 0
    maxy: int = 0
    refresh_rate: int = 0
    vendor: str = "RHT"
    name: str = "QEMU Monitor"
    serial: str | None = None


@dataclass(frozen=True)
class _Timings:
    xfront: int
    xsync: int
    xblank: int
    yfront: int
    ysync: int
    yblank: int
    clock: int


def _timings(refresh: int, xres: int, yres: int) -> _Timings:
    xblank, yblank = xres * 35 // 100, yres * 35 // 1000
    return _Timings(xres * 25 // 100, xres * 3 // 100, xblank, yres * 5 // 1000, yres * 5 // 1000, yblank,
                    refresh * (xres + xblank) * (yres + yblank) // 10_000_000)


def _checksum(buf: bytearray, start: int, length: int) -> None:
    total = sum(buf[start:start + length]) & 0xFF
    if total:
        buf[start + length] = 0x100 - total


def _std_mode(buf: bytearray, at: int, xres: int, yres: int) -> bool:
    if xres == 0 or yres == 0:
        buf[at:at + 2] = b"\x01\x01"
        return True
    for aspect, (a, b) in enumerate(((10, 16), (3, 4), (4, 5), (9, 16))):
        if xres * a == yres * b:
            break
    else:
        return False
    if not 0 <= xres // 8 - 31 <= 255:
        return False
    buf[at], buf[at + 1] = xres // 8 - 31, aspect << 6
    return True


def _to_10bit(value: float) -> int:
    return int(value * 1024 + 0.5)


class _Descriptors:
    """The 18-byte descriptor slots: four in the base block, then after the CTA block's data blocks."""

    def __init__(self, dta: int | None) -> None:
        self.dta = dta

    def next(self, buf: bytearray, desc: int | None) -> int | None:
        if desc is None:
            return None
        if desc + 36 < 127:
            return desc + 18
        if self.dta is not None:
            if desc < 127:
                return self.dta + buf[self.dta + 2]
            if desc + 36 < self.dta + 127:
                return desc + 18
        return None


def _desc_type(buf: bytearray, at: int, kind: int) -> None:
    buf[at:at + 5] = bytes((0, 0, 0, kind, 0))


def _desc_text(buf: bytearray, at: int, kind: int, text: str) -> None:
    _desc_type(buf, at, kind)
    raw = text.encode("latin-1", "replace")[:12]
    buf[at + 5:at + 18] = raw + b"\n" + b" " * (12 - len(raw))


def _desc_timing(buf: bytearray, at: int, refresh: int, xres: int, yres: int, xmm: int, ymm: int) -> None:
    t = _timings(refresh, xres, yres)
    buf[at:at + 4] = (t.clock & 0xFFFFFFFF).to_bytes(4, "little")  # stl: bytes 2-3 are overwritten below
    buf[at + 2] = xres & 0xFF
    buf[at + 3] = t.xblank & 0xFF
    buf[at + 4] = ((xres & 0xF00) >> 4) | ((t.xblank & 0xF00) >> 8)
    buf[at + 5] = yres & 0xFF
    buf[at + 6] = t.yblank & 0xFF
    buf[at + 7] = ((yres & 0xF00) >> 4) | ((t.yblank & 0xF00) >> 8)
    buf[at + 8] = t.xfront & 0xFF
    buf[at + 9] = t.xsync & 0xFF
    buf[at + 10] = ((t.yfront & 0xF) << 4) | (t.ysync & 0xF)
    buf[at + 11] = ((t.xfront & 0x300) >> 2) | ((t.xsync & 0x300) >> 4) | ((t.yfront & 0x30) >> 2) \
        | ((t.ysync & 0x30) >> 4)
    buf[at + 12] = xmm & 0xFF
    buf[at + 13] = ymm & 0xFF
    buf[at + 14] = ((xmm & 0xF00) >> 4) | ((ymm & 0xF00) >> 8)
    buf[at + 17] = 0x18


def _desc_ranges(buf: bytearray, at: int) -> None:
    _desc_type(buf, at, 0xFD)
    buf[at + 5:at + 11] = bytes((50, 125, 30, 160, 2550 // 10, 0x01))  # 50-125 Hz, 30-160 kHz, 2550 MHz
    buf[at + 11:at + 18] = b"\n" + b" " * 6


def _displayid(buf: bytearray, at: int, refresh: int, xres: int, yres: int) -> None:
    t = _timings(refresh, xres, yres)
    buf[at:at + 4] = bytes((0x70, 0x13, 23, 0x03))
    buf[at + 5:at + 8] = bytes((0x03, 0x00, 0x14))
    buf[at + 8:at + 11] = (t.clock & 0xFFFFFF).to_bytes(3, "little")
    buf[at + 11] = 0x88
    for i, v in enumerate((xres, t.xblank, t.xfront, t.xsync, yres, t.yblank, t.yfront, t.ysync)):
        buf[at + 12 + 2 * i:at + 14 + 2 * i] = ((v - 1) & 0xFFFF).to_bytes(2, "little")
    _checksum(buf, at + 1, buf[at + 2] + 4)


def generate(size: int, info: EdidInfo = EdidInfo()) -> bytes:
    """The ``size``-byte blob (128, 256 or 384) QEMU generates for ``info``."""
    buf = bytearray(size)
    refresh = info.refresh_rate or DEFAULT_REFRESH
    vendor = info.vendor if len(info.vendor) == 3 else "RHT"
    prefx, prefy = info.prefx or DEFAULT_PREF[0], info.prefy or DEFAULT_PREF[1]
    large = prefx >= 4096 or prefy >= 4096
    width_mm, height_mm = prefx * 254 // 10 // DEFAULT_DPI, prefy * 254 // 10 // DEFAULT_DPI
    dta = did = None
    if size >= 2 * BLOCK:
        dta = BLOCK
        buf[126] += 1
        buf[dta:dta + 5] = bytes((0x02, 0x03, 0x05, 0x00, 0x40))
    if size >= 3 * BLOCK and large:
        did = 2 * BLOCK
        buf[126] += 1
        buf[did:did + 4] = bytes((0x70, 0x13, 4, 0x03))
        _checksum(buf, did + 1, 8)
    buf[0:8] = b"\x00\xff\xff\xff\xff\xff\xff\x00"
    vid = 0
    for i, ch in enumerate(vendor):
        vid |= ((ord(ch) - ord("@")) & 0x1F) << (10 - 5 * i)
    buf[8:10] = vid.to_bytes(2, "big")
    buf[10:12] = (0x1234).to_bytes(2, "little")
    serial = int(info.serial) if info.serial and info.serial.isdigit() else 0
    buf[12:16] = (serial & 0xFFFFFFFF).to_bytes(4, "little")
    buf[16:20] = bytes((42, 2014 - 1990, 1, 4))  # week, year, EDID 1.4
    buf[20:25] = bytes((0xA5, width_mm // 10, height_mm // 10, 220 - 100, 0x06))
    r = [_to_10bit(v) for v in (0.6400, 0.3300, 0.3000, 0.6000, 0.1500, 0.0600, 0.3127, 0.3290)]
    buf[25] = ((r[0] & 3) << 6) | ((r[1] & 3) << 4) | ((r[2] & 3) << 2) | (r[3] & 3)
    buf[26] = ((r[4] & 3) << 6) | ((r[5] & 3) << 4) | ((r[6] & 3) << 2) | (r[7] & 3)
    buf[27:35] = bytes(v >> 2 for v in r)

    descs = _Descriptors(dta)
    desc: int | None = DESC_FIRST
    if not large:
        _desc_timing(buf, DESC_FIRST, refresh, prefx, prefy, width_mm, height_mm)
        desc = descs.next(buf, desc)
    assert desc is not None
    xtra3 = desc
    _desc_type(buf, xtra3, 0xF7)
    buf[xtra3 + 5] = 10
    desc = descs.next(buf, desc)
    _fill_modes(buf, xtra3, dta, info.maxx, info.maxy)
    if desc is not None:
        _desc_ranges(buf, desc)
        desc = descs.next(buf, desc)
    if desc is not None and info.name:
        _desc_text(buf, desc, 0xFC, info.name)
        desc = descs.next(buf, desc)
    if desc is not None and info.serial:
        _desc_text(buf, desc, 0xFF, info.serial)
        desc = descs.next(buf, desc)
    while desc is not None:
        _desc_type(buf, desc, 0x10)
        desc = descs.next(buf, desc)
    if did is not None:
        _displayid(buf, did, refresh, prefx, prefy)
    _checksum(buf, 0, 127)
    if dta is not None:
        _checksum(buf, dta, 127)
    if did is not None:
        _checksum(buf, did, 127)
    return bytes(buf)


def _fill_modes(buf: bytearray, xtra3: int, dta: int | None, maxx: int, maxy: int) -> None:
    std = STD_FIRST
    for xres, yres, byte, bit, x3, x3bit, vic in _MODES:
        if (maxx and xres > maxx) or (maxy and yres > maxy):
            continue
        if byte:
            buf[byte] |= 1 << bit
        elif std < STD_END:
            if _std_mode(buf, std, xres, yres):
                std += 2
        elif x3:
            buf[xtra3 + x3] |= 1 << x3bit
        if dta is not None and vic:
            buf[dta + buf[dta + 2]] = vic
            buf[dta + 2] += 1
            buf[dta + 4] += 1
    while std < STD_END:
        _std_mode(buf, std, 0, 0)
        std += 2
