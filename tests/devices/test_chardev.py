"""Character backends: output-side host errors drop the output and never reach the vCPU (issue 11)."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from kvmpy.devices.chardev import BufferBackend, FileBackend, NullBackend, StdioBackend, open_backend, write_all
from tests.guests.build import build_guest
from tests.guests.runner import PASS, run_cli


def test_file_backend_on_a_full_disk_drops_output_and_logs_once(caplog) -> None:
    backend = open_backend("file:/dev/full")
    with caplog.at_level(logging.WARNING, logger="kvmpy.devices.chardev"):
        for _ in range(3):
            backend.write(b"hello\n")  # ENOSPC each time: never raised
    backend.close()
    warnings = [r for r in caplog.records if "No space left on device" in r.getMessage()]
    assert len(warnings) == 1 and backend.output_failed


def test_stdio_backend_survives_every_output_error(tmp_path: Path) -> None:
    full = os.open("/dev/full", os.O_WRONLY)
    r, w = os.pipe()
    os.close(r)  # EPIPE (Python ignores SIGPIPE)
    closed_w = 10_000  # never opened: EBADF
    try:
        for fd in (full, w, closed_w):
            backend = StdioBackend(stdin_fd=-1, stdout_fd=fd)
            backend.write(b"x" * 100)
            assert backend.output_failed
            backend.close()
    finally:
        os.close(full)
        os.close(w)


def test_a_reader_that_stops_draining_costs_at_most_the_stall(tmp_path: Path) -> None:
    import time

    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETFL, os.O_NONBLOCK)
    try:
        backend = StdioBackend(stdin_fd=-1, stdout_fd=w)
        start = time.monotonic()
        backend.write(b"y" * (1 << 20))  # larger than the pipe: blocks, then is dropped
        assert time.monotonic() - start < 3 and backend.output_failed
        backend.close()
    finally:
        os.close(r)
        os.close(w)


def test_partial_writes_are_completed() -> None:
    r, w = os.pipe()
    data = bytes(range(256)) * 1024  # 256 KiB: several partial writes into a 64 KiB pipe
    got = bytearray()
    import threading

    def drain() -> None:
        while chunk := os.read(r, 65536):
            got.extend(chunk)

    t = threading.Thread(target=drain)
    t.start()
    write_all(w, data)
    os.close(w)
    t.join(10)
    os.close(r)
    assert bytes(got) == data


_ERRNO_FDS = ["full", "epipe", "ebadf", "eagain", "ok"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_ERRNO_FDS), st.binary(max_size=70000)), max_size=6))
def test_output_errors_never_escape_any_backend(writes) -> None:
    """Any sequence of writes to any backend over failing host fds returns normally."""
    for kind, data in writes:
        opened: list[int] = []
        if kind == "full":
            fd = os.open("/dev/full", os.O_WRONLY)
            opened.append(fd)
        elif kind in ("epipe", "eagain", "ok"):
            r, fd = os.pipe()
            opened += [r, fd]
            if kind == "epipe":
                os.close(r)
                opened.remove(r)
            else:
                fcntl.fcntl(fd, fcntl.F_SETFL, os.O_NONBLOCK)
        else:
            fd = 10_000  # not open: EBADF
        try:
            for backend in (StdioBackend(stdin_fd=-1, stdout_fd=fd), NullBackend(), BufferBackend()):
                backend.output_stall = 0
                backend.write(data)
                backend.close()
        finally:
            for o in opened:
                os.close(o)
    file_backend = FileBackend(Path("/dev/full"))
    for _, data in writes:
        file_backend.write(data or b"x")
    file_backend.close()
    file_backend.write(b"after close")  # a closed backend drops too


@pytest.mark.kvm_host
def test_guest_runs_on_with_serial_on_a_full_disk() -> None:
    p = run_cli(["-enable-kvm", "-m", "64", "-display", "none", "-no-reboot", "-serial", "file:/dev/full",
                 "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel", str(build_guest("hello"))])
    assert p.returncode == PASS, p.stderr  # the guest reached its debug-exit: its vCPU survived ENOSPC
    assert b"Traceback" not in p.stderr and p.stderr.count(b"No space left on device") == 1


def test_buffer_backend_keeps_what_the_guest_wrote() -> None:
    backend = BufferBackend()
    backend.write(b"abc")
    backend.write(b"def")
    assert backend.output == b"abcdef" and not backend.output_failed


# ---- -chardev socket and pty (QEMU's backends for -serial chardev:ID and virtio consoles) ----
import socket as _socket
import threading as _threading
import time as _time

from kvmpy.config_devices import spec_from_text
from kvmpy.devices.chardev import PtyBackend, SocketBackend, open_chardev


class _Inbox:
    """What a backend hands to the guest side."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.cond = _threading.Condition()

    def receive(self, data: bytes) -> int:
        with self.cond:
            self.data += data
            self.cond.notify_all()
        return len(data)

    def wait_for(self, text: bytes, timeout: float = 10) -> bool:
        end = _time.monotonic() + timeout
        with self.cond:
            while text not in self.data:
                if _time.monotonic() > end:
                    return False
                self.cond.wait(0.1)
            return True


