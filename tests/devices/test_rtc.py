"""CMOS RTC: BCD and binary time, setting the clock, and the memory-size bytes."""

from __future__ import annotations

import calendar

from kvmpy.devices.rtc import CmosRtc

NOW = calendar.timegm((2026, 11, 25, 13, 45, 7, 0, 0, 0))


def reg(rtc, r):
    rtc.write(0, 1, r)
    return rtc.read(1, 1)


def setreg(rtc, r, v):
    rtc.write(0, 1, r)
    rtc.write(1, 1, v)


def test_bcd_time_and_date() -> None:
    rtc = CmosRtc(64 << 20, clock=lambda: NOW)
    assert [reg(rtc, r) for r in (0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32)] == [0x07, 0x45, 0x13, 0x25, 0x11, 0x26, 0x20]
    assert reg(rtc, 0x06) == 4  # Wednesday, Sunday = 1
    assert reg(rtc, 0x0D) & 0x80


def test_binary_and_12_hour_modes() -> None:
    rtc = CmosRtc(64 << 20, clock=lambda: NOW)
    setreg(rtc, 0x0B, 0x04)  # binary, 12-hour
    assert reg(rtc, 0x00) == 7
    assert reg(rtc, 0x04) == 0x80 | 1  # 1 PM


def test_guest_sets_the_clock() -> None:
    t = [NOW]
    rtc = CmosRtc(64 << 20, clock=lambda: t[0])
    setreg(rtc, 0x0B, 0x82)  # SET: freeze updates
    setreg(rtc, 0x09, 0x30)  # year 2030
    setreg(rtc, 0x0B, 0x02)
    t[0] += 10
    assert reg(rtc, 0x09) == 0x30
    assert reg(rtc, 0x00) == 0x17  # and it keeps running


def test_memory_size_bytes() -> None:
    rtc = CmosRtc(64 << 20)
    ext = reg(rtc, 0x30) | reg(rtc, 0x31) << 8
    assert ext == 63 * 1024
    above16 = reg(rtc, 0x34) | reg(rtc, 0x35) << 8
    assert above16 == (48 << 20) >> 16


def test_index_register_masks_nmi_bit_and_save_restore() -> None:
    rtc = CmosRtc(64 << 20, clock=lambda: NOW)
    setreg(rtc, 0x80 | 0x40, 0x99)
    assert reg(rtc, 0x40) == 0x99
    other = CmosRtc(64 << 20, clock=lambda: NOW)
    other.restore(rtc.save())
    assert reg(other, 0x40) == 0x99
