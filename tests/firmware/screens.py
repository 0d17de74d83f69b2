"""Firmware text screens under kvmpy and under QEMU given the same arguments, driven and compared through QMP.

kvmpy runs in this process (the command line parsed as ``python3 -m kvmpy`` parses it) with
a QMP server on a UNIX socket, so a test can read what its VGA text memory says (to know
when to press a key) while it types with QMP ``send-key`` and takes QMP ``screendump``s, as
a user of either would. QEMU (TCG, the oracle) gets the same arguments; its screendump must
equal kvmpy's at each step, pixel for pixel except the blinking cursor's cell. On this host
QEMU's KVM cannot run GRUB's protected-mode code, so the oracle runs under TCG.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np
from qemu.qmp.legacy import QEMUMonitorProtocol

CELL_W, CELL_H = 9, 16  # 80x25 text, as SeaBIOS's and GRUB's console mode 3 draws it
QEMU_ONLY = ["-accel", "tcg", "-global", "apic-common.vapic=off"]  # kvmpy has no vapic option ROM to list
CHARS = {" ": "spc", "-": "minus", "\n": "ret", ".": "dot", "/": "slash", "=": "equal", ",": "comma"}


def read_ppm(path: Path) -> np.ndarray:
    """A binary PPM (P6, maxval 255) as an (h, w, 3) uint8 array."""
    magic, w, h, _, rest = path.read_bytes().split(maxsplit=4)
    assert magic == b"P6", magic
    return np.frombuffer(rest[:int(w) * int(h) * 3], dtype=np.uint8).reshape(int(h), int(w), 3)


def connect(path: Path, alive: Callable[[], bool], timeout: float = 30) -> QEMUMonitorProtocol:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert alive() and time.monotonic() < deadline, f"no QMP socket at {path}"
        time.sleep(0.05)
    qmp = QEMUMonitorProtocol(str(path))
    qmp.connect()
    return qmp


def key_names(text: str) -> list[str]:
    """The QKeyCodes that type ``text`` (lower-case letters, digits and a few punctuation marks)."""
    out = []
    for ch in text:
        if ch.isascii() and (ch.islower() or ch.isdigit()):
            out.append(ch)
        else:
            out.append(CHARS[ch])
    return out


class Screen:
    """A VM with a QMP monitor: screendumps and typing."""

    qmp: QEMUMonitorProtocol
    dump: Path

    def frame(self) -> np.ndarray:
        self.qmp.cmd("screendump", filename=str(self.dump))
        return read_ppm(self.dump)

    def type(self, text: str, gap: float = 0.25) -> None:
        """One QMP send-key per character; ``gap`` apart so each is released before the next."""
        for key in key_names(text):
            self.press(key)
            time.sleep(gap)

    def press(self, key: str) -> None:
        reply = self.qmp.cmd("send-key", keys=[{"type": "qcode", "data": key}])
        assert reply == {}, reply


class KvmpyScreen(Screen):
    """kvmpy in this process, from a command line, with a QMP server at ``tmp/kvmpy.sock``."""

    def __init__(self, args: list[str], tmp: Path) -> None:
        from kvmpy.cli import parse_qemu_args
        from kvmpy.devices.chardev import BufferBackend
        from kvmpy.devices.vga.factory import find_display
        from kvmpy.machine import Machine, qmp_commands
        from kvmpy.monitor.endpoint import parse_endpoint
        from kvmpy.monitor.server import QmpServer

        sock, self.dump = tmp / "kvmpy.sock", tmp / "kvmpy.ppm"
        self.console = BufferBackend()
        self.machine = Machine(parse_qemu_args(["-enable-kvm", *args]), console=self.console)
        self.server = QmpServer(self.machine, [parse_endpoint(f"unix:{sock},server,wait=off")], qmp_commands())
        self.server.start()
        self.machine.start()
        vga = find_display(self.machine.board.devices.values())
        assert vga is not None, "no VGA: give -vga std"
        self.vga = vga
        self.qmp = connect(sock, lambda: True)

    def text(self) -> list[str]:
        """The text rows the VGA shows now (code page 437), right-stripped; empty outside text mode."""
        from kvmpy.devices.vga import render

        geo = render.text_geometry(self.vga.core)
        if (geo.cols, geo.rows, geo.cell_w, geo.cell_h) != (80, 25, CELL_W, CELL_H):
            return []
        cells = render.text_cells(self.vga.core, geo)
        return [bytes((row & 0xFF).astype(np.uint8)).decode("cp437").rstrip() for row in cells]

    def cursor(self) -> tuple[int, int] | None:
        from kvmpy.devices.vga import render

        return render.cursor_position(self.vga.core, render.text_geometry(self.vga.core))

    def wait_text(self, done: Callable[[list[str]], bool], timeout: float, settle: float = 1.0) -> list[str]:
        """The text once ``done`` holds for it and it has not changed for ``settle`` seconds."""
        deadline = time.monotonic() + timeout
        last: list[str] = []
        since = time.monotonic()
        while True:
            rows = self.text()
            if rows != last:
                last, since = rows, time.monotonic()
            elif done(rows) and time.monotonic() - since >= settle:
                return rows
            assert time.monotonic() < deadline, "kvmpy's screen never got there:\n" + "\n".join(rows)
            time.sleep(0.1)

    def wait_for(self, line: str, timeout: float) -> list[str]:
        """The text once a row starts with ``line`` (stripped of leading blanks) and the screen has settled."""
        return self.wait_text(lambda rows: any(r.strip().startswith(line) for r in rows), timeout)

    def close(self) -> None:
        try:
            self.qmp.close()
        finally:
            self.server.close()
            self.machine.close()


class QemuScreen(Screen):
    """qemu-system-x86_64 (TCG) with the same arguments and a QMP socket at ``tmp/qemu.sock``."""

    def __init__(self, args: list[str], tmp: Path) -> None:
        sock, self.dump = tmp / "qemu.sock", tmp / "qemu.ppm"
        sock.unlink(missing_ok=True)  # a socket left by an earlier run would be connected to too early
        self.proc = subprocess.Popen(["qemu-system-x86_64", *QEMU_ONLY, *args, "-display", "none",
                                      "-qmp", f"unix:{sock},server=on,wait=off"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.qmp = connect(sock, lambda: self.proc.poll() is None)

    def wait_frame(self, want: np.ndarray, cursor: tuple[int, int] | None, timeout: float) -> np.ndarray:
        """QEMU's screen once it equals ``want`` outside the cursor cell; on timeout, which text rows differ."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.frame()
            rows = differing_rows(got, want, cursor)
            if not rows:
                return got
            assert time.monotonic() < deadline, f"QEMU's screen differs from kvmpy's in text rows {rows}"
            time.sleep(0.1)

    def close(self) -> None:
        try:
            self.qmp.close()
        finally:
            self.proc.kill()
            self.proc.communicate()


def differing_rows(a: np.ndarray, b: np.ndarray, cursor: tuple[int, int] | None) -> list[int]:
    """The 16-line text rows in which two screens differ, leaving out the cursor's cell (it blinks
    on each one's own clock); all rows if their sizes differ."""
    if a.shape != b.shape:
        return list(range(max(a.shape[0], b.shape[0]) // CELL_H))
    diff = (a != b).any(axis=2)
    if cursor is not None:
        r, c = cursor
        diff[r * CELL_H:(r + 1) * CELL_H, c * CELL_W:(c + 1) * CELL_W] = False
    return sorted(set((np.nonzero(diff)[0] // CELL_H).tolist()))
