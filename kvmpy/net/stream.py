"""-netdev stream and -netdev socket,listen=/connect=: Ethernet frames over a byte stream, as QEMU frames them.

The wire format is QEMU's (net/stream.c, net/socket.c): every frame is a
4-byte big-endian length followed by that many bytes. QEMU refuses a length
above its receive buffer, NET_BUFSIZE = 4096 + 65536 = 69632 bytes, by
dropping the connection; so does ``FrameDecoder``, which never buffers more
than one frame plus one read.

Syntax, QEMU 7.2's::

    -netdev stream,id=n0,server=on|off,addr.type=inet,addr.host=HOST,addr.port=PORT
    -netdev stream,id=n0,server=on|off,addr.type=unix,addr.path=PATH[,addr.abstract=on]
    -netdev socket,id=n0,listen=[HOST]:PORT  |  connect=HOST:PORT

Connections behave as in QEMU 7.2:

- A server listens at start-up (a bind error is a ConfigError) and serves one
  client at a time. While a client is connected, further clients wait in the
  listen backlog, unaccepted; when the client goes away the server takes the
  next one. A unix socket path is created at start and removed at close.
- A client connects from its own thread after start; if the connection fails
  or later ends, the link stays down (QEMU 7.2 has no reconnect). QEMU 8.0's
  ``reconnect=SECONDS`` is accepted as an extension: retry every SECONDS.
- A peer that sends a length above 69632 is disconnected with a warning in
  the log; the VM is not affected.

Threads: one reader thread per backend does accept/connect, reading, and
flushing what ``send`` could not write at once. ``send`` (the device's thread)
writes without blocking; what the socket does not take goes into a buffer of
at most ``TX_BUFFER_LIMIT`` bytes, and a frame that does not fit is dropped
and counted, as a full NIC queue would drop it.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import stat
import struct
import threading
from dataclasses import dataclass, field
from typing import Protocol

from kvmpy.errors import ConfigError
from kvmpy.net.backend import NetBackend, Receive
from kvmpy.net.options import NetdevOptions
from kvmpy.netaddr import check_host, check_port

log = logging.getLogger(__name__)

MAX_FRAME = 4096 + 65536  # QEMU's NET_BUFSIZE: a longer length field ends the connection
TX_BUFFER_LIMIT = 256 * 1024  # bytes of framed output held while the peer is slow
RECV_CHUNK = 65536
CONNECT_TIMEOUT_S = 30.0
UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the NUL
_LEN = struct.Struct(">I")

STREAM_KEYS = ("server", "addr.type", "addr.host", "addr.port", "addr.path", "addr.abstract",
               "addr.numeric", "addr.ipv4", "addr.ipv6", "reconnect")
SOCKET_KEYS = ("listen", "connect", "fd", "mcast", "udp", "localaddr")


class FramingError(ValueError):
    """The peer broke the framing (a length above the maximum)."""


def encode_frame(frame: bytes | memoryview) -> bytes:
    """One frame as it goes on the wire: its 4-byte big-endian length, then the frame."""
    return _LEN.pack(len(frame)) + bytes(frame)


class FrameDecoder:
    """Splits a byte stream into frames; holds at most one partial frame plus what was fed since.

    Zero-length frames are skipped (QEMU passes them to a NIC that ignores
    them). A length above ``max_frame`` raises FramingError.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0  # start of the unparsed bytes; the consumed prefix is dropped in feed()

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def feed(self, data: bytes | memoryview) -> None:
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    def next_frame(self) -> bytes | None:
        """The next complete frame, or None until more bytes arrive."""
        buf = self._buf
        while len(buf) - self._pos >= 4:
            (length,) = _LEN.unpack_from(buf, self._pos)
            if length > self.max_frame:
                raise FramingError(f"peer sent a {length}-byte frame (the limit is {self.max_frame})")
            start = self._pos + 4
            if len(buf) < start + length:
                return None
            self._pos = start + length
            if length:
                return bytes(buf[start:start + length])
        return None


