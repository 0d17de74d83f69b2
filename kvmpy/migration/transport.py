"""Migration URIs, as QEMU spells them, and the channels they open.

``tcp:HOST:PORT`` and ``unix:PATH`` are two-way (the destination confirms the
switchover); ``exec:CMD`` pipes the stream through ``/bin/sh -c CMD``;
``file:PATH`` writes or reads a snapshot file. For listening, ``tcp:0:PORT``
or ``tcp::PORT`` means every IPv4 interface and port 0 picks a free port.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from kvmpy.migration.errors import MigrationError
from kvmpy.netaddr import check_host, check_port

SCHEMES = ("tcp", "unix", "exec", "file")


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


def parse_uri(text: str) -> Uri:
    if not isinstance(text, str) or ":" not in text:
        raise MigrationError(f"invalid migration URI {text!r} (tcp:HOST:PORT, unix:PATH, exec:CMD or file:PATH)")
    scheme, _, rest = text.partition(":")
    if scheme not in SCHEMES:
        raise MigrationError(f"unknown migration protocol {scheme!r} (tcp, unix, exec or file)")
    if scheme == "tcp":
        if rest.startswith("["):
            host, sep, port = rest[1:].partition("]:")
        else:
            host, sep, port = rest.rpartition(":")
        if not sep:
            raise MigrationError(f"invalid tcp migration address {text[:80]!r} (tcp:HOST:PORT)")
        try:  # a host the socket module cannot encode (TypeError at connect/bind) is refused here
            return Uri("tcp", host=check_host(host), port=check_port(port))
        except ValueError as exc:
            raise MigrationError(f"invalid tcp migration address {text[:80]!r}: {exc}") from None
    if not rest or "\0" in rest:
        raise MigrationError(f"migration URI {text!r} needs a {'command' if scheme == 'exec' else 'path'}")
    return Uri(scheme, path=rest)


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
    """Open the outgoing side."""
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
            return FileChannel(open(uri.path, "wb"), what=f"file {uri.path}")
        proc = subprocess.Popen(["/bin/sh", "-c", uri.path], stdin=subprocess.PIPE)
        assert proc.stdin is not None
        return FileChannel(proc.stdin, proc, what=f"exec command {uri.path!r}")  # type: ignore[arg-type]
    except OSError as exc:
        raise MigrationError(f"cannot open {uri}: {exc.strerror or exc}") from None


class Listener:
    """The destination's waiting side; ``accept()`` gives the channel (for file/exec, at once)."""

    def __init__(self, uri: Uri) -> None:
        self.uri = uri
        self.sock: socket.socket | None = None
        if uri.scheme in ("tcp", "unix"):
            family, addr = _sockaddr(uri, True)
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                if family != socket.AF_UNIX:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(addr)
                sock.listen(1)
            except OSError as exc:
                sock.close()
                raise MigrationError(f"cannot listen on {uri}: {exc.strerror or exc}") from None
            self.sock = sock
        elif uri.scheme == "file" and not Path(uri.path).is_file():
            raise MigrationError(f"cannot restore from {uri}: no such file")

    @property
    def address(self) -> Any:
        return self.sock.getsockname() if self.sock is not None else None

    def accept(self) -> SocketChannel | FileChannel:
        try:
            if self.sock is not None:
                conn, _ = self.sock.accept()
                self.close()  # one migration per listener, as in QEMU
                return SocketChannel(conn)
            if self.uri.scheme == "file":
                return FileChannel(open(self.uri.path, "rb"), what=f"file {self.uri.path}")
            proc = subprocess.Popen(["/bin/sh", "-c", self.uri.path], stdout=subprocess.PIPE)
            assert proc.stdout is not None
            return FileChannel(proc.stdout, proc, what=f"exec command {self.uri.path!r}")  # type: ignore[arg-type]
        except OSError as exc:
            raise MigrationError(f"incoming migration on {self.uri} failed: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self.sock is not None:
            try:
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept()
                except OSError:
                    pass
                self.sock.close()
            finally:
                if self.uri.scheme == "unix":
                    try:
                        os.unlink(self.uri.path)
                    except OSError:
                        pass
            self.sock = None