def _read_until(sock: _socket.socket, text: bytes, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    got = b""
    while text not in got:
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


def test_unix_server_without_wait_serves_one_peer_after_another(tmp_path: Path) -> None:
    path = tmp_path / "c0.sock"
    backend = open_chardev(spec_from_text("-chardev", f"socket,id=c0,path={path},server=on,wait=off"))
    assert isinstance(backend, SocketBackend)
    inbox = _Inbox()
    backend.start(inbox.receive, lambda: None)  # wait=off: returns at once
    backend.write(b"before anyone listens\n")  # no peer: dropped, the guest runs on
    try:
        for round_ in range(2):
            client = _socket.socket(_socket.AF_UNIX)
            client.connect(str(path))
            deadline = _time.monotonic() + 10
            while not backend.connected and _time.monotonic() < deadline:
                _time.sleep(0.01)
            backend.write(b"hello %d\n" % round_)
            assert _read_until(client, b"\n") == b"hello %d\n" % round_
            client.sendall(b"typed %d" % round_)
            assert inbox.wait_for(b"typed %d" % round_)
            client.close()
            deadline = _time.monotonic() + 10  # the backend sees the hang-up before the next peer is accepted
            while backend.connected and _time.monotonic() < deadline:
                _time.sleep(0.01)
    finally:
        backend.close()
    assert not path.exists()


def test_tcp_server_waits_for_its_first_client(tmp_path: Path) -> None:
    backend = open_chardev(spec_from_text("-chardev", "socket,id=t,host=127.0.0.1,port=0,server=on"))
    port = backend.address[1]
    started = _threading.Event()
    threading_start = _threading.Thread(target=lambda: (backend.start(lambda d: len(d), lambda: None), started.set()))
    threading_start.start()
    _time.sleep(0.3)
    assert not started.is_set()  # wait=on (the default): the guest does not start before a client
    client = _socket.create_connection(("127.0.0.1", port))
    assert started.wait(10)
    backend.write(b"to the client")
    assert _read_until(client, b"client") == b"to the client"
    client.close()
    backend.close()
    threading_start.join()


def test_client_socket_connects_or_is_one_line(tmp_path: Path) -> None:
    server = _socket.socket(_socket.AF_UNIX)
    server.bind(str(tmp_path / "s"))
    server.listen(1)
    backend = open_chardev(spec_from_text("-chardev", f"socket,id=c,path={tmp_path / 's'}"))
    peer, _ = server.accept()
    inbox = _Inbox()
    backend.start(inbox.receive, lambda: None)
    backend.write(b"out")
    assert _read_until(peer, b"out") == b"out"
    peer.sendall(b"in")
    assert inbox.wait_for(b"in")
    backend.close()
    with pytest.raises(ValueError, match="Failed to connect to 'unix:.*nothing': No such file or directory"):
        open_chardev(spec_from_text("-chardev", f"socket,id=c,path={tmp_path / 'nothing'}"))


def test_a_peer_that_does_not_read_never_stalls_the_guest(tmp_path: Path) -> None:
    path = tmp_path / "slow.sock"
    backend = open_chardev(spec_from_text("-chardev", f"socket,id=c,path={path},server=on,wait=off"))
    backend.start(lambda d: len(d), lambda: None)
    client = _socket.socket(_socket.AF_UNIX)
    client.connect(str(path))
    _time.sleep(0.2)
    start = _time.monotonic()
    for _ in range(200):
        backend.write(b"x" * 65536)  # ~13 MB that nobody reads
    assert _time.monotonic() - start < 5
    client.close()
    backend.close()


def test_pty_backend_talks_through_its_slave(tmp_path: Path) -> None:
    link = tmp_path / "console"
    backend = open_chardev(spec_from_text("-chardev", f"pty,id=p0,path={link}"))
    assert isinstance(backend, PtyBackend) and os.readlink(link) == backend.name
    inbox = _Inbox()
    backend.start(inbox.receive, lambda: None)
    fd = os.open(link, os.O_RDWR | os.O_NOCTTY)
    try:
        backend.write(b"login: ")
        deadline, got = _time.monotonic() + 10, b""
        while b"login: " not in got and _time.monotonic() < deadline:
            got += os.read(fd, 100)
        assert got == b"login: "  # raw mode: bytes as the guest wrote them
        os.write(fd, b"root\r")
        assert inbox.wait_for(b"root\r")
    finally:
        os.close(fd)
        backend.close()
    assert not link.exists()


def test_file_chardev_appends_when_asked(tmp_path: Path) -> None:
    out = tmp_path / "log"
    out.write_bytes(b"old\n")
    backend = open_chardev(spec_from_text("-chardev", f"file,id=f,path={out},append=on"))
    backend.write(b"new\n")
    backend.close()
    assert out.read_bytes() == b"old\nnew\n"


@pytest.mark.kvm_host
def test_serial_on_a_unix_socket_chardev_reaches_the_client(tmp_path: Path) -> None:
    """kvmpy -chardev socket,...,server=on -serial chardev:c0: the guest waits for the client, as under QEMU."""
    import subprocess
    import sys

    path = tmp_path / "serial.sock"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen([sys.executable, "-m", "kvmpy", "-enable-kvm", "-m", "64", "-display", "none",
                             "-no-reboot", "-chardev", f"socket,id=c0,path={path},server=on", "-serial", "chardev:c0",
                             "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel", str(build_guest("hello"))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = _time.monotonic() + 60
        while not path.exists() and _time.monotonic() < deadline:
            _time.sleep(0.05)
        client = _socket.socket(_socket.AF_UNIX)
        client.connect(str(path))
        got = _read_until(client, b"hello from kvmpy test guest\n", timeout=60)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert got.startswith(b"hello from kvmpy test guest\n"), (got, err)
    assert proc.returncode == PASS and out == b"", err
    assert b"waiting for connection on: disconnected:unix:" in err