@dataclass(frozen=True)
class StreamAddress:
    """Where a stream netdev listens or connects: inet (host, port) or a unix path."""

    family: str  # "inet" or "unix"
    host: str = ""
    port: int = 0
    path: str = ""
    abstract: bool = False
    ip_version: int = 0  # 4 or 6 to force one, 0 for either

    def uri(self) -> str:
        if self.family == "unix":
            return f"unix:{'@' if self.abstract else ''}{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"

    def unix_sockaddr(self) -> str:
        return "\0" + self.path if self.abstract else self.path

    def resolve(self, passive: bool) -> list[tuple]:
        """getaddrinfo results for an inet address (passive: for bind, empty host = any)."""
        family = {4: socket.AF_INET, 6: socket.AF_INET6}.get(self.ip_version, socket.AF_UNSPEC)
        flags = socket.AI_PASSIVE if passive else 0
        return socket.getaddrinfo(self.host or None, self.port, family, socket.SOCK_STREAM, 0, flags)


class Endpoint(Protocol):
    """How a StreamBackend gets its connections (one at a time)."""

    def next_connection(self, stop_fd: int) -> socket.socket | None:
        """Block until a connected socket or until ``stop_fd`` is readable (then None); None also
        means no further connection will come."""

    def ready_connection(self) -> socket.socket | None:
        """A connection that exists already (taken once, at start), or None."""

    def state(self) -> str:
        """What the endpoint is doing while no connection is up, for ``info``."""

    def close(self) -> None: ...


def _wait(fd: int, events: int, stop_fd: int, timeout_s: float | None) -> bool:
    """Wait for ``events`` on ``fd``; False when stop_fd fired or the timeout passed."""
    poller = select.poll()
    poller.register(fd, events)
    poller.register(stop_fd, select.POLLIN)
    ready = dict(poller.poll(None if timeout_s is None else int(timeout_s * 1000)))
    return stop_fd not in ready and fd in ready


class StreamServer:
    """Listens at start-up; hands out one accepted client at a time."""

    def __init__(self, address: StreamAddress) -> None:
        self.address = address
        self._unlink_path: str | None = None
        self._sock = self._listen(address)
        self._state = "listening"

    def _listen(self, address: StreamAddress) -> socket.socket:
        try:
            if address.family == "unix":
                return self._listen_unix(address)
            last: OSError | None = None
            for family, kind, proto, _, sockaddr in address.resolve(passive=True):
                sock = socket.socket(family, kind, proto)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind(sockaddr)
                    sock.listen(1)
                    return sock
                except OSError as exc:
                    sock.close()
                    last = exc
            raise last or OSError(errno.EADDRNOTAVAIL, "no usable address")
        except OSError as exc:
            raise ConfigError(f"cannot listen on {address.uri()}: {exc.strerror or exc}") from None

    def _listen_unix(self, address: StreamAddress) -> socket.socket:
        if not address.abstract:
            try:
                if stat.S_ISSOCK(os.lstat(address.path).st_mode):
                    os.unlink(address.path)  # a stale socket from an earlier run, as QEMU does
                else:
                    raise OSError(errno.EEXIST, "the path exists and is not a socket")
            except FileNotFoundError:
                pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(address.unix_sockaddr())
            sock.listen(1)
        except OSError:
            sock.close()
            raise
        if not address.abstract:
            self._unlink_path = address.path
        return sock

    @property
    def port(self) -> int:
        """The bound TCP port (useful with addr.port=0); 0 for a unix socket."""
        return self._sock.getsockname()[1] if self.address.family == "inet" else 0

    def next_connection(self, stop_fd: int) -> socket.socket | None:
        self._state = "listening"
        while True:
            if not _wait(self._sock.fileno(), select.POLLIN, stop_fd, None):
                return None
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            except OSError as exc:
                log.warning("netdev stream server %s: accept failed: %s", self.address.uri(), exc)
                return None
            return conn

    def ready_connection(self) -> socket.socket | None:
        return None

    def state(self) -> str:
        return self._state

    def close(self) -> None:
        self._sock.close()
        if self._unlink_path is not None:
            try:
                os.unlink(self._unlink_path)
            except OSError:
                pass
            self._unlink_path = None


