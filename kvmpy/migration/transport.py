"""Migration URIs, as QEMU spells them, and the channels they open.

``tcp:HOST:PORT`` and ``unix:PATH`` are two-way (the destination confirms the
switchover); ``exec:CMD`` pipes the stream through ``/bin/sh -c CMD``;
``file:PATH`` writes or reads a snapshot file. For listening, ``tcp:0:PORT``
or ``tcp::PORT`` means every IPv4 interface and port 0 picks a free port.

Every URI is hostile input (it comes from the command line and from QMP):
``parse_uri`` checks the host and port with ``kvmpy.netaddr`` (an IPv4/IPv6
literal or an ASCII DNS name, labels of 1-63 and at most 253 characters; a
decimal port 0-65535), that paths and commands encode to bytes without NUL,
and that URIs stay bounded, so the socket calls never see a name they cannot
encode; bind, connect, open and accept also turn any encoding error into a
MigrationError. Any failure is one line.

Listening on every interface (``tcp::PORT``, ``tcp:0:PORT``, ``tcp:0.0.0.0:PORT``)
is what QEMU does, and it means that anyone who can reach the port can feed
this VM a stream: the stream reader and ``vmstate.apply`` validate everything
before applying anything (see ``kvmpy.migration.stream``). Name an address
such as ``tcp:127.0.0.1:PORT``, or use ``unix:PATH``, when the network is not
trusted.

A snapshot written to ``file:PATH`` holds all of guest RAM and the CPU state,
so it is created mode 0600 whatever the umask (as the QMP socket is), and an
existing regular file being overwritten is narrowed to 0600 too.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from kvmpy.migration.errors import MigrationError
from kvmpy.netaddr import check_host, check_port

SCHEMES = ("tcp", "unix", "exec", "file")
MAX_URI = 64 << 10  # characters: far beyond any path or command line, short of a memory bomb
UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL
SNAPSHOT_MODE = 0o600
# What the socket calls may raise besides OSError for a name or path they cannot use.
SOCKET_ERRORS = (OSError, UnicodeError, ValueError, TypeError, OverflowError)


@dataclass(frozen=True)
class Uri:
    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""  # unix/file path, or the exec command

    def __str__(self) -> str:
        if self.scheme == "tcp":
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"tcp:{host}:{self.port}"
        return f"{self.scheme}:{self.path}"


def _show(text: str) -> str:
    """A URI for an error message: one line (repr escapes newlines), and not a screenful."""
    shown = repr(text)
    return shown if len(shown) <= 80 else shown[:60] + "..." + shown[-16:]


def _label(uri: Uri) -> str:
    """A checked URI as it appears in messages: as typed, unless that would not be one short line."""
    text = str(uri)
    return text if text.isprintable() and len(text) <= 80 else _show(text)


def _check_path(path: str, what: str, text: str) -> None:
    try:
        raw = os.fsencode(path)
    except (UnicodeError, ValueError):
        raise MigrationError(f"the {what} in migration URI {_show(text)} cannot be encoded") from None
    if b"\0" in raw:
        raise MigrationError(f"the {what} in migration URI {_show(text)} contains a NUL byte")


def parse_uri(text: str) -> Uri:
    """A checked Uri; MigrationError (one line) names what is wrong."""
    if not isinstance(text, str) or ":" not in text:
        shown = _show(text) if isinstance(text, str) else f"of type {type(text).__name__}"
        raise MigrationError(f"invalid migration URI {shown} (tcp:HOST:PORT, unix:PATH, exec:CMD or file:PATH)")
    if len(text) > MAX_URI:
        raise MigrationError(f"migration URI {_show(text)} is longer than {MAX_URI} characters")
    scheme, _, rest = text.partition(":")
    if scheme not in SCHEMES:
        raise MigrationError(f"unknown migration protocol {_show(scheme)} (tcp, unix, exec or file)")
    if scheme == "tcp":
        if rest.startswith("["):
            host, sep, port = rest[1:].partition("]:")
            if sep and ":" not in host:
                raise MigrationError(f"invalid IPv6 address in migration URI {_show(text)}")
        else:
            host, sep, port = rest.rpartition(":")
        if not sep:
            raise MigrationError(f"invalid tcp migration address {_show(text)} (tcp:HOST:PORT)")
        try:  # a host the socket module cannot encode (TypeError at connect/bind) is refused here
            return Uri("tcp", host=check_host(host), port=check_port(port))
        except ValueError as exc:
            raise MigrationError(f"invalid tcp migration address {_show(text)}: {exc}") from None
    what = "command" if scheme == "exec" else "path"
    if not rest:
        raise MigrationError(f"migration URI {_show(text)} needs a {what}")
    _check_path(rest, what, text)
    if scheme == "unix" and len(os.fsencode(rest)) > UNIX_PATH_MAX:
        raise MigrationError(f"the socket path in migration URI {_show(text)} is longer than "
                             f"{UNIX_PATH_MAX} bytes")
    return Uri(scheme, path=rest)


def create_snapshot_file(path: str) -> BinaryIO:
    """Open ``path`` to write a snapshot: created 0600 whatever the umask; an existing regular file
    is truncated and narrowed to 0600 (a FIFO or device is written as it is)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, SNAPSHOT_MODE)
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) & ~SNAPSHOT_MODE:
            os.fchmod(fd, SNAPSHOT_MODE)
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


