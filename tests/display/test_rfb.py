"""The RFB parser treats the client as hostile: bounded lengths, and random bytes end in a clean disconnect."""

from __future__ import annotations

import socket
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmpy.display.rfb import (
    MAX_CUT_TEXT,
    MAX_ENCODINGS,
    ClientCutText,
    ClientMessageParser,
    KeyEvent,
    PixelFormat,
    RfbError,
    SetEncodings,
    UpdateRequest,
    parse_version,
)
from kvmpy.display.surface import Rect
from kvmpy.display.vnc import VncServer, VncSession
from tests.display.framebuffer import MemoryFramebuffer


def test_messages_split_anywhere_parse_the_same() -> None:
    stream = (struct.pack("!BxH3i", 2, 3, 16, 0, -223) + struct.pack("!BBHHHH", 3, 1, 1, 2, 3, 4)
              + struct.pack("!BBxxI", 4, 1, 0x61) + struct.pack("!BxxxI", 6, 3) + b"abc")
    want = [SetEncodings((16, 0, -223)), UpdateRequest(True, Rect(1, 2, 3, 4)), KeyEvent(True, 0x61),
            ClientCutText(b"abc")]
    for cut in range(len(stream) + 1):
        p = ClientMessageParser()
        assert p.feed(stream[:cut]) + p.feed(stream[cut:]) == want


def test_lengths_are_bounded_before_anything_is_allocated() -> None:
    with pytest.raises(RfbError):
        ClientMessageParser().feed(struct.pack("!BxH", 2, MAX_ENCODINGS + 1))
    with pytest.raises(RfbError):
        ClientMessageParser().feed(struct.pack("!BxxxI", 6, MAX_CUT_TEXT + 1))
    with pytest.raises(RfbError):
        ClientMessageParser().feed(b"\x07")


def test_unusable_pixel_formats_are_refused() -> None:
    for bad in (PixelFormat(24), PixelFormat(true_colour=False), PixelFormat(16, red_shift=12)):
        with pytest.raises(RfbError):
            PixelFormat.from_bytes(bad.to_bytes())


def test_versions() -> None:
    assert parse_version(b"RFB 003.008\n") == (3, 8)
    assert parse_version(b"RFB 003.889\n") == (3, 8)
    assert parse_version(b"RFB 003.007\n") == (3, 7)
    assert parse_version(b"RFB 003.006\n") == (3, 3)
    for bad in (b"RFB 004.000\n", b"HTTP/1.1 200", b"RFB 003.008 "):
        with pytest.raises(RfbError):
            parse_version(bad)


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_random_bytes_parse_or_raise_rfb_error(data: bytes) -> None:
    p = ClientMessageParser()
    try:
        p.feed(data)
    except RfbError:
        pass


def _drain(sock: socket.socket) -> None:
    """Reads what the server sends until it closes (or resets) the connection."""
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


# A valid handshake (3.8, security None, shared) that random messages follow.
HANDSHAKE = b"RFB 003.008\n\x01\x01"


@settings(max_examples=60, deadline=None)
@given(prefix=st.sampled_from([b"", HANDSHAKE]), data=st.binary(max_size=300))
def test_a_session_fed_random_bytes_ends_cleanly(prefix: bytes, data: bytes) -> None:
    fb = MemoryFramebuffer(8, 8)
    srv = VncServer(fb, "127.0.0.1", 0)  # not started: the session runs here, in the test's thread
    ours, theirs = socket.socketpair()
    try:
        drain = threading.Thread(target=_drain, args=(theirs,), daemon=True)
        theirs.sendall(prefix + data)
        theirs.shutdown(socket.SHUT_WR)
        drain.start()
        session = VncSession(srv, ours, ("fuzz", 0))
        session.serve()  # must return: any exception but a clean disconnect fails the test
        drain.join(timeout=5)
        assert not drain.is_alive()
    finally:
        theirs.close()
        srv.close()
