"""The EDID blob: QEMU 7.2's default monitor (1280x800 preferred), byte for byte, and its variations."""

from __future__ import annotations

from kvmpy.devices.vga.edid import EdidInfo, generate


# What Debian's QEMU 7.2 gives a Linux guest for "-device VGA" (read from /sys/class/drm/card0-Virtual-1/edid).
QEMU_7_2_VGA = bytes.fromhex(
    "00ffffffffffff0049143412000000002a180104a520147806ee91a3544c99260f5054210800e1c0d1c0d100a940b30095008180"
    "8140ea2900c051201c304026444045cb10000018000000f7000a004082002820000000000000000000fd00327d1ea0ff010a2020"
    "20202020000000fc0051454d55204d6f6e69746f720a013a02030b00467d6560591f610000001000000000000000000000000000"
    "00000000100000000000000000000000000000000000100000000000000000000000000000000000100000000000000000000000"
    "00000000000010000000000000000000000000000000000010000000000000000000000000000000000000000000002f")


def test_default_blob_is_qemus() -> None:
    assert generate(256) == QEMU_7_2_VGA


def test_default_blob_describes_qemus_monitor() -> None:
    e = generate(256)
    assert e[:8] == b"\x00\xff\xff\xff\xff\xff\xff\x00"
    assert e[8:10] == bytes.fromhex("4914")  # "RHT"
    assert e[10:12] == bytes.fromhex("3412") and e[18:20] == b"\x01\x04"
    assert e[126] == 1  # one extension: the CTA-861 block
    assert sum(e[:128]) % 256 == 0 and sum(e[128:256]) % 256 == 0
    # The preferred detailed timing is 1280x800 (the mode a guest picks).
    dtd = e[54:72]
    assert dtd[2] | (dtd[4] & 0xF0) << 4 == 1280 and dtd[5] | (dtd[7] & 0xF0) << 4 == 800
    assert b"QEMU Monitor\n" in e
    assert e[35] & 0x21 and e[36] & 0x08  # 640x480, 800x600 and 1024x768 established timings
    assert e[128:139] == bytes.fromhex("02030b00467d6560591f61")  # CTA block: VICs 125, 101, 96, 89, 31, 97


def test_preferred_mode_and_limits_follow_the_properties() -> None:
    e = generate(256, EdidInfo(prefx=1024, prefy=768, maxx=1600, maxy=1200))
    dtd = e[54:72]
    assert dtd[2] | (dtd[4] & 0xF0) << 4 == 1024 and dtd[5] | (dtd[7] & 0xF0) << 4 == 768
    assert e[128 + 4] == 0x40  # no CTA mode fits 1600x1200: an empty video data block
    assert sum(e[:128]) % 256 == 0


def test_large_screens_get_a_displayid_block() -> None:
    e = generate(384, EdidInfo(prefx=5120, prefy=2160))
    assert e[126] == 2 and e[256] == 0x70
    assert sum(e[256:384]) % 256 == 0
