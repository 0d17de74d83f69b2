"""SeaBIOS's text screen on kvmpy's std VGA, as people and tools see it: a vncdotool capture of ``-vnc``
equals QMP ``screendump``, and a live migration to a second kvmpy keeps the VGA registers and the picture.

The host's half of tests/linux/test_display_guest.py (which does the same with Linux's
bochs DRM driver in the nested bed): the same helpers, on a guest the host's KVM runs.
SeaBIOS's cursor blinks on each machine's own clock, so its cell is left out when two
pictures taken at different times are compared.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from kvmpy.devices.vga import render
from tests.display.screens import KvmpyVmm, Screen, migrate, screendump, vnc_capture

SEABIOS_VGA = Path("/usr/share/seabios/vgabios-stdvga.bin")
DONE = b"No bootable device."
MEMORY = 128 << 20
pytestmark = [pytest.mark.kvm_host,
              pytest.mark.skipif(not SEABIOS_VGA.is_file(), reason="needs Debian's seabios package")]


def without_cursor(vmm: KvmpyVmm, screen: Screen) -> Screen:
    core = vmm.vga().core
    geo = render.text_geometry(core)
    cell = render.cursor_position(core, geo)
    assert (geo.cols * geo.cell_w, geo.rows * geo.cell_h) == (screen.width, screen.height)
    if cell is None:
        return screen
    return screen.without(cell[1] * geo.cell_w, cell[0] * geo.cell_h, geo.cell_w, geo.cell_h)


def test_vnc_capture_and_migration_keep_the_seabios_screen() -> None:
    pytest.importorskip("vncdotool.api")
    tmp = Path(tempfile.mkdtemp(prefix="ks", dir="/tmp"))
    figures: dict = {}
    try:
        src = KvmpyVmm(tmp, "src", memory=MEMORY)
        try:
            src.wait_for(DONE, 240)
            shot = screendump(src.qmp, tmp / "src.ppm")
            assert (shot.width, shot.height) == (720, 400)  # 80x25 cells of 9x16
            assert without_cursor(src, vnc_capture(src.port)) == without_cursor(src, shot)
            assert without_cursor(src, vnc_capture(src.port, zrle=True)) == without_cursor(src, shot)
            dst = migrate(src, tmp, figures, memory=MEMORY)
            try:
                assert dst.vga().core.save() == src.vga().core.save()
                assert src.vbe_mode() is None and dst.vbe_mode() is None  # VGA text, not a VBE mode
                moved = screendump(dst.qmp, tmp / "dst.ppm")
                assert without_cursor(dst, moved) == without_cursor(src, shot)
                assert without_cursor(dst, vnc_capture(dst.port)) == without_cursor(dst, moved)
                assert DONE not in dst.console.output  # the destination did not boot on its own
            finally:
                dst.close()
        finally:
            src.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert figures["migrated_bytes"] > 0
