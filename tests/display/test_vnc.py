"""The VNC server against a real RFB client (vncdotool) and a plain-socket one, over a framebuffer the test draws."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from kvmpy.display.rfb import ENC_DESKTOP_SIZE, ENC_RAW, ENC_ZLIB, PixelFormat
from kvmpy.display.surface import Rect
from kvmpy.display.vnc import VncServer
from tests.display.framebuffer import MemoryFramebuffer
from tests.display.rfb_client import RawClient

api = pytest.importorskip("vncdotool.api")
from vncdotool import rfb as vnc_rfb  # noqa: E402
from vncdotool.client import VNCDoToolClient, VNCDoToolFactory  # noqa: E402


class Keys:
    def __init__(self) -> None:
        self.events: list[tuple[str, bool]] = []
        self.cond = threading.Condition()

    def key_event(self, qcode: str, down: bool) -> None:
        with self.cond:
            self.events.append((qcode, down))
            self.cond.notify_all()

    def wait(self, n: int, timeout: float = 10) -> list[tuple[str, bool]]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.events) >= n, timeout)
            return list(self.events)


class Pointer:
    def __init__(self) -> None:
        self.events: list[tuple[int, int, int]] = []

    def pointer_event(self, dx: int, dy: int, buttons: int) -> None:
        self.events.append((dx, dy, buttons))


@pytest.fixture
def fb() -> MemoryFramebuffer:
    fb = MemoryFramebuffer(160, 100)
    fb.pattern()
    return fb


@pytest.fixture
def server(fb):
    keys = Keys()
    srv = VncServer(fb, "127.0.0.1", 0, keyboard=keys, pointer=Pointer()).start()
    yield srv
    srv.close()


def target(srv: VncServer) -> str:
    return f"127.0.0.1::{srv.address[1]}"


def capture(client) -> bytes:
    client.refreshScreen(False)
    return client.screen.convert("RGB").tobytes()


class ZrleClient(VNCDoToolClient):
    encoding = vnc_rfb.Encoding.ZRLE


class ZrleFactory(VNCDoToolFactory):
    protocol = ZrleClient


@pytest.mark.parametrize("factory", [VNCDoToolFactory, ZrleFactory], ids=["raw", "zrle"])
def test_the_captured_screen_is_the_frame(server, fb, factory) -> None:
    client = api.connect(target(server), factory_class=factory, timeout=20)
    try:
        assert capture(client) == fb.rgb_image()
        fb.fill(Rect(10, 20, 30, 15), (200, 10, 99))  # an update of part of the screen
        time.sleep(0.2)
        client.refreshScreen(True)
        assert client.screen.convert("RGB").tobytes() == fb.rgb_image()
    finally:
        client.disconnect()


def test_password_auth_lets_in_the_right_password_only(fb) -> None:
    srv = VncServer(fb, "127.0.0.1", 0, password_required=True).start()
    try:
        with pytest.raises(PermissionError):  # password=on and none set yet: nobody gets in
            RawClient(srv.address, password="")
        srv.set_password("s3cret")
        with pytest.raises(PermissionError):
            RawClient(srv.address, password="wrong")
        client = api.connect(target(srv), password="s3cret", timeout=20)
        try:
            assert capture(client) == fb.rgb_image()
        finally:
            client.disconnect()
    finally:
        srv.close()


def test_two_viewers_share_the_screen(server, fb) -> None:
    a = api.connect(target(server), timeout=20)
    b = api.connect(target(server), timeout=20)
    try:
        assert capture(a) == capture(b) == fb.rgb_image()
        assert len(server.clients) == 2
    finally:
        a.disconnect()
        b.disconnect()


def test_keys_typed_reach_the_keyboard_as_qcodes(server) -> None:
    client = api.connect(target(server), timeout=20)
    try:
        client.keyPress("a")
        client.keyPress("shift-x")
        client.keyPress("enter")
        events = server.keyboard.wait(8)
    finally:
        client.disconnect()
    assert events == [("a", True), ("a", False), ("shift", True), ("x", True), ("x", False),
                      ("shift", False), ("ret", True), ("ret", False)]


def test_an_idle_screen_sends_almost_nothing(server, fb) -> None:
    c = RawClient(server.address)
    c.set_encodings(ENC_RAW)
    c.request(False)
    c.read_update()
    assert c.idle_bytes(2) == 0  # a viewer keeps asking, as real ones do
    fb.fill(Rect(0, 0, 2, 2), (1, 2, 3))  # and a change still arrives, just that rectangle
    c.request(True)
    rects = c.read_update()
    assert [(r[0], r[1], r[2], r[3]) for r in rects] == [(0, 0, 2, 2)]
    c.close()


@pytest.mark.parametrize("version", [b"RFB 003.003\n", b"RFB 003.007\n", b"RFB 003.005\n"])
def test_older_protocol_versions(server, fb, version) -> None:
    c = RawClient(server.address, version=version)
    assert (c.width, c.height, c.security) == (160, 100, 1)
    c.request(False)
    ((x, y, w, h, enc, data),) = c.read_update()
    assert data[:4 * 160] == fb.refresh().frame.row(0)
    c.close()


@pytest.mark.parametrize("pf", [
    PixelFormat(32, 24, True, True, 255, 255, 255, 16, 8, 0),
    PixelFormat(32, 24, False, True, 255, 255, 255, 0, 8, 16),
    PixelFormat(16, 16, False, True, 31, 63, 31, 11, 5, 0),
    PixelFormat(8, 8, False, True, 7, 7, 3, 0, 3, 6),
], ids=["32be", "32bgr", "16-565", "8-bgr233"])
def test_set_pixel_format_is_honoured(server, fb, pf) -> None:
    c = RawClient(server.address)
    c.set_pixel_format(pf)
    c.request(False, 3, 4, 1, 1)
    ((_, _, _, _, _, data),) = c.read_update()
    frame = fb.refresh().frame
    b, g, r, _ = frame.pixels[4 * frame.stride + 12 : 4 * frame.stride + 16]
    value = (r * pf.red_max // 255) << pf.red_shift | (g * pf.green_max // 255) << pf.green_shift \
        | (b * pf.blue_max // 255) << pf.blue_shift
    assert data == value.to_bytes(pf.bytes_per_pixel, "big" if pf.big_endian else "little")
    c.close()


def test_a_mode_change_is_announced_with_desktop_size(server, fb) -> None:
    c = RawClient(server.address)
    c.set_encodings(ENC_RAW, ENC_DESKTOP_SIZE)
    c.request(False)
    c.read_update()
    fb.resize(64, 48)
    c.request(True)
    rects = c.read_update()
    assert rects[0][2:5] == (64, 48, ENC_DESKTOP_SIZE)
    assert [r[:4] for r in rects[1:]] == [(0, 0, 64, 48)]
    c.close()


def test_pointer_positions_become_relative_motion(server) -> None:
    c = RawClient(server.address)
    for mask, x, y in ((0, 50, 50), (1, 53, 48), (0, 53, 48)):
        c.sock.sendall(struct.pack("!BBHH", 5, mask, x, y))
    c.request(False, 0, 0, 1, 1)
    c.read_update()  # the server has handled every message sent before
    assert server.pointer.events == [(3, -2, 1), (0, 0, 0)]
    c.close()


def test_a_client_that_stalls_in_the_handshake_is_dropped(fb, monkeypatch) -> None:
    monkeypatch.setattr("kvmpy.display.vnc.HANDSHAKE_TIMEOUT", 0.5)
    srv = VncServer(fb, "127.0.0.1", 0).start()
    try:
        s = socket.create_connection(srv.address[:2], timeout=5)
        assert s.recv(12) == b"RFB 003.008\n"
        assert s.recv(1) == b""  # closed by the server after the timeout
        s.close()
    finally:
        srv.close()


def test_binds_to_loopback_by_default(fb) -> None:
    srv = VncServer(fb, port=0)
    try:
        assert srv.address[0] == "127.0.0.1"
    finally:
        srv.close()


def test_zlib_rectangles_inflate_to_the_pixels(server, fb) -> None:
    c = RawClient(server.address)
    c.set_encodings(ENC_ZLIB, ENC_RAW)
    c.request(False)
    ((_, _, w, h, enc, data),) = c.read_update()
    assert (w, h, enc) == (160, 100, ENC_ZLIB)
    frame = fb.refresh().frame
    assert data == b"".join(frame.row(y) for y in range(frame.height))
    fb.fill(Rect(5, 5, 3, 3), (9, 8, 7))  # the stream goes on across updates
    c.request(True)
    ((x, y, w, h, enc, data),) = c.read_update()
    assert (x, y, w, h) == (5, 5, 3, 3) and data == bytes((7, 8, 9, 0)) * 9
    c.close()


def test_connections_beyond_the_cap_are_refused(fb, monkeypatch) -> None:
    monkeypatch.setattr("kvmpy.display.vnc.MAX_CONNECTIONS", 2)
    srv = VncServer(fb, "127.0.0.1", 0).start()
    held = [socket.create_connection(srv.address[:2], timeout=5) for _ in range(2)]  # stalled in the handshake
    try:
        for s in held:
            assert s.recv(12) == b"RFB 003.008\n"
        extra = socket.create_connection(srv.address[:2], timeout=5)
        assert extra.recv(12) == b""  # closed at once
        extra.close()
    finally:
        for s in held:
            s.close()
        srv.close()


def test_qemu_extended_key_events_name_the_key_itself(server) -> None:
    c = RawClient(server.address)
    c.set_encodings(ENC_RAW, -258)
    assert c.recv(16) == struct.pack("!BxHHHHHi", 0, 1, 0, 0, 0, 0, -258)  # the server confirms at once
    # keysym '2' with the key number of 'a' (0x1e): the key wins, as with a non-US layout; then right ctrl (E0 1D)
    for down, keysym, keycode in ((1, 0x32, 0x1E), (0, 0x32, 0x1E), (1, 0xFFE4, 0x9D), (0, 0xFFE4, 0x9D)):
        c.sock.sendall(struct.pack("!BBHII", 255, 0, down, keysym, keycode))
    assert server.keyboard.wait(4) == [("a", True), ("a", False), ("ctrl_r", True), ("ctrl_r", False)]
    c.close()


def test_an_exclusive_viewer_disconnects_the_others(server) -> None:
    shared = RawClient(server.address)
    exclusive = RawClient(server.address, shared=False)  # QEMU's default share policy: allow-exclusive
    shared.sock.settimeout(5)
    assert shared.sock.recv(1) == b""
    deadline = time.monotonic() + 5
    while len(server.clients) != 1 and time.monotonic() < deadline:  # the closed session leaves the list
        time.sleep(0.01)
    assert len(server.clients) == 1
    exclusive.close()
    shared.close()


def _failed_handshakes(port: int) -> list[bytes]:
    """What a server answers to a wrong password under 3.8, 3.7 and 3.3, and to an unoffered security type."""
    out = []
    for version, choose in ((b"RFB 003.008\n", 2), (b"RFB 003.007\n", 2), (b"RFB 003.003\n", None),
                            (b"RFB 003.008\n", 1)):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        got = s.recv(12)
        s.sendall(version)
        got += s.recv(4 if choose is None else 2)
        if choose is not None:
            s.sendall(bytes([choose]))
        if choose != 1:
            assert len(s.recv(16)) == 16  # the challenge (random: left out of the comparison)
            s.sendall(bytes(16))  # a wrong answer
        rest = b""
        while chunk := s.recv(256):
            rest += chunk
        out.append(got + rest)
        s.close()
    return out


def test_failed_authentication_is_byte_for_byte_qemus(fb, tmp_path) -> None:
    import shutil
    import subprocess
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("no qemu-system-x86_64")
    srv = VncServer(fb, "127.0.0.1", 0, password_required=True).start()
    srv.set_password("right")
    try:
        ours = _failed_handshakes(srv.address[1])
    finally:
        srv.close()
    for n in range(70, 99):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", 5900 + n))
                break
            except OSError:
                continue
    qemu = subprocess.Popen(["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
                             "-vnc", f"127.0.0.1:{n},password=on", "-S"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", 5900 + n), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "QEMU's VNC server did not start"
                time.sleep(0.1)
        theirs = _failed_handshakes(5900 + n)
    finally:
        qemu.kill()
        qemu.wait(10)
    assert ours == theirs
