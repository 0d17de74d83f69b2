"""The stream is hostile input: corrupted, truncated, oversized or mismatched streams are rejected
with a clear error, and the half-loaded destination never runs. The parser is fuzzed without a VM."""

from __future__ import annotations

import io
import random
import struct

import numpy as np
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings, strategies as st

from kvmpy.lifecycle import RunState
from kvmpy.migration import stream
from kvmpy.migration.destination import MigrationDestination
from kvmpy.migration.errors import ConfigMismatchError, StreamError
from kvmpy.migration.source import MigrationSource
from kvmpy.memory.ramblock import PAGE_SIZE
from kvmpy.migration.stream import StreamReader
from kvmpy.migration.transport import FileChannel
from tests.migration.support import machine

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


@pytest.mark.kvm_host
def test_a_good_stream_loads(snapshot: bytes, dest) -> None:
    assert snapshot.startswith(stream.MAGIC)
    _load(dest, snapshot)
    assert dest.lifecycle.state is not RunState.RUNNING  # loading never starts the VM by itself


@pytest.mark.kvm_host
def test_corruption_anywhere_is_rejected(snapshot: bytes, dest) -> None:
    rng = random.Random(99)
    for _ in range(40):
        data = bytearray(snapshot)
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
        with pytest.raises(StreamError):
            _load(dest, bytes(data))
        assert dest.lifecycle.state is not RunState.RUNNING


@pytest.mark.kvm_host
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


@pytest.mark.kvm_host
def test_words_swapped_within_a_page_are_rejected(snapshot: bytes, dest) -> None:
    """The outside probe swapped two 8-byte words inside a page: 19 of 25 such streams loaded."""
    offsets = _page_offsets(snapshot, dest.board.ram.npages)
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
        assert dest.lifecycle.state is not RunState.RUNNING
        tried += 1
        if tried == 25:
            break
    assert tried == 25


def _header(config_body: bytes = b"{}") -> bytes:
    return stream.HEADER.pack(stream.MAGIC, stream.VERSION, 0) + bytes([stream.T_CONFIG]) + \
        struct.pack("<I", len(config_body)) + config_body


@pytest.mark.kvm_host
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


@pytest.mark.kvm_host
def test_configuration_mismatch_is_refused_clearly(snapshot: bytes) -> None:
    with machine(memory_mib=128, run=False) as (big, _):
        with pytest.raises(ConfigMismatchError, match="memory: 64 MiB in the stream, 128 MiB here"):
            _load(big, snapshot)


# ---- the parser alone, fuzzed: every input ends in a record or a StreamError -----------------------------
FUZZ_PAGES = 64


def _parse_all(data: bytes) -> list[int]:
    reader = StreamReader(FileChannel(io.BytesIO(data), what="fuzz"))  # type: ignore[arg-type]
    reader.header()
    reader.block_pages = [FUZZ_PAGES]
    reader.block_views = [memoryview(bytearray(FUZZ_PAGES * PAGE_SIZE))]
    kinds = []
    while True:
        kind, _ = reader.next()
        kinds.append(kind)
        if kind == stream.T_END:
            return kinds


def _sealed(body: bytes) -> bytes:
    """``body`` + END with the right checksum: what a hostile peer would send."""
    body += bytes([stream.T_END])
    return body + struct.pack("<Q", xxhash.xxh3_64_intdigest(body))


HUGE = st.builds(lambda d, n: d * n, st.sampled_from("19"), st.integers(4301, 20000))
JSON_TEXT = st.one_of(
    HUGE, HUGE.map(lambda n: f'{{"version": {n}}}'), HUGE.map(lambda n: f'[{n}, -{n}, {n}e{n}]'),
    st.sampled_from(["NaN", "Infinity", "-Infinity", '{"$b": "zz"}', '{"$b": 5}', '"\\ud800"', "1e999"]),
    st.integers(1, 5000).map(lambda n: "[" * n + "]" * n), st.text(max_size=40))
U32 = st.one_of(st.integers(0, 0xFFFFFFFF), st.sampled_from([0, 1, FUZZ_PAGES - 1, FUZZ_PAGES, 0xFFFFFFFF]))


@st.composite
def _records(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from([stream.T_PAGES, stream.T_RUN, stream.T_ZERORUN, stream.T_ROUND, stream.T_SECTION,
                                 stream.T_CONFIG, 0, 0xFF]))
    if kind == stream.T_SECTION:
        name = draw(st.text(max_size=70)).encode("utf-8", "surrogatepass")
        body = draw(JSON_TEXT).encode("utf-8", "surrogatepass")
        return bytes([kind]) + struct.pack("<H", min(len(name), 0xFFFF)) + name + \
            struct.pack("<I", draw(st.sampled_from([len(body), 0xFFFFFFFF]))) + body
    if kind in (stream.T_RUN, stream.T_ZERORUN):
        first, count = draw(U32), draw(U32)
        pages = min(count, 2) if kind == stream.T_RUN else 0
        return struct.pack("<BHII", kind, draw(st.integers(0, 2)), first, count) + b"\x5a" * (pages * PAGE_SIZE)
    if kind == stream.T_PAGES:
        nzero, nnormal = draw(st.integers(0, 3) | U32), draw(st.integers(0, 2) | U32)
        idx = b"".join(struct.pack("<I", draw(U32)) for _ in range(min(nzero + nnormal, 5)))
        return struct.pack("<BHII", kind, 0, nzero, nnormal) + idx + b"\xa5" * (min(nnormal, 2) * PAGE_SIZE)
    return bytes([kind]) + struct.pack("<I", draw(U32))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=JSON_TEXT, records=st.lists(_records(), max_size=6), seal=st.booleans())
def test_stream_parser_fuzz_huge_integers_and_hostile_records(config: str, records: list[bytes], seal: bool) -> None:
    """Huge integers, NaN, deep nesting, bad names and out-of-range fields, checksum right or wrong."""
    raw = config.encode("utf-8", "surrogatepass")
    body = stream.HEADER.pack(stream.MAGIC, stream.VERSION, 0) + bytes([stream.T_CONFIG]) + \
        struct.pack("<I", len(raw)) + raw + b"".join(records)
    data = _sealed(body) if seal else body + bytes([stream.T_END]) + bytes(8)
    try:
        _parse_all(data)
    except StreamError as exc:
        assert str(exc)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_stream_parser_fuzz_random_bytes_after_a_good_header(tail: bytes) -> None:
    try:
        _parse_all(_sealed(_header() + tail))
    except StreamError:
        pass


@pytest.mark.parametrize("section", [
    "9" * 5000,  # json.loads raises ValueError over 4300 digits
    '{"version": 1, "state": {"offset": ' + "1" * 5000 + "}}",
    "[" * 100000,
    '{"version": 1, "state": {"offset": NaN}}',  # the probe's RTC offsets: NaN, +-inf, overflowing floats
    '{"version": 1, "state": {"offset": Infinity}}',
    '{"version": 1, "state": {"offset": -Infinity}}',
    '{"version": 1, "state": {"offset": 1e999}}',
])
def test_sections_with_huge_or_non_finite_numbers_are_stream_errors(section: str) -> None:
    body = _header() + bytes([stream.T_SECTION]) + struct.pack("<H", 7) + b"dev/rtc" + \
        struct.pack("<I", len(section)) + section.encode()
    with pytest.raises(StreamError, match="not valid state data"):
        _parse_all(_sealed(body))


@pytest.mark.kvm_host
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
