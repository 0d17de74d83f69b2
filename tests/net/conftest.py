"""Fixtures for the netdev backend tests: a frame collector standing in for the NIC side of NetBackend."""

from __future__ import annotations

import queue
import threading

import pytest


class Collector:
    """The ``receive`` callback a NIC gives a backend: keeps frames; ``full`` makes it refuse them."""

    def __init__(self) -> None:
        self.frames: queue.Queue[bytes] = queue.Queue()
        self.full = threading.Event()
        self.refused = 0

    def __call__(self, frame: bytes) -> bool:
        if self.full.is_set():
            self.refused += 1
            return False
        self.frames.put(bytes(frame))
        return True

    def get(self, timeout: float = 5.0) -> bytes:
        return self.frames.get(timeout=timeout)

    def take(self, count: int, timeout: float = 5.0) -> list[bytes]:
        return [self.get(timeout) for _ in range(count)]

    def empty_after(self, seconds: float) -> bool:
        try:
            self.frames.get(timeout=seconds)
        except queue.Empty:
            return True
        return False


@pytest.fixture
def collector() -> Collector:
    return Collector()


@pytest.fixture
def collector_factory():
    return Collector