class SocketChannel:
    duplex = True

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def write(self, data: Any) -> None:
        self.sock.sendall(data)

    def readinto(self, buf: memoryview) -> int:
        return self.sock.recv_into(buf)

    def set_timeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)

    def abort(self) -> None:
        """Unblock any thread stuck in a send or receive (cancel)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def finish(self) -> None:
        pass

    def close(self) -> None:
        self.sock.close()


class FileChannel:
    """A one-way channel over a file or a pipe; ``proc`` is the exec: child, waited for on finish."""

    duplex = False

    def __init__(self, f: BinaryIO, proc: subprocess.Popen | None = None, what: str = "") -> None:
        self.f = f
        self.proc = proc
        self.what = what

    def write(self, data: Any) -> None:
        self.f.write(data)

    def readinto(self, buf: memoryview) -> int:
        return self.f.readinto(buf) or 0

    def set_timeout(self, seconds: float | None) -> None:
        pass

    def abort(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def finish(self) -> None:
        """Flush everything to its destination; raises if it did not get there."""
        try:
            self.f.flush()
            if self.proc is None:
                os.fsync(self.f.fileno())
            self.f.close()
        except OSError as exc:
            raise MigrationError(f"writing {self.what} failed: {exc.strerror or exc}") from None
        if self.proc is not None:
            status = self.proc.wait()
            if status != 0:
                raise MigrationError(f"{self.what} exited with status {status}")

    def close(self) -> None:
        try:
            self.f.close()
        except OSError:
            pass
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()


def _sockaddr(uri: Uri, listening: bool) -> tuple[int, Any]:
    if uri.scheme == "unix":
        return socket.AF_UNIX, uri.path
    host = uri.host
    if listening and host in ("", "0"):
        host = "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return family, (host or "127.0.0.1", uri.port)


def connect(uri: Uri, timeout: float = 10.0) -> SocketChannel | FileChannel:
    """Open the outgoing side; any failure is a one-line MigrationError."""
    if uri.scheme == "tcp" and uri.port == 0:
        raise MigrationError(f"cannot connect to {uri}: port 0 is only for listening")
    try:
        if uri.scheme in ("tcp", "unix"):
            family, addr = _sockaddr(uri, False)
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(addr)
            except OSError:
                sock.close()
                raise
            sock.settimeout(None)
            return SocketChannel(sock)
        if uri.scheme == "file":
            return FileChannel(create_snapshot_file(uri.path), what=f"file {uri.path}")
        proc = subprocess.Popen(["/bin/sh", "-c", uri.path], stdin=subprocess.PIPE)
        assert proc.stdin is not None
        return FileChannel(proc.stdin, proc, what=f"exec command {uri.path!r}")  # type: ignore[arg-type]
    except SOCKET_ERRORS as exc:
        raise MigrationError(f"cannot open {_label(uri)}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    """An exception as a short one-line reason."""
    text = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
    return " ".join(text.split())[:200]


class Listener:
    """The destination's waiting side; ``accept()`` gives the channel (for file/exec, at once)."""

    def __init__(self, uri: Uri) -> None:
        self.uri = uri
        self.sock: socket.socket | None = None
        self._close_lock = threading.Lock()
        if uri.scheme in ("tcp", "unix"):
            family, addr = _sockaddr(uri, True)
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                if family != socket.AF_UNIX:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(addr)
                sock.listen(1)
            except SOCKET_ERRORS as exc:
                sock.close()
                raise MigrationError(f"cannot listen on {_label(uri)}: {_reason(exc)}") from None
            self.sock = sock
        elif uri.scheme == "file":
            try:
                found = Path(uri.path).is_file()
            except SOCKET_ERRORS as exc:
                raise MigrationError(f"cannot restore from {_label(uri)}: {_reason(exc)}") from None
            if not found:
                raise MigrationError(f"cannot restore from {_label(uri)}: no such file")

    @property
    def address(self) -> Any:
        return self.sock.getsockname() if self.sock is not None else None

    def accept(self) -> SocketChannel | FileChannel:
        try:
            sock = self.sock
            if sock is not None:
                conn, _ = sock.accept()
                self.close()  # one migration per listener, as in QEMU
                return SocketChannel(conn)
            if self.uri.scheme == "file":
                return FileChannel(open(self.uri.path, "rb"), what=f"file {self.uri.path}")
            proc = subprocess.Popen(["/bin/sh", "-c", self.uri.path], stdout=subprocess.PIPE)
            assert proc.stdout is not None
            return FileChannel(proc.stdout, proc, what=f"exec command {self.uri.path!r}")  # type: ignore[arg-type]
        except SOCKET_ERRORS as exc:
            raise MigrationError(f"incoming migration on {_label(self.uri)} failed: {_reason(exc)}") from None

    def close(self) -> None:
        # The accepting thread and the owner may both close: only the one that takes the socket does.
        with self._close_lock:
            sock, self.sock = self.sock, None
        if sock is None:
            return
        try:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept()
            except OSError:
                pass
            sock.close()
        finally:
            if self.uri.scheme == "unix":
                try:
                    os.unlink(self.uri.path)
                except OSError:
                    pass
