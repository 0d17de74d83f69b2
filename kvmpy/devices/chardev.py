"""Character backends (QEMU's -chardev): stdio (with Ctrl-A escapes on a terminal), file, null, socket, pty.

Serial ports and virtio consoles write through them. ``open_backend`` takes the
``-serial`` text (``stdio``, ``file:PATH``, ``null``, ``chardev:ID``); ``open_chardev``
takes a ``-chardev`` spec. ``socket`` is a unix (``path``) or tcp (``host``/``port``)
stream, as a client or a server (``server=on``) that serves one peer at a time and
waits for the first one before the guest starts unless ``wait=off``; with no peer,
output is dropped, as QEMU drops it. ``pty`` creates a pseudo-terminal (logged as
QEMU prints it: "char device redirected to /dev/pts/N (label ID)"), with ``path=``
as a symlink to it; output that nobody reads is dropped once the pty is full.

A backend owns the host side of a serial line: it writes what the guest
transmits and feeds what the user types into a ``receive`` callable. On a
terminal, stdin is switched to raw mode and restored on every exit path;
Ctrl-A x quits, Ctrl-A h prints help and Ctrl-A Ctrl-A sends a literal Ctrl-A,
as under ``qemu -nographic``.

Output never fails towards the guest: ``write()`` is called on a vCPU thread, and
a host-side error (a full disk, ``file:/dev/full``, a closed pipe, a terminal that
stays blocked) drops that output and is logged once per backend; the guest runs
on, as under QEMU. Backends implement ``put()`` and may raise OSError there.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import stat
import termios
import threading
import time
import tty
from pathlib import Path
from typing import Callable

from kvmpy.config_devices import ChardevSpec

log = logging.getLogger(__name__)

CTRL_A = 0x01
ESCAPE_HELP = (b"\r\nC-a h    print this help\r\nC-a x    exit kvmpy\r\n"
               b"C-a C-a  sends C-a\r\n")


OUTPUT_STALL = 1.0  # seconds a blocked output may hold up the vCPU before the bytes are dropped


def write_all(fd: int, data: bytes, stall: float = OUTPUT_STALL) -> None:
    """Write all of ``data`` to ``fd``, waiting at most ``stall`` seconds in all for a non-blocking fd.

    Raises OSError (BlockingIOError when the reader did not drain in time); callers drop the rest.
    """
    view = memoryview(data)
    deadline = None
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            now = time.monotonic()
            deadline = now + stall if deadline is None else deadline
            if now >= deadline:
                raise
            select.select([], [fd], [], deadline - now)
            continue
        view = view[n:]


class CharBackend:
    """Base: output is discarded, no input. Subclasses implement ``put()``; ``write()`` never raises."""

    what = "character device"
    output_failed = False  # set on the instance at the first dropped output (logged once)
    output_stall = OUTPUT_STALL

    def write(self, data: bytes) -> None:
        """Send guest output to the host side; a host error drops it (logged once), never reaches the vCPU."""
        try:
            self.put(data)
        except (OSError, ValueError) as exc:  # ValueError: a file object closed under us
            if not self.output_failed:
                self.output_failed = True
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                # A reader that went away (kvmpy ... | head) is ordinary; anything else is worth a warning.
                level = logging.DEBUG if isinstance(exc, BrokenPipeError) else logging.WARNING
                log.log(level, "%s: output failed (%s); guest output is dropped, the guest runs on",
                        self.what, reason)

    def put(self, data: bytes) -> None:
        pass

    def start(self, receive: Callable[[bytes], int], on_quit: Callable[[], None]) -> None:
        pass

    def close(self) -> None:
        pass


class NullBackend(CharBackend):
    pass


class FileBackend(CharBackend):
    def __init__(self, path: Path, append: bool = False) -> None:
        self.what = f"serial output file {path}"
        mode = os.O_APPEND if append else os.O_TRUNC
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | mode | os.O_CLOEXEC, 0o644)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ValueError(f"cannot open serial output file {path}: {reason}") from None

    def put(self, data: bytes) -> None:
        if self._fd >= 0:
            write_all(self._fd, data, self.output_stall)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class StdioBackend(CharBackend):
    def __init__(self, stdin_fd: int = 0, stdout_fd: int = 1, escapes: bool = True) -> None:
        self.in_fd = stdin_fd
        self.out_fd = stdout_fd
        self.escapes = escapes
        self._saved_tty: list | None = None
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    what = "serial output to stdout"

    def put(self, data: bytes) -> None:
        write_all(self.out_fd, data, self.output_stall)

    def start(self, receive: Callable[[bytes], int], on_quit: Callable[[], None]) -> None:
        try:
            is_tty = os.isatty(self.in_fd)
        except OSError:
            return
        if is_tty:
            self._saved_tty = termios.tcgetattr(self.in_fd)
            tty.setraw(self.in_fd)
        self._thread = threading.Thread(target=self._reader, args=(receive, on_quit, is_tty),
                                        name="stdin", daemon=True)
        self._thread.start()

    def _reader(self, receive: Callable[[bytes], int], on_quit: Callable[[], None], is_tty: bool) -> None:
        escape = False
        while True:
            try:
                ready, _, _ = select.select([self.in_fd, self._stop_r], [], [])
            except (OSError, ValueError):
                return
            if self._stop_r in ready:
                return
            try:
                data = os.read(self.in_fd, 4096)
            except OSError:
                return
            if not data:
                return  # EOF: the guest just gets no more input
            if not (is_tty and self.escapes):
                receive(data)
                continue
            out = bytearray()
            for b in data:
                if escape:
                    escape = False
                    if b == ord("x"):
                        if out:
                            receive(bytes(out))
                        self.write(b"kvmpy: terminating on C-a x\r\n")
                        on_quit()
                        return
                    if b == ord("h"):
                        self.write(ESCAPE_HELP)
                    elif b == CTRL_A:
                        out.append(CTRL_A)
                    continue
                if b == CTRL_A:
                    escape = True
                else:
                    out.append(b)
            if out:
                receive(bytes(out))

    def close(self) -> None:
        with self._lock:
            try:
                os.write(self._stop_w, b"x")
            except OSError:
                pass
            if self._saved_tty is not None:
                try:
                    termios.tcsetattr(self.in_fd, termios.TCSADRAIN, self._saved_tty)
                except termios.error:
                    pass
                self._saved_tty = None


def open_backend(spec: str, chardevs: tuple[ChardevSpec, ...] = ()) -> CharBackend:
    """``stdio``, ``file:PATH``, ``none``/``null``, or ``chardev:ID`` (one of ``chardevs``)."""
    if spec == "stdio":
        return StdioBackend()
    if spec in ("none", "null"):
        return NullBackend()
    if spec.startswith("file:"):
        return FileBackend(Path(spec[5:]))
    if spec.startswith("chardev:"):
        for c in chardevs:
            if c.id == spec[len("chardev:"):]:
                return open_chardev(c)
        raise ValueError(f"-serial {spec}: no -chardev with that id")
    raise ValueError(f"unsupported serial backend {spec!r} (use stdio, file:PATH, null, none or chardev:ID)")


def open_chardev(spec: ChardevSpec) -> CharBackend:
    """The backend of one ``-chardev``; ValueError (one line) when it cannot be opened or connected."""
    if spec.backend == "null":
        return NullBackend()
    if spec.backend == "stdio":
        return StdioBackend()
    if spec.backend == "file":
        assert spec.path is not None
        return FileBackend(Path(spec.path), append=spec.get_bool("append", False))
    if spec.backend == "pty":
        return PtyBackend(spec.id, spec.path)
    if spec.backend == "socket":
        return SocketBackend(spec)
    raise ValueError(f"-chardev {spec.backend}: unsupported backend")


class _StreamBackend(CharBackend):
    """A backend over one non-blocking stream fd at a time: output dropped when there is none or it is full;
    a reader thread feeds input to ``receive`` until the fd ends (``_ended``) or ``close()``."""

    output_stall = 0.0  # a peer that does not read loses output; the vCPU never waits for it

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop_r, self._stop_w = os.pipe()
        self._closed = False
        self._thread: threading.Thread | None = None

    def _fd(self) -> int | None:
        raise NotImplementedError

    def put(self, data: bytes) -> None:
        with self._lock:
            fd = self._fd()
            if fd is None:
                return  # nobody to talk to: dropped, as QEMU drops it
            try:
                write_all(fd, data, self.output_stall)
            except BlockingIOError:
                pass  # the reader is not draining: this output is dropped, the guest runs on
            except OSError:
                self._ended(fd)

    def _ended(self, fd: int) -> None:
        """The stream behind ``fd`` ended (EOF, reset); called with the lock held."""

    def _read_loop(self, receive: Callable[[bytes], int]) -> None:
        while not self._closed:
            fd = self._wait_for_stream()
            if fd is None:
                return
            try:
                ready, _, _ = select.select([fd, self._stop_r], [], [])
                data = os.read(fd, 4096) if self._stop_r not in ready else None
            except BlockingIOError:
                continue
            except (OSError, ValueError):
                data = b""
            if data is None:
                return
            if data:
                receive(data)
                continue
            with self._lock:
                self._ended(fd)
            time.sleep(0.05)  # a pty has no EOF: its far side may come back; do not spin meanwhile

    def _wait_for_stream(self) -> int | None:
        """The fd to read next (a server waits for a peer here); None: stop reading."""
        with self._lock:
            return self._fd()

    def start(self, receive: Callable[[bytes], int], on_quit: Callable[[], None]) -> None:
        self._thread = threading.Thread(target=self._read_loop, args=(receive,), name=f"chardev-{self.what}",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._closed:
            return  # closed already (the machine and its owner may both close it)
        self._closed = True
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self._lock:
            self._close_streams()
        os.close(self._stop_r)
        os.close(self._stop_w)

    def _close_streams(self) -> None:
        raise NotImplementedError


class SocketBackend(_StreamBackend):
    """-chardev socket: unix ``path`` or tcp ``host``:``port``; a client, or a server for one peer at a time."""

    def __init__(self, spec: ChardevSpec) -> None:
        super().__init__()
        self.what = spec.id
        self.server, self.wait = spec.server, spec.server and spec.wait
        self._peer: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._unlink: str | None = None
        self._connected = threading.Condition(self._lock)
        if spec.path is not None:
            family, address = socket.AF_UNIX, spec.path
            self.location = f"unix:{spec.path}"
        else:
            family, address = self._resolve(spec)
            self.location = f"tcp:{spec.host or '0.0.0.0'}:{spec.port}"
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            if self.server:
                if family == socket.AF_UNIX:
                    self._remove_stale_socket(address)
                else:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
                sock.listen(1)
                self._listener = sock
                self._unlink = address if family == socket.AF_UNIX else None
            else:
                sock.connect(address)
                sock.setblocking(False)
                self._peer = sock
        except OSError as exc:
            sock.close()
            verb = "bind" if self.server else "connect to"
            raise ValueError(f"-chardev socket,id={spec.id}: Failed to {verb} {self.location!r}: "
                             f"{exc.strerror or exc}") from None

    @staticmethod
    def _resolve(spec: ChardevSpec) -> tuple[int, tuple]:
        try:
            infos = socket.getaddrinfo(spec.host or None, spec.port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE if spec.server else 0)
        except (socket.gaierror, UnicodeError) as exc:
            raise ValueError(f"-chardev socket,id={spec.id}: address resolution failed for "
                             f"{spec.host!r}:{spec.port}: {exc}") from None
        family, _, _, _, address = infos[0]
        return family, address

    @staticmethod
    def _remove_stale_socket(path: str) -> None:
        """QEMU unlinks a socket left at the path; anything else there is not ours to remove."""
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass

    @property
    def address(self) -> object:
        """Where the server listens (a tcp port=0 gets its port here) or the client is connected."""
        sock = self._listener or self._peer
        return None if sock is None else sock.getsockname()

    @property
    def connected(self) -> bool:
        """A peer is connected (output reaches it)."""
        return self._peer is not None

    def _fd(self) -> int | None:
        return None if self._peer is None else self._peer.fileno()

    def _ended(self, fd: int) -> None:
        peer = self._peer
        if peer is not None and peer.fileno() == fd:
            self._peer = None
            peer.close()

    def _wait_for_stream(self) -> int | None:
        """The peer's fd; a server accepts the next peer first. None: no more (a client's peer ended, or closed)."""
        with self._lock:
            if self._peer is not None or self._listener is None:
                return None if self._peer is None else self._peer.fileno()
            listener = self._listener
        while True:
            try:
                ready, _, _ = select.select([listener, self._stop_r], [], [])
                if self._stop_r in ready:
                    return None
                peer, _ = listener.accept()
                break
            except (OSError, ValueError):
                if self._closed:
                    return None
                time.sleep(0.05)  # EMFILE and the like: try again, the guest runs on
        peer.setblocking(False)
        with self._lock:
            self._peer = peer
            self._connected.notify_all()
        log.info("chardev %s: connected to %s", self.what, self.location)
        return peer.fileno()

    def start(self, receive: Callable[[bytes], int], on_quit: Callable[[], None]) -> None:
        super().start(receive, on_quit)
        if self.wait and self._peer is None:
            log.warning("-chardev socket,id=%s: waiting for connection on: disconnected:%s,server=on",
                        self.what, self.location)
            with self._lock:
                while self._peer is None and not self._closed:
                    self._connected.wait(0.2)

    def _close_streams(self) -> None:
        for sock in (self._peer, self._listener):
            if sock is not None:
                sock.close()
        self._peer = self._listener = None
        if self._unlink is not None:
            try:
                os.unlink(self._unlink)
            except OSError:
                pass


class PtyBackend(_StreamBackend):
    """-chardev pty: a new pseudo-terminal in raw mode; ``path`` (optional) becomes a symlink to it."""

    def __init__(self, label: str, link: str | None = None) -> None:
        super().__init__()
        self.what = label
        self._master, self._slave = os.openpty()  # the slave stays open: no EIO while nobody is attached
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        os.set_inheritable(self._master, False)
        os.set_inheritable(self._slave, False)
        self.name = os.ttyname(self._slave)
        self._link = link
        if link is not None:
            try:
                os.symlink(self.name, link)
            except OSError as exc:
                self._close_streams()
                raise ValueError(f"-chardev pty,id={label}: cannot link {link!r} to {self.name}: "
                                 f"{exc.strerror or exc}") from None
        log.warning("char device redirected to %s (label %s)", self.name, label)

    def _fd(self) -> int | None:
        return self._master if self._master >= 0 else None

    def _close_streams(self) -> None:
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1
        if self._link is not None:
            try:
                if os.path.islink(self._link):
                    os.unlink(self._link)
            except OSError:
                pass


class BufferBackend(CharBackend):
    """Keeps the guest's output in memory and lets a script type into it: for tests and automation.

    ``expect(text, then=bytes)`` queues input that is sent once ``text`` has
    appeared in the output; ``wait_for(text, timeout)`` blocks until it has.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._out = bytearray()
        self._receive: Callable[[bytes], int] | None = None
        self._expects: list[tuple[bytes, bytes]] = []

    @property
    def output(self) -> bytes:
        with self._cond:
            return bytes(self._out)

    what = "serial output buffer"

    def put(self, data: bytes) -> None:
        with self._cond:
            self._out += data
            self._cond.notify_all()
            due = [e for e in self._expects if e[0] in self._out]
            self._expects = [e for e in self._expects if e not in due]
            receive = self._receive
        for _, reply in due:
            if receive is not None:
                receive(reply)

    def start(self, receive: Callable[[bytes], int], on_quit: Callable[[], None]) -> None:
        with self._cond:
            self._receive = receive

    def send(self, data: bytes) -> None:
        with self._cond:
            receive = self._receive
        if receive is None:
            raise RuntimeError("the machine has not started yet")
        receive(data)

    def expect(self, text: bytes, then: bytes) -> None:
        with self._cond:
            if text in self._out and self._receive is not None:
                self._receive(then)
            else:
                self._expects.append((text, then))

    def wait_for(self, text: bytes, timeout: float) -> bool:
        end = time.monotonic() + timeout
        with self._cond:
            while text not in self._out:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True
