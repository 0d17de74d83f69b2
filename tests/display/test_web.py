"""The browser console (``-display web``): headless Chromium shows SeaBIOS's text screen through noVNC and types into the guest.

A real kvmpy VM with ``-device VGA`` boots Debian's SeaBIOS on the host's KVM until
it prints "No bootable device." (the VGA text mode runs on the PVM host, see
tests/devices/vga/). Chromium loads the console's page; noVNC connects through
websockify to kvmpy's VNC server. The canvas noVNC drew, read back through the
DevTools protocol, must equal kvmpy's own screen of the same moment pixel for
pixel (the blinking cursor's cell aside), and so must the canvas's part of a
screenshot. A key pressed in the page must come out of the guest's PS/2
keyboard: its scancodes wait in the i8042's output buffer, or SeaBIOS's IRQ 1
handler has already moved the key into the BIOS keyboard buffer in guest RAM.

GRUB, booted from a grub-mkrescue ISO, takes 'c' and a command typed in the page, and the
page's canvas shows the command's output exactly as kvmpy's screendump does.

With ``-vnc`` too, the page's WebSocket reaches that very server. Command-line
mistakes are checked through ``python3 -m kvmpy`` itself (one line on stderr,
exit status 2), and a SIGKILLed VM must not leave websockify holding its port.
"""

from __future__ import annotations

import base64
import io
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kvmpy.config import MachineConfig
from kvmpy.config_devices import DeviceSpec
from kvmpy.devices.chardev import BufferBackend
from kvmpy.devices.vga import render
from kvmpy.devices.vga.factory import find_display
from kvmpy.display.options import parse_web
from kvmpy.display.web import environment_ready
from kvmpy.errors import ConfigError
from tests.display.cdp import Chromium, find_chromium
from tests.monitor.test_display import free_display

SEABIOS = Path("/usr/share/seabios/bios-256k.bin")
DONE = b"No bootable device."
BDA_KBD_HEAD, BDA_KBD_TAIL = 0x41A, 0x41C  # the BIOS keyboard buffer's head and tail (offsets from 0x400)
KEY_A = 0x1E61  # what the BIOS stores for 'a': set-1 scancode 0x1E, ASCII 'a'
A_MAKE, A_BREAK = 0x1E, 0x9E  # 'a' pressed and released, as the i8042 translates them to set 1
WHY_NOT = environment_ready()


def needs_vm(test):  # noqa: ANN001, ANN201 - a VM on the host's KVM with the console available
    for mark in (pytest.mark.kvm_host,
                 pytest.mark.skipif(not SEABIOS.is_file(), reason="needs Debian's seabios package"),
                 pytest.mark.skipif(WHY_NOT is not None, reason=f"browser console unavailable: {WHY_NOT}")):
        test = mark(test)
    return test


CANVAS = "document.querySelector('#screen canvas') || document.querySelector('canvas')"
# The canvas's RGBA pixels as [width, height, base64]; null before noVNC has drawn anything.
READ_CANVAS = f"""(() => {{
  const c = {CANVAS};
  if (!c || c.width < 100) return null;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let s = '';
  for (let i = 0; i < d.length; i += 32768) s += String.fromCharCode.apply(null, d.subarray(i, i + 32768));
  return [c.width, c.height, btoa(s)];
}})()"""
CANVAS_BOX = f"""(() => {{ const r = ({CANVAS}).getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; }})()"""


