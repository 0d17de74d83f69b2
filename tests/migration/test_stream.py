"""The stream is hostile input: corrupted, truncated, oversized or mismatched streams are rejected
with a clear error, and the half-loaded destination never runs."""

from __future__ import annotations

import io
import random
import struct

import numpy as np
import pytest

from kvmpy.machine import RunState
from kvmpy.migration import stream
from kvmpy.migration.destination import MigrationDestination
from kvmpy.migration.errors import ConfigMismatchError, StreamError
from kvmpy.migration.source import MigrationSource
from kvmpy.memory.ramblock import PAGE_SIZE
from kvmpy.migration.stream import StreamReader
from kvmpy.migration.transport import FileChannel
from tests.migration.support import machine

pytestmark = pytest.mark.kvm_host


class _Sink(io.BytesIO):
    def close(self) -> None:  # keep the bytes readable after the source closes its channel
        pass


@pytest.fixture(scope="module")
def snapshot() -> bytes:
    with machine() as (src, _):
        sink = _Sink()
        job = MigrationSource(src, FileChannel(sink, what="memory"))  # type: ignore[arg-type]
        job.channel.finish = lambda: None  # type: ignore[method-assign]
        assert job.run().status == "completed"
        return sink.getvalue()


@pytest.fixture(scope="module")
def dest():
    with machine(run=False) as (dst, _):
        yield dst


def _load(dst, data: bytes) -> None:
    MigrationDestination(dst, FileChannel(io.BytesIO(data), what="test")).receive()  # type: ignore[arg-type]


def test_a_good_stream_loads(snapshot: bytes, dest) -> None:
    assert snapshot.startswith(stream.MAGIC)
    _load(dest, snapshot)
    assert dest.state is not RunState.RUNNING  # loading never starts the VM by itself


def test_corruption_anywhere_is_rejected(snapshot: bytes, dest) -> None:
    rng = random.Random(99)
    for _ in range(40):
        data = bytearray(snapshot)
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
        with pytest.raises(StreamError):
            _load(dest, bytes(data))
        assert dest.state is not RunState.RUNNING


def test_truncation_anywhere_is_rejected(snapshot: bytes, dest) -> None:
    rng = random.Random(5)
    for cut in [0, 3, 8, 16, 21, *(rng.randrange(len(snapshot)) for _ in range(20)), len(snapshot) - 1]:
        with pytest.raises(StreamError, match="truncated|checksum"):
            _load(dest, snapshot[:cut])


def _page_offsets(data: bytes, npages: int) -> list[int]:
    """Where each page of data sent starts in the stream, found by walking its records."""
    reader = StreamReader(FileChannel(io.BytesIO(data), what="walk"))  # type: ignore[arg-type]
    reader.header()
    reader.block_pages = [npages]
    reader.block_views = [memoryview(bytearray(npages * PAGE_SIZE))]
    found = []
    while True:
        kind, rec = reader.next()
        if kind == stream.T_END:
            return found
        n = rec.count if kind == stream.T_RUN else len(rec.normal) if kind == stream.T_PAGES else 0
        found += [reader.bytes - (n - i) * PAGE_SIZE for i in range(n)]


def test_words_swapped_within_a_page_are_rejected(snapshot: bytes, dest) -> None:
    """The outside probe swapped two 8-byte words inside a page: 19 of 25 such streams loaded."""
    offsets = _page_offsets(snapshot, dest.ram.npages)
    rng = random.Random(25)
    tried = 0
    for at in rng.sample(offsets, 60):
        words = np.frombuffer(snapshot, dtype="<u8", count=PAGE_SIZE // 8, offset=at)
        a = rng.choice(np.flatnonzero(words).tolist())
        b = rng.choice(np.flatnonzero(words != words[a]).tolist())
        bad = bytearray(snapshot)
        wa, wb = at + 8 * a, at + 8 * b
        bad[wa:wa + 8], bad[wb:wb + 8] = snapshot[wb:wb + 8], snapshot[wa:wa + 8]
        with pytest.raises(StreamError, match="checksum"):
            _load(dest, bytes(bad))
        assert dest.state is not RunState.RUNNING
        tried += 1
        if tried == 25:
            break
    assert tried == 25


def _header(config_body: bytes = b"{}") -> bytes:
    return stream.HEADER.pack(stream.MAGIC, stream.VERSION, 0) + bytes([stream.T_CONFIG]) + \
        struct.pack("<I", len(config_body)) + config_body


def test_bad_magic_version_and_limits_are_named(snapshot: bytes, dest) -> None:
    with pytest.raises(StreamError, match="bad magic"):
        _load(dest, b"QEVM" + snapshot[4:])
    with pytest.raises(StreamError, match="version 9"):
        _load(dest, stream.HEADER.pack(stream.MAGIC, 9, 0) + snapshot[16:])
    with pytest.raises(StreamError, match="limit"):  # a 4 GiB config is refused before any allocation
        _load(dest, stream.HEADER.pack(stream.MAGIC, stream.VERSION, 0) + bytes([stream.T_CONFIG]) + b"\xff" * 4)
    # Past the (valid) config record: a page index beyond RAM, then an oversized page batch.
    cfg_len = struct.unpack_from("<I", snapshot, 17)[0]
    head = snapshot[:21 + cfg_len]
    with pytest.raises(StreamError, match="beyond RAM block"):
        _load(dest, head + struct.pack("<BHII", stream.T_PAGES, 0, 1, 0) + struct.pack("<I", 1 << 30))
    with pytest.raises(StreamError, match="exceeds the limits"):
        _load(dest, head + struct.pack("<BHII", stream.T_PAGES, 0, 0, 1 << 31))
    with pytest.raises(StreamError, match="RAM block 7"):
        _load(dest, head + struct.pack("<BHII", stream.T_PAGES, 7, 0, 0))
    with pytest.raises(StreamError, match="unknown record type"):
        _load(dest, head + b"\x99")
    with pytest.raises(StreamError, match="not valid state data"):
        _load(dest, _header(b"[" * 100000))


def test_configuration_mismatch_is_refused_clearly(snapshot: bytes) -> None:
    with machine(memory_mib=128, run=False) as (big, _):
        with pytest.raises(ConfigMismatchError, match="memory: 64 MiB in the stream, 128 MiB here"):
            _load(big, snapshot)
