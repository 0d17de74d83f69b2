"""The VNC server: shows a :class:`DisplaySource` to any number of RFB viewers and feeds their input back.

One refresh thread asks the source for an :class:`Update` every
``REFRESH_INTERVAL`` (while anyone watches) and adds its dirty rectangles to each
viewer's pending region; each viewer's own thread answers that viewer's
FramebufferUpdateRequests from the latest frame. So an idle screen sends nothing,
a slow viewer never holds up the others, and nothing queues without bound: a
viewer that falls behind gets the newest pixels of the region it missed.

Security None, or VNC Authentication when a password is required (as QEMU's
``password=on``: until a password is set, nobody gets in). Keys arrive as X11
keysyms and reach the :class:`KeyboardSink` as QKeyCode names; pointer positions
become relative motion for the :class:`PointerSink`.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from kvmpy.devices.scancodes import QNUM_TO_QCODE
from kvmpy.display.keysym import keysym_to_qcode
from kvmpy.display.rfb import (
    ENC_DESKTOP_SIZE,
    ENC_QEMU_EXTENDED_KEY,
    NATIVE_FORMAT,
    SEC_NONE,
    SEC_VNC_AUTH,
    ClientCutText,
    ClientMessageParser,
    ExtendedKeyEvent,
    KeyEvent,
    PixelFormat,
    PointerEvent,
    RfbError,
    SetEncodings,
    SetPixelFormat,
    UpdateRequest,
    bounding_box,
    clip,
    parse_version,
    rect_header,
    server_init,
    update_header,
)
from kvmpy.display.rfb_encodings import Encoder
from kvmpy.display import vnc_auth
from kvmpy.display.surface import DisplaySource, Frame, KeyboardSink, PointerSink, Rect, Update

log = logging.getLogger(__name__)

VNC_BASE_PORT = 5900
REFRESH_INTERVAL = 0.03  # QEMU's default GUI refresh: 30 ms
HANDSHAKE_TIMEOUT = 10.0  # seconds a client has to finish the handshake
MAX_PENDING_RECTS = 32  # more dirty rectangles than this collapse into their bounding box
# The 3.8 failure reason, byte for byte as QEMU sends it (its C string's NUL included).
AUTH_FAILED = b"Authentication failed\0"
MAX_CLIENTS = 16  # viewers at once
MAX_CONNECTIONS = 32  # connections at once, those still in their handshake included


@dataclass(frozen=True)
class VncClientInfo:
    """What query-vnc tells about one connected viewer."""

    host: str
    service: str
    family: str
    websocket: bool = False


@dataclass
class _Pending:
    """One viewer's outstanding work, guarded by its session's condition."""

    request: UpdateRequest | None = None
    dirty: list[Rect] = field(default_factory=list)
    resized: bool = False
    ext_key_ack: bool = False  # the client asked for QEMU's extended key events: confirm them


class VncSession:
    """One viewer's connection: the handshake, its messages, and the updates it asked for."""

    def __init__(self, server: VncServer, sock: socket.socket, peer: tuple) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.info = VncClientInfo(str(peer[0]) if peer else "", str(peer[1]) if len(peer) > 1 else "",
                                  "ipv6" if sock.family == socket.AF_INET6 else
                                  "unix" if sock.family == socket.AF_UNIX else "ipv4")
        self.pixel_format = NATIVE_FORMAT
        self.encodings: tuple[int, ...] = ()
        self.encoder = Encoder()
        self.size = (0, 0)  # the screen size this viewer knows
        self.bytes_sent = 0
        self.shared = True
        self._cond = threading.Condition()
        self._pending = _Pending()
        self._closed = False
        self._pointer: tuple[int, int] | None = None
        self._pointer_buttons = 0
        self._keys_down: dict[int, str] = {}

    # ---- the session's life --------------------------------------------------
    def serve(self) -> None:
        """Runs the connection to its end; a protocol error or a dropped socket ends it cleanly."""
        writer: threading.Thread | None = None
        try:
            self.sock.settimeout(HANDSHAKE_TIMEOUT)
            deadline = time.monotonic() + HANDSHAKE_TIMEOUT
            if not self._handshake(deadline):
                return
            self.sock.settimeout(None)
            writer = threading.Thread(target=self._write_loop, name="vnc-writer", daemon=True)
            writer.start()
            self._read_loop()
        except (RfbError, OSError, EOFError, struct.error) as e:
            log.info("vnc: client %s disconnected: %s", self.info.host, e)
        finally:
            self.close()
            self._release_keys()
            if writer is not None and writer is not threading.current_thread():
                writer.join(timeout=5)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _recv_exact(self, n: int, deadline: float | None = None) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            if deadline is not None and time.monotonic() > deadline:
                raise RfbError("handshake took too long")
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("connection closed")
            buf += chunk
        return bytes(buf)

    def _handshake(self, deadline: float) -> bool:
        self.sock.sendall(b"RFB 003.008\n")
        version = parse_version(self._recv_exact(12, deadline))
        password_required = self.server.password_required
        sec = SEC_VNC_AUTH if password_required else SEC_NONE
        if version == (3, 3):
            self.sock.sendall(struct.pack("!I", sec))
        else:
            self.sock.sendall(bytes([1, sec]))
            chosen = self._recv_exact(1, deadline)[0]
            if chosen != sec:
                if version == (3, 8):
                    self._fail(AUTH_FAILED)
                raise RfbError(f"client chose security type {chosen}, not {sec}")
        if sec == SEC_VNC_AUTH:
            challenge = vnc_auth.new_challenge()
            self.sock.sendall(challenge)
            answer = self._recv_exact(vnc_auth.CHALLENGE_SIZE, deadline)
            if not vnc_auth.check(self.server.password, challenge, answer):
                if version == (3, 8):
                    self._fail(AUTH_FAILED)
                else:
                    self.sock.sendall(struct.pack("!I", 1))
                log.warning("vnc: client %s failed authentication", self.info.host)
                return False
            self.sock.sendall(struct.pack("!I", 0))
        elif version == (3, 8):
            self.sock.sendall(struct.pack("!I", 0))  # SecurityResult OK (3.3/3.7 send none for None)
        self.shared = bool(self._recv_exact(1, deadline)[0])
        frame = self.server.attach(self)
        self.size = (frame.width, frame.height)
        self.sock.sendall(server_init(frame.width, frame.height, self.pixel_format, self.server.name))
        return True

    def _fail(self, reason: bytes) -> None:
        raw = reason
        self.sock.sendall(struct.pack("!I", 1) + struct.pack("!I", len(raw)) + raw)

    # ---- what the client says ------------------------------------------------
    def _read_loop(self) -> None:
        parser = ClientMessageParser()
        while True:
            data = self.sock.recv(65536)
            if not data:
                return
            for msg in parser.feed(data):
                self._handle(msg)

    def _handle(self, msg: object) -> None:
        if isinstance(msg, UpdateRequest):
            with self._cond:
                self._pending.request = msg
                self._cond.notify_all()
        elif isinstance(msg, SetEncodings):
            with self._cond:
                self.encodings = msg.encodings
                self.encoder.choose(msg.encodings)
                if ENC_QEMU_EXTENDED_KEY in msg.encodings:
                    self._pending.ext_key_ack = True
                    self._cond.notify_all()
        elif isinstance(msg, SetPixelFormat):
            with self._cond:
                self.pixel_format = msg.pixel_format
        elif isinstance(msg, KeyEvent):
            self._key(msg.keysym, msg.down)
        elif isinstance(msg, ExtendedKeyEvent):
            self._key(msg.keysym, msg.down, QNUM_TO_QCODE.get(msg.keycode))
        elif isinstance(msg, PointerEvent):
            self._pointer_event(msg)
        elif isinstance(msg, ClientCutText):
            pass  # no guest clipboard to paste into

    def _key(self, keysym: int, down: bool, key: str | None = None) -> None:
        """A key by its keysym, or by the key itself (``key``, from an extended key event) when known."""
        sink = self.server.keyboard
        if down:
            qcode = key or keysym_to_qcode(keysym)
            if qcode is None:
                log.debug("vnc: keysym %#x has no key", keysym)
                return
            self._keys_down[keysym] = qcode
        else:
            qcode = self._keys_down.pop(keysym, None) or key or keysym_to_qcode(keysym)
            if qcode is None:
                return
        if sink is not None:
            sink.key_event(qcode, down)

    def _release_keys(self) -> None:
        """A viewer that goes away leaves no key held down in the guest."""
        sink = self.server.keyboard
        for qcode in self._keys_down.values():
            if sink is not None:
                sink.key_event(qcode, False)
        self._keys_down.clear()

    def _pointer_event(self, msg: PointerEvent) -> None:
        last = self._pointer or (msg.x, msg.y)
        self._pointer = (msg.x, msg.y)
        dx, dy = msg.x - last[0], msg.y - last[1]
        if (dx, dy) == (0, 0) and msg.buttons == self._pointer_buttons:
            return
        self._pointer_buttons = msg.buttons
        sink = self.server.pointer
        if sink is not None:
            sink.pointer_event(dx, dy, msg.buttons)

    # ---- what the refresh thread tells ---------------------------------------
    def mark(self, update: Update) -> None:
        with self._cond:
            pending = self._pending
            if update.resized:
                pending.resized = True
                pending.dirty = [Rect(0, 0, update.frame.width, update.frame.height)]
            else:
                pending.dirty.extend(update.dirty)
                if len(pending.dirty) > MAX_PENDING_RECTS:
                    pending.dirty = [bounding_box(pending.dirty)]
            if pending.request is not None and pending.dirty:
                self._cond.notify_all()

    # ---- what the server sends -------------------------------------------------
    def _ready(self) -> bool:
        p = self._pending
        return self._closed or p.ext_key_ack or (
            p.request is not None and (not p.request.incremental or bool(p.dirty) or p.resized))

    def _write_loop(self) -> None:
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(self._ready)
                    if self._closed:
                        return
                    ack, self._pending.ext_key_ack = self._pending.ext_key_ack, False
                    if not ack:
                        request, self._pending.request = self._pending.request, None
                        dirty, self._pending.dirty = self._pending.dirty, []
                        resized, self._pending.resized = self._pending.resized, False
                        pf = self.pixel_format
                if ack:  # confirms QEMU's extended key events at once, as QEMU does, request or not
                    self._send(update_header(1) + rect_header(Rect(0, 0, 0, 0), ENC_QEMU_EXTENDED_KEY))
                    continue
                assert request is not None
                frame = self.server.frame()
                data = self._update(frame, request, dirty, resized, pf)
                if data:
                    self._send(data)
                else:
                    with self._cond:  # nothing to send yet: keep waiting on the same request
                        if self._pending.request is None:
                            self._pending.request = request
        except (OSError, RfbError) as e:
            log.info("vnc: writing to %s failed: %s", self.info.host, e)
            self.close()

    def _send(self, data: bytes) -> None:
        """Writes to the viewer (never with the session's lock held: a stalled viewer stalls only itself)."""
        self.sock.sendall(data)
        self.bytes_sent += len(data)

    def _update(self, frame: Frame, request: UpdateRequest, dirty: list[Rect], resized: bool,
                pf: PixelFormat) -> bytes:
        parts: list[bytes] = []
        size = (frame.width, frame.height)
        if size != self.size:
            resized = True
        if resized and ENC_DESKTOP_SIZE in self.encodings and size != self.size:
            parts.append(rect_header(Rect(0, 0, frame.width, frame.height), ENC_DESKTOP_SIZE))
            self.size = size
            rects = [Rect(0, 0, frame.width, frame.height)]
        else:
            area = Rect(request.rect.x, request.rect.y, request.rect.w, request.rect.h)
            wanted = dirty if request.incremental else [area]
            if resized:
                wanted = [Rect(0, 0, frame.width, frame.height)]
            w, h = min(self.size[0], frame.width), min(self.size[1], frame.height)
            rects = []
            for r in wanted:
                c = clip(r, w, h)
                c = c and clip(Rect(c.x - area.x, c.y - area.y, c.w, c.h), area.w, area.h)
                if c is not None:
                    rects.append(Rect(c.x + area.x, c.y + area.y, c.w, c.h))
        if len(rects) > MAX_PENDING_RECTS:
            rects = [bounding_box(rects)]
        for r in rects:
            parts.append(self.encoder.encode(frame, r, pf))
        if not parts and request.incremental:
            return b""
        return update_header(len(parts)) + b"".join(parts)