class StreamClient:
    """Connects from the reader thread; with ``reconnect_s`` 0 (QEMU 7.2) only once."""

    def __init__(self, address: StreamAddress, reconnect_s: int = 0) -> None:
        self.address = address
        self.reconnect_s = reconnect_s
        self._attempted = False
        self._state = "connecting"

    def next_connection(self, stop_fd: int) -> socket.socket | None:
        while True:
            if self._attempted:
                if not self.reconnect_s:
                    if not self._state.startswith("error"):
                        self._state = "disconnected"
                    return None
                self._state = "connecting"
                poller = select.poll()
                poller.register(stop_fd, select.POLLIN)
                if poller.poll(self.reconnect_s * 1000):
                    return None
            self._attempted = True
            try:
                sock = self._connect(stop_fd)
            except OSError as exc:
                self._state = f"error: {exc.strerror or exc}"
                log.warning("netdev stream: connecting to %s failed: %s", self.address.uri(), exc.strerror or exc)
                continue
            if sock is None:
                return None
            return sock

    def ready_connection(self) -> socket.socket | None:
        return None

    def _connect(self, stop_fd: int) -> socket.socket | None:
        if self.address.family == "unix":
            targets = [(socket.AF_UNIX, socket.SOCK_STREAM, 0, "", self.address.unix_sockaddr())]
        else:
            targets = self.address.resolve(passive=False)
        last: OSError | None = None
        for family, kind, proto, _, sockaddr in targets:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                err = sock.connect_ex(sockaddr)
                if err in (errno.EINPROGRESS, errno.EAGAIN):
                    if not _wait(sock.fileno(), select.POLLOUT, stop_fd, CONNECT_TIMEOUT_S):
                        sock.close()
                        poller = select.poll()
                        poller.register(stop_fd, select.POLLIN)
                        if poller.poll(0):
                            return None
                        raise OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err))
                return sock
            except OSError as exc:
                sock.close()
                last = exc
        raise last or OSError(errno.EADDRNOTAVAIL, "no usable address")

    def state(self) -> str:
        return self._state

    def close(self) -> None:
        pass


