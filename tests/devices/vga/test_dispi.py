"""The Bochs DISPI registers: ID, GETCAPS, mode clamping and the clear on enable (QEMU's vga.c rules)."""

from __future__ import annotations

from hypothesis import given, strategies as st

from kvmpy.devices.vga import dispi as d

MiB = 1 << 20


def make(size: int = 16 * MiB) -> tuple[d.Dispi, list[int]]:
    cleared: list[int] = []
    return d.Dispi(size, cleared.append, lambda: None), cleared


def put(r: d.Dispi, index: int, value: int) -> None:
    r.index = index
    r.write_data(value)


def get(r: d.Dispi, index: int) -> int:
    r.index = index
    return r.read_data()


def test_reset_state_and_identity() -> None:
    r, _ = make()
    assert get(r, d.INDEX_ID) == d.ID5
    put(r, d.INDEX_ID, 0x1234)  # not an ID: ignored
    assert get(r, d.INDEX_ID) == d.ID5
    put(r, d.INDEX_ID, d.ID0)
    assert get(r, d.INDEX_ID) == d.ID0
    assert get(r, d.INDEX_VIDEO_MEMORY_64K) == 16 * MiB >> 16
    assert get(r, 0x0B) == 0 and r.mode() is None


def test_getcaps_reports_the_maxima() -> None:
    r, _ = make()
    put(r, d.INDEX_ENABLE, d.GETCAPS)
    assert (get(r, d.INDEX_XRES), get(r, d.INDEX_YRES), get(r, d.INDEX_BPP)) == (16000, 12000, 32)


def test_mode_set_as_linux_bochs_drm_does_it() -> None:
    r, cleared = make()
    put(r, d.INDEX_ENABLE, 0)
    for index, value in ((d.INDEX_BPP, 32), (d.INDEX_XRES, 1024), (d.INDEX_YRES, 768), (d.INDEX_BANK, 0),
                         (d.INDEX_VIRT_WIDTH, 1024), (d.INDEX_VIRT_HEIGHT, 768), (d.INDEX_X_OFFSET, 0),
                         (d.INDEX_Y_OFFSET, 0)):
        put(r, index, value)
    put(r, d.INDEX_ENABLE, d.ENABLED | d.LFB_ENABLED)
    assert r.mode() == d.VbeMode(1024, 768, 32, 4096, 0)
    assert cleared == [768 * 4096]
    assert get(r, d.INDEX_VIRT_HEIGHT) == 16 * MiB // 4096  # QEMU reports the memory's lines
    put(r, d.INDEX_Y_OFFSET, 768)  # page flip to the second buffer
    assert r.mode() == d.VbeMode(1024, 768, 32, 4096, 768 * 4096)


def test_noclearmem_and_clamping() -> None:
    r, cleared = make(1 * MiB)
    put(r, d.INDEX_XRES, 1023)
    put(r, d.INDEX_YRES, 5000)
    put(r, d.INDEX_BPP, 7)
    put(r, d.INDEX_ENABLE, d.ENABLED | d.NOCLEARMEM)
    assert cleared == []
    m = r.mode()
    assert m is not None and (m.width, m.bpp) == (1016, 8)  # width to a multiple of 8, bpp to 8
    assert m.height == 1 * MiB // 1016 and m.height * m.line_offset <= 1 * MiB


@given(st.lists(st.tuples(st.integers(0, 0x10), st.integers(0, 0xFFFF)), max_size=40))
def test_any_write_sequence_keeps_the_mode_inside_video_memory(writes: list[tuple[int, int]]) -> None:
    size = 4 * MiB
    r, cleared = make(size)
    for index, value in writes:
        put(r, index, value)
        m = r.mode()
        if m is not None:
            assert m.width % 8 == 0 and 8 <= m.width <= d.MAX_XRES and 1 <= m.height <= d.MAX_YRES
            bits = 16 if m.bpp == 15 else m.bpp
            assert m.start + (m.height - 1) * m.line_offset + m.width * bits // 8 <= size
        assert all(0 <= n <= size for n in cleared)
        assert 0 <= r.bank_offset < size
