"""Where a QMP server listens: parsing ``-qmp`` specs and opening their listening sockets.

Accepted, as in QEMU: ``unix:PATH,server[=on][,wait=off|nowait]`` and
``tcp:[HOST]:PORT,server[=on][,wait=off|nowait]``. Without ``wait=off`` the VM
waits for the first client before it starts. A TCP server with no host binds
to loopback, not to every interface. A UNIX socket is created mode 0600
without a window where it is more open: it is bound inside a private 0700
directory, chmod-ed, then renamed into place.
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kvmpy.errors import ConfigError, shown
from kvmpy.netaddr import check_host, check_port

UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL
STAGING_EXTRA = 13  # "/.qXXXXXXXX/s": the private directory we bind in first


@dataclass(frozen=True)
class Endpoint:
    kind: str  # "unix" or "tcp"
    path: Path | None = None
    host: str = "127.0.0.1"
    port: int = 0
    wait: bool = True
    spec: str = ""

    def describe(self) -> str:
        where = f"unix:{self.path}" if self.kind == "unix" else f"tcp:{self.host}:{self.port}"
        return f"{where},server=on"


def _flag(key: str, value: str) -> bool:
    if value in ("on", "yes", "true"):
        return True
    if value in ("off", "no", "false"):
        return False
    raise ConfigError(f"-qmp: {key}={shown(value)}: expected on or off")


def parse_endpoint(spec: str) -> Endpoint:
    """Parse one ``-qmp`` value; a ConfigError names what is wrong."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError("-qmp needs a value such as unix:/tmp/qmp.sock,server,wait=off")
    label = spec if spec.isprintable() else shown(spec, limit=120)  # no raw newline in a one-line error
    head, *opts = spec.split(",")
    server, wait = False, True
    for opt in opts:
        key, sep, value = opt.partition("=")
        if key == "server":
            server = _flag(key, value) if sep else True
        elif key == "wait":
            wait = _flag(key, value) if sep else True
        elif key == "nowait" and not sep:
            wait = False
        elif key:
            raise ConfigError(f"-qmp {label}: unsupported option {shown(key)} (server and wait are supported)")
    scheme, sep, rest = head.partition(":")
    if not sep or scheme not in ("unix", "tcp"):
        raise ConfigError(f"-qmp {label}: expected unix:PATH or tcp:HOST:PORT")
    if not server:
        raise ConfigError(f"-qmp {label}: kvmpy only listens for QMP clients: add ',server'")
    if scheme == "unix":
        if "\0" in rest:
            raise ConfigError(f"-qmp {label}: the socket path contains a NUL byte")
        if not rest:
            raise ConfigError(f"-qmp {label}: the socket path is empty")
        limit = UNIX_PATH_MAX - STAGING_EXTRA
        try:
            encoded = os.fsencode(os.path.abspath(rest))
        except UnicodeError:
            raise ConfigError(f"-qmp {label}: the socket path cannot be encoded for this file system") from None
        if len(encoded) > limit:
            raise ConfigError(f"-qmp {label}: the socket path is longer than {limit} bytes")
        return Endpoint("unix", path=Path(rest), wait=wait, spec=spec)
    host, sep, port_text = rest.rpartition(":")
    if not sep:
        raise ConfigError(f"-qmp {label}: expected tcp:HOST:PORT")
    host = host.strip("[]") or "127.0.0.1"
    try:
        check_host(host)
        port = check_port(port_text)
    except ValueError as exc:
        raise ConfigError(f"-qmp {label}: {exc}") from None
    return Endpoint("tcp", host=host, port=port, wait=wait, spec=spec)


def listen(ep: Endpoint) -> socket.socket:
    """A bound, listening, non-blocking socket for ``ep``; OSError becomes a one-line ConfigError."""
    try:
        sock = _listen_unix(ep.path) if ep.kind == "unix" else _listen_tcp(ep.host, ep.port)  # type: ignore[arg-type]
    except OSError as exc:
        raise ConfigError(f"-qmp {ep.spec}: cannot listen: {exc.strerror or exc}") from None
    except (UnicodeError, TypeError, ValueError) as exc:  # a host the socket module cannot encode
        raise ConfigError(f"-qmp {ep.spec}: cannot listen: {exc}") from None
    sock.setblocking(False)
    return sock


def _listen_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(16)
    except OSError:
        sock.close()
        raise
    return sock


def _listen_unix(path: Path) -> socket.socket:
    try:
        st = path.lstat()
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(0, f"{path} exists and is not a socket")
        path.unlink()  # a stale socket from an earlier run, as QEMU replaces it
    private = Path(tempfile.mkdtemp(prefix=".q", dir=path.parent))  # 0700, same filesystem
    staging = private / "s"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(staging))
        os.chmod(staging, 0o600)
        sock.listen(16)  # before the rename: a client that sees the path must never be refused
        os.rename(staging, path)
    except OSError:
        sock.close()
        raise
    finally:
        staging.unlink(missing_ok=True)
        private.rmdir()
    return sock
