"""VGA registers through the ports and the MMIO BAR: masks, flip-flop, DAC, CRTC protection, memory modes."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from kvmpy.devices.vga import core as c
from kvmpy.devices.vga.pci_vga import VgaPci

MiB = 1 << 20


def test_pci_identity_and_bars() -> None:
    v = VgaPci("vga")
    assert v.config_read(0, 4) == 0x11111234 and v.config_read(8, 4) == 0x03000002
    v.config_write(0x10, 4, 0xFFFFFFFF)
    assert v.config_read(0x10, 4) == (~(16 * MiB - 1) & 0xFFFFFFFF) | 0x8  # prefetchable 16 MiB
    v.config_write(0x18, 4, 0xFFFFFFFF)
    assert v.config_read(0x18, 4) == 0xFFFFF000  # 4 KiB MMIO
    assert VgaPci("bd", vgamem_mb=1, legacy=False).config_read(8, 4) >> 8 == 0x038000


def test_mmio_bar_regions() -> None:
    v = VgaPci("vga", vgamem_mb=1)
    assert v.mmio_read(0, 4) == 0xFFFFFF00 and v.mmio_read(0x600, 4) == 8 and v.mmio_read(0x604, 4) == 0x1E1E1E1E
    v.mmio_write(0x604, 4, 0xBEBEBEBE)
    assert v.mmio_read(0x604, 4) == 0xBEBEBEBE
    assert v.mmio_read(0x500, 2) == 0xB0C5 and v.mmio_read(0x514, 2) == 1 * MiB >> 16
    v.mmio_write(0x400 + 4, 2, 0x0302)  # SR2 = 3 through one word write at 0x3C4
    v.mmio_write(0x400 + 4, 1, 2)
    assert v.mmio_read(0x400 + 5, 1) == 3


def test_attribute_flip_flop_and_dac() -> None:
    v = VgaPci("vga", vgamem_mb=1)
    w = lambda p, val: v.legacy_ports.write(p - c.PORT_BASE, 1, val)  # noqa: E731
    r = lambda p: v.legacy_ports.read(p - c.PORT_BASE, 1)  # noqa: E731
    w(c.MIS_W, 0x01)  # colour decoding: 0x3Dx live, 0x3Bx float
    assert r(c.MIS_R) == 0x01 and r(0x3B5) == 0xFF
    r(c.IS1_RC)
    w(c.ATT_W, 0x12)
    w(c.ATT_W, 0xFF)
    assert r(c.ATT_R) == 0x3F  # plane enable keeps 6 bits
    w(c.PEL_IW, 7)
    for val in (1, 2, 3, 4):
        w(c.PEL_D, val)
    w(c.PEL_IR, 7)
    assert [r(c.PEL_D) for _ in range(4)] == [1, 2, 3, 4 * 0]  # the 4th went to entry 8's red (unread yet: 0)
    assert r(c.PEL_IW) == 8 and r(c.PEL_IR) == 3
    assert r(0x3B0) == 0xFF and r(0x3D0) == 0xFF  # ports no VGA register answers


def test_crtc_protection() -> None:
    v = VgaPci("vga", vgamem_mb=1)
    w = lambda p, val: v.legacy_ports.write(p - c.PORT_BASE, 1, val)  # noqa: E731
    w(c.MIS_W, 0x01)
    w(c.CRT_IC, 0x11)
    w(c.CRT_DC, 0x80)
    w(c.CRT_IC, 0x01)
    w(c.CRT_DC, 0x55)
    assert v.core.cr[1] == 0
    w(c.CRT_IC, 0x07)
    w(c.CRT_DC, 0xFF)
    assert v.core.cr[7] == 0x10  # only bit 4 of CR7 passes the lock


def test_planar_write_modes() -> None:
    v = VgaPci("vga", vgamem_mb=1)
    core = v.core
    core.sr[c.SEQ_PLANE_WRITE] = 0x0F
    core.gr[c.GFX_MISC] = 0x05  # graphics, 0xA0000 64 KiB
    core.gr[c.GFX_SR_ENABLE] = 0x0F
    core.gr[c.GFX_SR_VALUE] = 0x05
    core.gr[c.GFX_BIT_MASK] = 0xF0
    v.legacy_window.write(0x10, 1, 0x00)  # write mode 0 with set/reset on planes 0 and 2
    assert bytes(v.vram.mv[0x40:0x44]) == bytes([0xF0, 0x00, 0xF0, 0x00])
    core.gr[c.GFX_MODE] = 0x08  # read mode 1: compare against colour 5 on all planes
    core.gr[c.GFX_COMPARE_VALUE] = 0x05
    core.gr[c.GFX_COMPARE_MASK] = 0x0F
    assert v.legacy_window.read(0x10, 1) == 0xF0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["port", "mmio", "mem", "dispi"]), st.integers(0, 0x1FFFF),
                          st.sampled_from([1, 2, 4]), st.integers(0, 0xFFFFFFFF)), max_size=60))
def test_hostile_register_and_memory_writes_never_crash(ops: list[tuple[str, int, int, int]]) -> None:
    v = VgaPci("vga", vgamem_mb=1)
    for kind, addr, size, value in ops:
        if kind == "port":
            v.legacy_ports.write(addr % 0x30, size, value)
            v.legacy_ports.read(addr % 0x30, size)
        elif kind == "mmio":
            v.mmio_write(addr % 0x1000, size, value)
            v.mmio_read(addr % 0x1000, size)
        elif kind == "mem":
            v.legacy_window.write(addr, size, value)
            v.legacy_window.read(addr, size)
        else:
            v.dispi_ports.write(addr & 1, 2, value)
            v.dispi_ports.read(addr & 1, 2)
    u = v.refresh()
    f = u.frame
    assert len(f.pixels) == f.stride * f.height and f.width > 0
    state = v.save()
    other = VgaPci("vga", vgamem_mb=1)
    other.restore(state)
    assert other.save() == state


def test_restored_device_shows_the_same_picture() -> None:
    """Migration: the registers travel in the device state, the framebuffer as RAM; the picture comes back."""
    src = VgaPci("vga", vgamem_mb=1)
    for index, value in ((1, 320), (2, 200), (3, 16), (4, 0x41)):
        src.dispi_ports.write(0, 2, index)
        src.dispi_ports.write(1, 2, value)
    src.legacy_ports.write(0x3C0 - c.PORT_BASE, 1, 0x20)
    src.vram.mv[:320 * 200 * 2] = bytes((i * 7) & 0xFF for i in range(320 * 200 * 2))
    before = src.refresh().frame
    dst = VgaPci("vga", vgamem_mb=1)
    dst.vram.mv[:] = src.vram.mv  # what the RAM stream carries
    dst.restore(src.save())
    after = dst.refresh()
    assert after.resized and after.frame == before and (before.width, before.height) == (320, 200)