class VncServer:
    """Listens for viewers on a TCP address and shows them one display."""

    def __init__(self, source: DisplaySource, host: str = "127.0.0.1", port: int = VNC_BASE_PORT,
                 keyboard: KeyboardSink | None = None, pointer: PointerSink | None = None,
                 password_required: bool = False, name: str = "kvmpy") -> None:
        self.source = source
        self.keyboard = keyboard
        self.pointer = pointer
        self.password_required = password_required
        self.password: str | None = None
        self.name = name
        self._lock = threading.Lock()  # guards the session list and the latest frame
        self._refresh_lock = threading.Lock()  # one caller of source.refresh at a time
        self._sessions: list[VncSession] = []
        self._connections = 0  # sockets with a session thread, handshaking or attached
        self._frame: Frame | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, addr = infos[0]
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind(addr)
            self._listener.listen(8)
        except OSError:
            self._listener.close()
            raise
        self.address: tuple = self._listener.getsockname()
        self._threads = [threading.Thread(target=self._accept_loop, name="vnc-accept", daemon=True),
                         threading.Thread(target=self._refresh_loop, name="vnc-refresh", daemon=True)]

    def start(self) -> VncServer:
        for t in self._threads:
            t.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() that close() alone would not
        except OSError:
            pass
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            sessions = list(self._sessions)
        for s in sessions:
            s.close()
        for t in self._threads:
            if t.is_alive() and t is not threading.current_thread():
                t.join(timeout=5)

    def set_password(self, password: str) -> None:
        self.password = password

    @property
    def clients(self) -> list[VncClientInfo]:
        with self._lock:
            return [s.info for s in self._sessions]

    # ---- frames --------------------------------------------------------------
    def frame(self) -> Frame:
        """The latest frame, refreshing once if nobody has yet."""
        with self._lock:
            frame = self._frame
        if frame is None:
            self._refresh()
            with self._lock:
                frame = self._frame
        assert frame is not None
        return frame

    def refresh_now(self) -> Frame:
        """Renders the screen now (what screendump shows) and sends the change to the viewers."""
        self._refresh()
        return self.frame()

    def _refresh(self) -> None:
        with self._refresh_lock:
            update = self.source.refresh()
            with self._lock:
                self._frame = update.frame
                sessions = list(self._sessions)
        for s in sessions:
            s.mark(update)

    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                watched = bool(self._sessions)
            if not watched:
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                self._refresh()
            except Exception:  # a display adapter bug must not kill the console for good
                log.exception("vnc: display refresh failed")
            self._stop.wait(REFRESH_INTERVAL)

    # ---- viewers -------------------------------------------------------------
    def attach(self, session: VncSession) -> Frame:
        """Adds a viewer that finished its handshake; an exclusive one (shared flag 0) disconnects
        the others, as QEMU's default share policy allow-exclusive does."""
        frame = self.frame()
        with self._lock:
            others = [] if session.shared else list(self._sessions)
            self._sessions.append(session)
        for o in others:
            o.close()
        self._wake.set()
        return frame

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, peer = self._listener.accept()
            except OSError:
                return
            with self._lock:
                busy = len(self._sessions) >= MAX_CLIENTS or self._connections >= MAX_CONNECTIONS
                if not busy:
                    self._connections += 1
            if busy:
                log.warning("vnc: refusing %s: too many viewers or connections", peer)
                sock.close()
                continue
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            session = VncSession(self, sock, peer)
            threading.Thread(target=self._run_session, args=(session,), name="vnc-client", daemon=True).start()

    def _run_session(self, session: VncSession) -> None:
        try:
            session.serve()
        finally:
            with self._lock:
                self._connections -= 1
                if session in self._sessions:
                    self._sessions.remove(session)