def run_kvmpy(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run([sys.executable, "-m", "kvmpy", *args], capture_output=True, text=True, timeout=60,
                          env=env, stdin=subprocess.DEVNULL)


def test_parse_web() -> None:
    assert parse_web("web") == parse_web("web=127.0.0.1:6080") == parse_web("web=:6080")
    assert (parse_web("web=0.0.0.0:8080").host, parse_web("web=0.0.0.0:8080").port) == ("0.0.0.0", 8080)
    assert parse_web("web=5999").port == 5999
    for bad in ("web=host:", "web=:99999", "web=:x", "web,gl=on", "vnc=:1", "web=:" + "9" * 40):
        with pytest.raises(ConfigError):
            parse_web(bad)


def test_bad_port_is_one_line() -> None:
    r = run_kvmpy("-display", "web=:notaport")
    assert r.returncode == 2, r.stderr
    assert "bad port" in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr


@needs_vm
def test_unusable_address_is_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        cases = [(f"web=127.0.0.1:{port}", "Address already in use"),
                 ("web=203.0.113.7:6080", "cannot listen on 203.0.113.7:6080"),  # not this host's address
                 ("web=[::1]:6080", "cannot resolve '::1' as an IPv4 address")]
        for arg, message in cases:
            r = run_kvmpy("-enable-kvm", "-display", arg)
            assert r.returncode == 2, r.stderr
            assert message in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr


@needs_vm
def test_killed_vm_leaves_no_bridge() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    vm = subprocess.Popen([sys.executable, "-m", "kvmpy", "-enable-kvm", "-m", "64", "-serial", "null",
                           "-display", f"web=127.0.0.1:{port}"], env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:  # the page is served once the VM runs
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    assert b"core/rfb.js" in s.makefile("rb").read()
                break
            except OSError:
                assert time.monotonic() < deadline and vm.poll() is None, "the console never answered"
                time.sleep(0.2)
    finally:
        vm.kill()
        vm.wait()
    deadline = time.monotonic() + 10
    while True:  # websockify saw its lifeline close and stopped listening
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            break
        assert time.monotonic() < deadline, "websockify outlived the killed VM"
        time.sleep(0.2)


@needs_vm
def test_with_vnc_the_page_shows_that_server() -> None:
    from websockify.websocket import WebSocket

    from kvmpy.machine import Machine

    n = free_display()
    machine = Machine(MachineConfig(memory=64 << 20, vnc=f":{n}", web="web=127.0.0.1:0").validate(),
                      console=BufferBackend())
    try:
        machine.start()
        board = machine.board
        assert board.vnc is not None and board.vnc.address[1] == 5900 + n and board.vnc.clients == []
        ws = WebSocket()
        ws.connect(f"ws://127.0.0.1:{board.web.address[1]}/websockify", protocols=["binary"])
        received = b""

        def read(count: int) -> bytes:  # the RFB stream, whatever the WebSocket messages' boundaries
            nonlocal received
            while len(received) < count:
                received += ws.recv()
            data, received = received[:count], received[count:]
            return data

        assert read(12) == b"RFB 003.008\n"
        ws.send(b"RFB 003.008\n")
        count = read(1)[0]
        assert 1 in read(count)  # security None: the -vnc server asked for no password
        ws.send(b"\x01")
        assert read(4) == b"\0\0\0\0"
        ws.send(b"\x01")  # ClientInit, shared
        width, height = struct.unpack("!HH", read(4))
        assert (width, height) == (640, 480)  # no display adapter: the blank screen
        deadline = time.monotonic() + 10
        while len(board.vnc.clients) != 1:  # the -vnc server itself has the browser's bridge as its viewer
            assert time.monotonic() < deadline, board.vnc.clients
            time.sleep(0.05)
        ws.close()
    finally:
        machine.close()


def rgb(frame) -> np.ndarray:  # noqa: ANN001
    px = np.frombuffer(frame.pixels, dtype=np.uint8).reshape(frame.height, frame.stride)[:, :frame.width * 4]
    return px.reshape(frame.height, frame.width, 4)[:, :, 2::-1]


def without_cursor(a: np.ndarray, b: np.ndarray, cursor: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Both screens with the cursor's cell blanked: it blinks on its own clock."""
    if cursor is None:
        return a, b
    r, c = cursor
    a, b = a.copy(), b.copy()
    a[r * 16:(r + 1) * 16, c * 9:(c + 1) * 9] = b[r * 16:(r + 1) * 16, c * 9:(c + 1) * 9] = 0
    return a, b


def keyboard_buffer(ram: memoryview) -> list[int]:
    """The words waiting in the BIOS keyboard buffer (the BDA's ring between head and tail)."""
    head = int.from_bytes(ram[BDA_KBD_HEAD:BDA_KBD_HEAD + 2], "little")
    tail = int.from_bytes(ram[BDA_KBD_TAIL:BDA_KBD_TAIL + 2], "little")
    words, pos = [], head
    while pos != tail and len(words) < 16:
        words.append(int.from_bytes(ram[0x400 + pos:0x400 + pos + 2], "little"))
        pos = pos + 2 if pos + 2 < 0x3E else 0x1E
    return words


@needs_vm
@pytest.mark.skipif(find_chromium() is None, reason="needs Debian's chromium package (scripts/setup installs it)")
def test_browser_shows_the_screen_and_types_into_the_guest() -> None:
    from PIL import Image

    from kvmpy.machine import Machine

    console = BufferBackend()
    config = MachineConfig(memory=128 << 20, devices=(DeviceSpec(driver="VGA"),), web="web=127.0.0.1:0")
    machine = Machine(config.validate(), console=console)
    browser = None
    try:
        machine.start()
        assert console.wait_for(DONE, timeout=240), console.output[-2000:]
        board = machine.board
        assert board.web is not None and board.vnc is not None
        vga = find_display(board.devices.values())
        assert vga is not None
        cursor = render.cursor_position(vga.core, render.text_geometry(vga.core))

        browser = Chromium()
        browser.navigate(board.web.url)
        deadline, canvas, screen = time.monotonic() + 60, None, None
        while time.monotonic() < deadline:  # noVNC draws what the server sends: poll until it caught up
            shown = browser.evaluate(READ_CANVAS)
            screen = rgb(board.vnc.refresh_now())
            if shown is not None:
                w, h, data = shown
                canvas = np.frombuffer(base64.b64decode(data), dtype=np.uint8).reshape(h, w, 4)[:, :, :3]
                if canvas.shape == screen.shape:
                    a, b = without_cursor(canvas, screen, cursor)
                    if (a == b).all():
                        break
            time.sleep(0.2)
        assert canvas is not None, "noVNC never drew its canvas"
        assert canvas.shape == screen.shape == (400, 720, 3)
        a, b = without_cursor(canvas, screen, cursor)
        assert (a == b).all(), f"{(a != b).any(axis=2).sum()} pixels differ between the canvas and the screen"
        assert screen.any()  # SeaBIOS's text is there, not a black screen

        left, top, width, height = (round(v) for v in browser.evaluate(CANVAS_BOX))
        assert (width, height) == (720, 400)
        shot = np.asarray(Image.open(io.BytesIO(browser.screenshot())).convert("RGB"))
        a, b = without_cursor(shot[top:top + height, left:left + width], screen, cursor)
        assert (a == b).all(), "the screenshot's canvas differs from the screen"

        i8042 = board.devices["i8042"]
        queued = i8042.save()["queue"]
        before = keyboard_buffer(board.ram.mv)
        browser.click(left + width / 2, top + height / 2)  # noVNC takes keys once its canvas has focus
        browser.key("a", "KeyA", 65, "a")

        def arrived() -> bool:  # still in the controller's output buffer, or already read by SeaBIOS
            return (i8042.save()["queue"][len(queued):] == [[A_MAKE, False], [A_BREAK, False]]
                    or keyboard_buffer(board.ram.mv)[len(before):] == [KEY_A])

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not arrived():
            time.sleep(0.1)
        assert arrived(), (i8042.save()["queue"], keyboard_buffer(board.ram.mv))
    finally:
        if browser is not None:
            browser.close()
        machine.close()
    assert not machine.board.web.running()  # websockify ends with the VM


# What the browser's keyboard sends for each character of a GRUB command: (key, code, keyCode, text).
BROWSER_KEYS = {" ": (" ", "Space", 32, " "), "-": ("-", "Minus", 189, "-"), "\n": ("Enter", "Enter", 13, "\r")}


def browser_type(browser: Chromium, text: str) -> None:
    for ch in text:
        key = BROWSER_KEYS.get(ch) or (ch, f"Key{ch.upper()}" if ch.isalpha() else f"Digit{ch}", ord(ch.upper()), ch)
        browser.key(*key)
        time.sleep(0.15)


@needs_vm
@pytest.mark.skipif(find_chromium() is None, reason="needs Debian's chromium package (scripts/setup installs it)")
def test_browser_types_a_grub_command_and_shows_its_output() -> None:
    """GRUB (from a grub-mkrescue ISO on -cdrom) in the page: 'c' and a command typed in the browser reach
    GRUB through noVNC, VNC and the PS/2 keyboard; the command's output appears on the page's canvas,
    which must equal kvmpy's screendump pixel for pixel (the cursor's cell aside)."""
    import shutil
    import tempfile

    from tests.firmware.grub_iso import grub_iso, missing_tools
    from tests.firmware.screens import KvmpyScreen, differing_rows
    from tests.firmware.test_grub import MENU_HELP, PROMPT, last_line

    if missing_tools():
        pytest.skip(f"needs {', '.join(missing_tools())} for the GRUB ISO (scripts/setup installs them)")
    tmp = Path(tempfile.mkdtemp(prefix="kvwg", dir="/tmp"))  # short: UNIX sockets
    ours = KvmpyScreen(["-m", "128", "-nodefaults", "-vga", "std", "-cdrom", str(grub_iso()),
                        "-display", "web=127.0.0.1:0"], tmp)
    browser = None
    try:
        ours.wait_text(lambda rows: any(r.strip() == MENU_HELP for r in rows), 300)
        web = ours.machine.board.web
        assert web is not None
        browser = Chromium()
        browser.navigate(web.url)
        browser.wait_for(f"!!({CANVAS}) && ({CANVAS}).width >= 100", timeout=60)
        left, top, width, height = (round(v) for v in browser.evaluate(CANVAS_BOX))
        browser.click(left + width / 2, top + height / 2)  # noVNC takes keys once its canvas has focus
        browser_type(browser, "c")
        ours.wait_text(lambda rows: last_line(rows) == PROMPT, 60)
        browser_type(browser, "echo kvmpy-web-ok\n")
        rows = ours.wait_text(lambda rows: last_line(rows) == PROMPT and "kvmpy-web-ok" in rows, 60)
        assert any(r.endswith("grub> echo kvmpy-web-ok") for r in rows), rows

        screen, cursor = ours.frame(), ours.cursor()
        deadline, diff = time.monotonic() + 30, None
        while time.monotonic() < deadline:  # noVNC draws what the server sends: poll until it caught up
            shown = browser.evaluate(READ_CANVAS)
            if shown is not None:
                w, h, data = shown
                canvas = np.frombuffer(base64.b64decode(data), dtype=np.uint8).reshape(h, w, 4)[:, :, :3]
                diff = differing_rows(canvas, screen, cursor)
                if not diff:
                    break
            time.sleep(0.2)
        assert diff == [], f"the page's canvas differs from kvmpy's screendump in text rows {diff}"
    finally:
        if browser is not None:
            browser.close()
        ours.close()
        shutil.rmtree(tmp, ignore_errors=True)