class ConnectedSocket:
    """An already connected socket (e.g. one end of a socketpair given to passt): one connection, no more."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self._sock: socket.socket | None = sock
        self._name = name

    def next_connection(self, stop_fd: int) -> socket.socket | None:
        return self.ready_connection()

    def ready_connection(self) -> socket.socket | None:
        sock, self._sock = self._sock, None
        return sock

    def state(self) -> str:
        return f"{self._name} (disconnected)"

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@dataclass
class StreamStats:
    rx_frames: int = 0
    tx_frames: int = 0
    rx_dropped: int = 0
    tx_dropped: int = 0
    disconnects: dict[str, int] = field(default_factory=dict)


class StreamBackend(NetBackend):
    """A NetBackend moving frames over the connections an Endpoint yields (see the module docstring)."""

    def __init__(self, netdev_id: str, endpoint: Endpoint, kind: str = "stream") -> None:
        self.id = netdev_id
        self.kind = kind
        self.endpoint = endpoint
        self.stats = StreamStats()
        self._receive: Receive | None = None
        self._thread: threading.Thread | None = None
        self._stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._kick_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._tx_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._txbuf = bytearray()
        self._link_up = True
        self._peer = ""
        self._connected = threading.Event()
        self._closed = False

    # --- the NetBackend contract -------------------------------------------------------------
    def start(self, receive: Receive) -> None:
        if self._thread is not None:
            raise RuntimeError(f"netdev {self.id} already started")
        self._receive = receive
        first = self.endpoint.ready_connection()
        if first is not None:
            self._attach(first)  # usable by send() as soon as start() returns
        self._thread = threading.Thread(target=self._run, args=(first,), name=f"netdev-{self.id}", daemon=True)
        self._thread.start()

    def send(self, frame: bytes | memoryview) -> None:
        length = len(frame)
        if not self._link_up or length == 0 or length > MAX_FRAME:
            self.stats.tx_dropped += 1
            return
        header = _LEN.pack(length)
        with self._tx_lock:
            sock = self._sock
            if sock is None or len(self._txbuf) + 4 + length > TX_BUFFER_LIMIT:
                self.stats.tx_dropped += 1
                return
            self.stats.tx_frames += 1
            if self._txbuf:
                self._txbuf += header
                self._txbuf += frame
                return
            try:
                sent = sock.sendmsg([header, frame])
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                return  # the reader thread sees the broken connection and drops it
            if sent < 4 + length:
                whole = header + bytes(frame)
                self._txbuf += whole[sent:]
                self._kick()

    def rx_ready(self) -> None:
        self._kick()

    def set_link(self, up: bool) -> None:
        self._link_up = up
        self._kick()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        os.eventfd_write(self._stop_fd, 1)
        if self._thread is not None:
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                log.warning("netdev %s: reader thread did not stop", self.id)
                return  # leave the fds to the thread rather than closing them under it
        self.endpoint.close()
        os.close(self._stop_fd)
        os.close(self._kick_fd)

    def info(self) -> str:
        return f"{self.kind}: {self._peer if self._connected.is_set() else self.endpoint.state()}"

    # --- for callers and tests -----------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """True once a peer is connected (within ``timeout`` seconds)."""
        return self._connected.wait(timeout)

    # --- the reader thread ----------------------------------------------------------------------
    def _kick(self) -> None:
        try:
            os.eventfd_write(self._kick_fd, 1)
        except OSError:
            pass  # closed: nothing to wake

    def _attach(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as QEMU: frames are latency-bound
        self._peer = _describe_peer(sock)
        with self._tx_lock:
            self._sock = sock
            self._txbuf.clear()
        self._connected.set()
        log.info("netdev %s: connected to %s", self.id, self._peer)

    def _run(self, sock: socket.socket | None) -> None:
        while True:
            if sock is None:
                sock = self.endpoint.next_connection(self._stop_fd)
                if sock is None:
                    return
                self._attach(sock)
            try:
                reason = self._serve(sock)
            except Exception:  # never let a peer take the VMM down
                log.exception("netdev %s: unexpected error; dropping the connection", self.id)
                reason = "internal error"
            self._connected.clear()
            with self._tx_lock:
                self._sock = None
                self._txbuf.clear()
            self.stats.disconnects[reason] = self.stats.disconnects.get(reason, 0) + 1
            sock.close()
            sock = None
            if reason == "stopped":
                return
            log.info("netdev %s: connection to %s ended (%s)", self.id, self._peer, reason)

    def _serve(self, sock: socket.socket) -> str:
        """Move frames until the connection ends; returns why it ended."""
        decoder = FrameDecoder()
        held: bytes | None = None
        poller = select.poll()
        poller.register(self._stop_fd, select.POLLIN)
        poller.register(self._kick_fd, select.POLLIN)
        registered = 0
        fd = sock.fileno()
        receive = self._receive
        assert receive is not None
        while True:
            if held is None:
                try:
                    held = decoder.next_frame()
                except FramingError as exc:
                    log.warning("netdev %s: %s; disconnecting %s", self.id, exc, self._peer)
                    return "bad framing"
            if held is not None:
                if not self._link_up:
                    self.stats.rx_dropped += 1
                    held = None
                    continue
                if receive(held):
                    self.stats.rx_frames += 1
                    held = None
                    continue
            events = (select.POLLIN if held is None else 0) | (select.POLLOUT if self._txbuf else 0)
            if events != registered:
                if events:
                    poller.register(fd, events)  # re-registering modifies
                elif registered:
                    poller.unregister(fd)
                registered = events
            ready = dict(poller.poll())
            if self._stop_fd in ready:
                return "stopped"
            if self._kick_fd in ready:
                try:
                    os.eventfd_read(self._kick_fd)
                except BlockingIOError:
                    pass
            revents = ready.get(fd, 0)
            if revents & select.POLLOUT:
                if not self._flush(sock):
                    return "write error"
            if revents & (select.POLLIN | select.POLLHUP | select.POLLERR) and held is None:
                try:
                    data = sock.recv(RECV_CHUNK)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    return f"read error: {exc.strerror or exc}"
                if not data:
                    return "peer closed"
                decoder.feed(data)
            elif revents & (select.POLLHUP | select.POLLERR) and not revents & select.POLLOUT:
                if self._txbuf:
                    return "peer closed"

    def _flush(self, sock: socket.socket) -> bool:
        with self._tx_lock:
            if not self._txbuf:
                return True
            try:
                sent = sock.send(self._txbuf)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            del self._txbuf[:sent]
            return True


def _describe_peer(sock: socket.socket) -> str:
    try:
        if sock.family == socket.AF_UNIX:
            name = sock.getsockname() or sock.getpeername()
            if isinstance(name, bytes):
                name = "@" + name[1:].decode("utf-8", "replace")
            return f"unix:{name}" if name else "unix:(socketpair)"
        host, port = sock.getpeername()[:2]
        return f"tcp:[{host}]:{port}" if ":" in host else f"tcp:{host}:{port}"
    except OSError:
        return "(unknown peer)"


# --- from -netdev options -------------------------------------------------------------------------
def _inet_address(opts: NetdevOptions, host: str, port: str, ip_version: int = 0) -> StreamAddress:
    try:
        return StreamAddress("inet", host=check_host(host), port=check_port(port), ip_version=ip_version)
    except ValueError as exc:
        raise opts.error(str(exc)) from None


def _unix_address(opts: NetdevOptions, path: str, abstract: bool) -> StreamAddress:
    if not path or "\0" in path:
        raise opts.error("Parameter 'addr.path' is missing or invalid")
    if len(os.fsencode(path)) > UNIX_PATH_MAX - (1 if abstract else 0):
        raise opts.error(f"UNIX socket path '{path[:64]}...' is too long (at most {UNIX_PATH_MAX} bytes)")
    return StreamAddress("unix", path=path, abstract=abstract)


def stream_from_options(opts: NetdevOptions) -> StreamBackend:
    """``-netdev stream,...`` (QEMU 7.2's keys, plus QEMU 8.0's ``reconnect=SECONDS`` for a client)."""
    server = opts.get_bool("server", False)
    kind = opts.get("addr.type")
    if kind is None:
        raise opts.error("Parameter 'addr' is missing")
    if kind == "inet":
        ipv4 = opts.get_bool("addr.ipv4", False)
        ipv6 = opts.get_bool("addr.ipv6", False)
        version = 4 if ipv4 and not ipv6 else 6 if ipv6 and not ipv4 else 0
        host = opts.get("addr.host", "")
        if not server and not host:
            raise opts.error("Parameter 'addr.host' is missing")
        address = _inet_address(opts, host or "", opts.require("addr.port"), version)
    elif kind == "unix":
        address = _unix_address(opts, opts.get("addr.path", "") or "", opts.get_bool("addr.abstract", False))
    elif kind in ("fd", "vsock"):
        raise opts.error(f"addr.type={kind} is not supported (use inet or unix)")
    else:
        raise opts.error(f"Parameter 'addr.type' does not accept value {kind[:32]!r}")
    for key in _foreign_keys(kind, STREAM_KEYS):
        if opts.has(key):
            raise opts.error(f"Parameter '{key}' is unexpected with addr.type={kind}")
    if server:
        if opts.has("reconnect"):
            raise opts.error("'reconnect' is incompatible with server=on")
        return StreamBackend(opts.id, StreamServer(address))
    return StreamBackend(opts.id, StreamClient(address, opts.get_uint("reconnect", 0, 3600)))


def _foreign_keys(kind: str, keys: tuple[str, ...]) -> list[str]:
    """The ``addr.*`` keys that do not belong to address type ``kind``."""
    inet_only = {"addr.host", "addr.port", "addr.numeric", "addr.ipv4", "addr.ipv6"}
    unix_only = {"addr.path", "addr.abstract"}
    wrong = unix_only if kind == "inet" else inet_only
    return [k for k in keys if k in wrong]


def _split_host_port(opts: NetdevOptions, key: str, text: str) -> tuple[str, str]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise opts.error(f"{key}={text[:64]}: expected [HOST]:PORT")
        return host, rest[1:]
    host, sep, port = text.rpartition(":")
    if not sep:
        raise opts.error(f"{key}={text[:64]}: expected HOST:PORT")
    return host, port


def socket_from_options(opts: NetdevOptions) -> StreamBackend:
    """``-netdev socket,listen=[HOST]:PORT`` or ``connect=HOST:PORT`` (the older syntax, same framing)."""
    for key in ("fd", "mcast", "udp", "localaddr"):
        if opts.has(key):
            raise opts.error(f"'{key}=' is not supported (only listen= and connect=; or use -netdev stream)")
    listen, connect = opts.get("listen"), opts.get("connect")
    if (listen is None) == (connect is None):
        raise opts.error("exactly one of listen= and connect= is required")
    if listen is not None:
        host, port = _split_host_port(opts, "listen", listen)
        return StreamBackend(opts.id, StreamServer(_inet_address(opts, host, port)), kind="socket")
    host, port = _split_host_port(opts, "connect", connect or "")
    if not host:
        raise opts.error("connect= needs a host")
    return StreamBackend(opts.id, StreamClient(_inet_address(opts, host, port)), kind="socket")
