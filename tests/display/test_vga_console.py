"""The VNC server showing kvmpy's VGA device: a viewer's capture equals the adapter's frame, and a
vCPU's store into the framebuffer reaches the viewer as an update of just the rows KVM's dirty log names."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("kvmpy.devices.vga.pci_vga")  # the display adapter (helper vga's branch)
api = pytest.importorskip("vncdotool.api")

from kvmpy.display.vnc import VncServer  # noqa: E402
from kvmpy.display.screendump import rgb_rows  # noqa: E402
from tests.devices.vga.test_dirty_log import machine, run_guest_store, set_mode  # noqa: E402,F401
from tests.display.rfb_client import RawClient  # noqa: E402

pytestmark = pytest.mark.kvm_host


def test_a_viewer_sees_the_vga_frame_and_its_dirty_rows(machine) -> None:  # noqa: F811
    vm, slots, ram, vga = machine
    set_mode(vga, 320, 200, 32)
    srv = VncServer(vga, "127.0.0.1", 0).start()
    try:
        run_guest_store(vm, ram, 7 * 320 * 4 + 40, 0x0012AB34)  # row 7, pixel 10
        client = api.connect(f"127.0.0.1::{srv.address[1]}", timeout=20)
        try:
            client.refreshScreen(False)
            shot = client.screen.convert("RGB").tobytes()
        finally:
            client.disconnect()
        frame = srv.refresh_now()
        assert (frame.width, frame.height) == (320, 200)
        assert shot == rgb_rows(frame).tobytes()
        assert shot[(7 * 320 + 10) * 3:(7 * 320 + 11) * 3] == bytes((0x12, 0xAB, 0x34))
        raw = RawClient(srv.address)
        raw.request(False)
        raw.read_update()
        run_guest_store(vm, ram, 40 * 320 * 4, 0x00FFFFFF)  # row 40, pixel 0
        time.sleep(0.2)
        raw.request(True)
        rects = raw.read_update()
        # KVM logs the 4 KiB page (rows 38-41 here); comparing those rows' pixels narrows the update to
        # the one pixel the guest changed.
        assert [tuple(r[:4]) for r in rects] == [(0, 40, 1, 1)], rects
        raw.close()
    finally:
        srv.close()
