"""SeaBIOS and its VGA BIOS (vgabios-stdvga.bin) on kvmpy's std VGA, pixel for pixel against QEMU's screendump.

kvmpy boots Debian's SeaBIOS with ``-device VGA``; the VGA BIOS reaches SeaBIOS as
fw_cfg ``pci1234,1111.rom``, sets mode 3, loads its font into plane 2 and SeaBIOS
prints its banner and boot attempts through int 10h. QEMU 7.2 (TCG, the vapic ROM
off so its boot attempts come in kvmpy's order) runs the same firmware; its QMP
``screendump`` must equal kvmpy's frame except the blinking cursor's cell.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from kvmpy.config import MachineConfig
from kvmpy.config_devices import DeviceSpec
from kvmpy.devices.chardev import BufferBackend
from kvmpy.devices.vga import render
from kvmpy.devices.vga.factory import find_display

SEABIOS = Path("/usr/share/seabios/vgabios-stdvga.bin")
DONE = b"No bootable device."
pytestmark = [pytest.mark.kvm_host,
              pytest.mark.skipif(not SEABIOS.is_file() or shutil.which("qemu-system-x86_64") is None,
                                 reason="needs Debian's seabios and qemu-system-x86 packages")]


def rgb(frame) -> np.ndarray:  # noqa: ANN001
    px = np.frombuffer(frame.pixels, dtype=np.uint8).reshape(frame.height, frame.stride)[:, :frame.width * 4]
    return px.reshape(frame.height, frame.width, 4)[:, :, 2::-1]


def kvmpy_text_screen() -> tuple[np.ndarray, tuple[int, int] | None, bytes]:
    from kvmpy.machine import Machine

    console = BufferBackend()
    machine = Machine(MachineConfig(memory=128 << 20, devices=(DeviceSpec(driver="VGA"),)).validate(),
                      console=console)
    try:
        machine.start()
        assert console.wait_for(DONE, timeout=240), console.output[-2000:]
        vga = find_display(machine.board.devices.values())
        assert vga is not None
        frame = vga.refresh().frame
        cursor = render.cursor_position(vga.core, render.text_geometry(vga.core))
    finally:
        machine.close()
    return rgb(frame), cursor, console.output


def qemu_screendump(until_row: np.ndarray, row: int, tmp: Path) -> np.ndarray:
    """QEMU's screen once text row ``row`` (16 lines) shows what ``until_row`` shows."""
    sock, ppm = tmp / "qmp.sock", tmp / "screen.ppm"
    proc = subprocess.Popen(["qemu-system-x86_64", "-accel", "tcg", "-m", "128", "-nodefaults", "-device", "VGA",
                             "-display", "none", "-global", "apic-common.vapic=off",
                             "-qmp", f"unix:{sock},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.1)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(sock))
            f = s.makefile("rw")
            f.readline()

            def cmd(c: dict) -> None:
                f.write(json.dumps(c) + "\n")
                f.flush()
                while True:
                    reply = json.loads(f.readline())
                    if "return" in reply or "error" in reply:
                        assert "return" in reply, reply
                        return

            cmd({"execute": "qmp_capabilities"})
            deadline = time.monotonic() + 180
            while True:
                cmd({"execute": "screendump", "arguments": {"filename": str(ppm)}})
                magic, w, h, _, rest = ppm.read_bytes().split(maxsplit=4)
                screen = np.frombuffer(rest[:int(w) * int(h) * 3], dtype=np.uint8).reshape(int(h), int(w), 3)
                if screen.shape[1:] == until_row.shape[1:] and screen.shape[0] >= (row + 1) * 16 \
                        and (screen[row * 16:(row + 1) * 16] == until_row).all():
                    return screen
                assert time.monotonic() < deadline, "QEMU never showed the last line"
                time.sleep(1)
    finally:
        proc.kill()
        proc.wait()


def test_seabios_text_screen_equals_qemus() -> None:
    ours, cursor, serial = kvmpy_text_screen()
    assert ours.shape == (400, 720, 3)  # 80x25 cells of 9x16
    last = max(y for y in range(25) if ours[y * 16:(y + 1) * 16].any())
    tmp = Path(tempfile.mkdtemp(prefix="kv", dir="/tmp"))
    try:
        theirs = qemu_screendump(ours[last * 16:(last + 1) * 16], last, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert theirs.shape == ours.shape
    if cursor is not None:  # the cursor blinks on its own clock in each: leave its cell out
        r, c = cursor
        ours, theirs = ours.copy(), theirs.copy()
        ours[r * 16:(r + 1) * 16, c * 9:(c + 1) * 9] = theirs[r * 16:(r + 1) * 16, c * 9:(c + 1) * 9] = 0
    diff = (ours != theirs).any(axis=2)
    rows = sorted(set((np.nonzero(diff)[0] // 16).tolist()))
    assert not diff.any(), f"{diff.sum()} pixels differ in text rows {rows}"
    assert b"SeaBIOS (version" in serial
