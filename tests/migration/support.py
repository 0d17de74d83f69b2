"""Shared helpers for the migration tests: dirtier machines, the RAM invariant, a byte-counting TCP proxy."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from kvmpy.config import DebugExitConfig, MachineConfig
from kvmpy.devices.chardev import BufferBackend
from tests.guests.build import build_guest

START_MB, SIZE_MB = 4, 8


def dirtier_config(memory_mib: int = 64, size_mb: int = SIZE_MB) -> MachineConfig:
    return MachineConfig(kernel=build_guest("dirtier"), memory=memory_mib << 20,
                         append=f"start_mb={START_MB} size_mb={size_mb}",
                         no_reboot=True, serial="stdio", debug_exit=DebugExitConfig(0xF4, 4)).validate()


@contextmanager
def machine(memory_mib: int = 64, run: bool = True, size_mb: int = SIZE_MB) -> Iterator[tuple]:
    """A dirtier Machine with an in-memory console; running (until it has printed a pass) if ``run``."""
    from kvmpy.machine import Machine

    console = BufferBackend()
    m = Machine(dirtier_config(memory_mib, size_mb), console=console)
    try:
        if run:
            m.start()
            assert console.wait_for(b"BB", 60), console.output
        else:  # a destination: threads parked, console live
            m.board.console.start(m.board.serial.receive, lambda: None)
            for t in m.board.threads:
                t.start()
        yield m, console
    finally:
        m.close()


def dirtier_bytes(m, size_mb: int = SIZE_MB) -> np.ndarray:
    pages = m.board.ram.array.reshape(-1, 4096)
    return pages[START_MB * 256:(START_MB + size_mb) * 256, 0]


def invariant_breaks(first_bytes: np.ndarray) -> list[int]:
    """Where page i differs from page i-1; the guest allows exactly one, where page i is one less."""
    d = (first_bytes[:-1].astype(np.int16) - first_bytes[1:]) % 256
    bad = np.flatnonzero(d)
    assert all(d[i] == 1 for i in bad), f"a page differs from its neighbour by {[int(d[i]) for i in bad]}"
    return [int(i) for i in bad]


def assert_invariant(m, size_mb: int = SIZE_MB) -> None:
    with m.lifecycle.vcpus_parked():
        breaks = invariant_breaks(dirtier_bytes(m, size_mb))
    assert len(breaks) <= 1, breaks


def assert_progress(m, console, seconds: float = 20) -> None:
    """The guest is running: its dirtier bytes and its serial output both move."""
    before, out = dirtier_bytes(m).copy(), len(console.output)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if len(console.output) > out and not np.array_equal(before, dirtier_bytes(m)):
            return
        time.sleep(0.05)
    raise AssertionError("the guest is not running")


def assert_frozen(m, seconds: float = 0.5) -> None:
    before = dirtier_bytes(m).copy()
    time.sleep(seconds)
    assert np.array_equal(before, dirtier_bytes(m)), "the guest ran"


class CuttingProxy:
    """Forwards one TCP connection and cuts both directions after ``limit`` bytes from the client."""

    def __init__(self, target: tuple[str, int], limit: int) -> None:
        self.target, self.limit = target, limit
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.forwarded = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        client, _ = self.sock.accept()
        server = socket.create_connection(self.target)
        back = threading.Thread(target=self._pump_back, args=(server, client), daemon=True)
        back.start()
        try:
            while self.forwarded < self.limit:
                data = client.recv(min(65536, self.limit - self.forwarded))
                if not data:
                    break
                server.sendall(data)
                self.forwarded += len(data)
        except OSError:
            pass
        for s in (client, server):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.sock.close()

    @staticmethod
    def _pump_back(server: socket.socket, client: socket.socket) -> None:
        try:
            while data := server.recv(4096):
                client.sendall(data)
        except OSError:
            pass
