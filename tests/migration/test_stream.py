"""The stream is hostile input: corrupted, truncated, oversized or mismatched streams are rejected
with a clear error, and the half-loaded destination never runs."""

from __future__ import annotations

import io
import random
import struct

import pytest

from kvmpy.lifecycle import RunState
from kvmpy.migration import stream
from kvmpy.migration.destination import MigrationDestination
from kvmpy.migration.errors import ConfigMismatchError, StreamError
from kvmpy.migration.source import MigrationSource
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
    assert dest.lifecycle.state is not RunState.RUNNING  # loading never starts the VM by itself


def test_corruption_anywhere_is_rejected(snapshot: bytes, dest) -> None:
    rng = random.Random(99)
    for _ in range(40):
        data = bytearray(snapshot)
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
        with pytest.raises(StreamError):
            _load(dest, bytes(data))
        assert dest.lifecycle.state is not RunState.RUNNING


def test_truncation_anywhere_is_rejected(snapshot: bytes, dest) -> None:
    rng = random.Random(5)
    for cut in [0, 3, 8, 16, 21, *(rng.randrange(len(snapshot)) for _ in range(20)), len(snapshot) - 1]:
        with pytest.raises(StreamError, match="truncated|checksum"):
            _load(dest, snapshot[:cut])


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


@pytest.mark.parametrize("offset", [1e300, -1e300, 10 ** 40])
def test_a_well_formed_stream_with_a_hostile_rtc_offset_is_refused(dest, offset) -> None:
    # The checksum is right: only the RTC's own range check can catch this one.
    from kvmpy.migration.stream import StreamWriter

    with dest.lifecycle.vcpus_parked():
        state = dest.vmstate.capture()
    state["dev/rtc"]["state"]["offset"] = offset
    sink = _Sink()
    writer = StreamWriter(FileChannel(sink, what="memory"))  # type: ignore[arg-type]
    writer.header(dest.vmstate.describe())
    for name, value in state.items():
        writer.section(name, value)
    writer.end()
    rtc_before = dest.board.devices["rtc"].save()
    with pytest.raises(StreamError, match="dev/rtc"):
        _load(dest, sink.getvalue())
    assert dest.board.devices["rtc"].save()["offset"] == rtc_before["offset"]
    assert dest.lifecycle.state is not RunState.RUNNING
