"""A minimal RFB client over a plain socket, for what vncdotool does not expose: old protocol
versions, pixel formats, and counting the bytes an idle screen sends."""

from __future__ import annotations

import socket
import struct
import time
import zlib

from kvmpy.display import vnc_auth
from kvmpy.display.rfb import PixelFormat


class RawClient:
    def __init__(self, address: tuple, version: bytes = b"RFB 003.008\n", password: str | None = None,
                 shared: bool = True) -> None:
        self.sock = socket.create_connection(address[:2], timeout=10)
        self.received = 0
        self.inflate = zlib.decompressobj()  # one zlib stream per connection, as the zlib encoding has
        assert self.recv(12) == b"RFB 003.008\n"
        self.sock.sendall(version)
        if version[8:11] < b"007":  # 3.3, and 3.4-3.6 which a server treats as 3.3
            (sec,) = struct.unpack("!I", self.recv(4))
        else:
            n = self.recv(1)[0]
            types = self.recv(n)
            sec = types[0]
            self.sock.sendall(bytes([sec]))
        self.security = sec
        if sec == 2:
            challenge = self.recv(16)
            self.sock.sendall(vnc_auth.response(password or "", challenge))
            (result,) = struct.unpack("!I", self.recv(4))
            if result:
                raise PermissionError("authentication failed")
        elif version == b"RFB 003.008\n":
            assert struct.unpack("!I", self.recv(4)) == (0,)
        self.sock.sendall(bytes([int(shared)]))
        self.width, self.height = struct.unpack("!HH", self.recv(4))
        self.pixel_format = PixelFormat.from_bytes(self.recv(16))
        (n,) = struct.unpack("!I", self.recv(4))
        self.name = self.recv(n).decode()

    def recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        self.received += n
        return bytes(buf)

    def set_encodings(self, *encodings: int) -> None:
        self.sock.sendall(struct.pack(f"!BxH{len(encodings)}i", 2, len(encodings), *encodings))

    def set_pixel_format(self, pf: PixelFormat) -> None:
        self.pixel_format = pf
        self.sock.sendall(b"\0\0\0\0" + pf.to_bytes())

    def request(self, incremental: bool, x: int = 0, y: int = 0, w: int | None = None, h: int | None = None) -> None:
        self.sock.sendall(struct.pack("!BBHHHH", 3, incremental, x, y,
                                      self.width if w is None else w, self.height if h is None else h))

    def read_update(self) -> list[tuple[int, int, int, int, int, bytes]]:
        """One FramebufferUpdate of Raw, zlib and DesktopSize rectangles: (x, y, w, h, encoding, data)."""
        kind, _, count = struct.unpack("!BBH", self.recv(4))
        assert kind == 0
        rects = []
        for _ in range(count):
            x, y, w, h, enc = struct.unpack("!HHHHi", self.recv(12))
            if enc == -223:
                self.width, self.height = w, h
                rects.append((x, y, w, h, enc, b""))
            elif enc == 6:  # zlib: a length, then the raw pixels deflated
                (n,) = struct.unpack("!I", self.recv(4))
                rects.append((x, y, w, h, enc, self.inflate.decompress(self.recv(n))))
            else:
                assert enc == 0, enc
                rects.append((x, y, w, h, enc, self.recv(w * h * self.pixel_format.bytes_per_pixel)))
        return rects

    def idle_bytes(self, seconds: float, poll: float = 0.1) -> int:
        """Bytes of FramebufferUpdates received over ``seconds`` while asking for an incremental update every
        ``poll`` seconds, as viewers keep asking (a full update should have been read first)."""
        start = self.received
        end = time.monotonic() + seconds
        try:
            while (left := end - time.monotonic()) > 0:
                self.request(True)
                self.sock.settimeout(min(poll, left))
                try:
                    if not self.sock.recv(1, socket.MSG_PEEK):
                        raise EOFError
                except socket.timeout:
                    continue
                self.sock.settimeout(10)
                self.read_update()
        finally:
            self.sock.settimeout(10)
        return self.received - start

    def key(self, keysym: int, down: bool) -> None:
        self.sock.sendall(struct.pack("!BBxxI", 4, down, keysym))

    def close(self) -> None:
        self.sock.close()
