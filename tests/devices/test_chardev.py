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
