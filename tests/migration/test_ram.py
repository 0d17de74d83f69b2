"""RAM over the stream without a VM: real RAM blocks, real stream bytes, every record kind."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest

from kvmpy.memory.ramblock import PAGE_SIZE, RAMBlock
from kvmpy.migration import stream
from kvmpy.migration.errors import StreamError
from kvmpy.migration.ram import RamCounters, RamReceiver, RamSender, mapped_pages, nonzero_pages, page_view, runs
from kvmpy.migration.stream import StreamReader, StreamWriter
from kvmpy.migration.transport import FileChannel

NPAGES = 3000


def _block(name: str = "ram") -> RAMBlock:
    return RAMBlock.allocate(name, NPAGES * PAGE_SIZE)


def _fill(block: RAMBlock, pages: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = block.array.reshape(-1, PAGE_SIZE)
    for p in pages.tolist():
        rows[p, rng.integers(0, PAGE_SIZE)] = rng.integers(1, 256)


def _load(data: bytes, dst: RAMBlock, receiver: RamReceiver | None = None) -> RamReceiver:
    reader = StreamReader(FileChannel(io.BytesIO(data), what="test"))  # type: ignore[arg-type]
    reader.header()
    reader.block_pages = [dst.npages]
    reader.block_views = [dst.mv]
    ram = receiver or RamReceiver([dst])
    while True:
        kind, rec = reader.next()
        if kind == stream.T_PAGES:
            ram.apply(rec)
        elif kind == stream.T_RUN:
            ram.applied_run(rec)
        elif kind == stream.T_ZERORUN:
            ram.apply_zero_run(rec)
        elif kind == stream.T_END:
            return ram


def _stream(send) -> bytes:
    sink = io.BytesIO()
    writer = StreamWriter(FileChannel(sink, what="test"))  # type: ignore[arg-type]
    writer.header({})
    send(writer)
    writer.end()
    return sink.getvalue()


def test_mapped_pages_sees_written_pages_only() -> None:
    block = _block()
    written = np.array([0, 7, 8, 9, 2999])
    _fill(block, written, 1)
    mapped = mapped_pages(block)
    if mapped is None:
        pytest.skip("/proc/self/pagemap is not readable here")
    assert mapped[written].all()
    assert not mapped[1000:1500].any()  # untouched (with THP a write may map its whole 2 MiB neighbourhood)
    expect = np.zeros(NPAGES, dtype=bool)
    expect[written] = True
    assert np.array_equal(nonzero_pages(block, page_view(block)), expect)


def test_runs() -> None:
    mask = np.array([1, 1, 0, 0, 1, 0, 1, 1, 1], dtype=bool)
    starts, ends = runs(mask)
    assert starts.tolist() == [0, 4, 6] and ends.tolist() == [2, 5, 9]
    assert [len(x) for x in runs(np.zeros(5, dtype=bool))] == [0, 0]


@pytest.mark.parametrize("stable", [False, True])
def test_first_round_then_dirty_sets_arrive_exactly(stable: bool) -> None:
    src, dst = _block("src"), _block("dst")
    _fill(src, np.r_[0:5, 100:1200, 1500, 1502, 2990:3000], 2)  # runs longer than MAX_NORMAL, singles
    _fill(dst, np.r_[50:60, 2000:2100], 3)  # stale data on the destination that must be cleared
    counters = RamCounters()

    def first(writer: StreamWriter) -> None:
        RamSender([src], writer, counters).send_all(0)

    ram = _load(_stream(first), dst)
    assert np.array_equal(src.array, dst.array)
    assert counters.normal + counters.duplicate == NPAGES and counters.normal == 5 + 1100 + 2 + 10
    # A dirty round: some pages rewritten, some zeroed, scattered and contiguous.
    rows = src.array.reshape(-1, PAGE_SIZE)
    rows[100:400] = 0
    _fill(src, np.r_[10:20, 700, 702, 704, 1300:2500], 4)
    dirty = np.zeros(NPAGES, dtype=bool)
    dirty[np.r_[100:400, 10:20, 700, 702, 704, 1300:2500]] = True

    def again(writer: StreamWriter) -> None:
        sender = RamSender([src], writer, RamCounters())
        sender.stable = stable
        sender.send_pages(0, dirty)

    _load(_stream(again), dst, ram)
    assert np.array_equal(src.array, dst.array)


def test_page_data_damage_is_caught() -> None:
    src, dst = _block("src"), _block("dst")
    _fill(src, np.r_[0:64], 5)
    data = bytearray(_stream(lambda w: RamSender([src], w, RamCounters()).send_all(0)))
    first_page = data.index(bytes(src.array[:PAGE_SIZE]))
    for pos in (first_page, first_page + 4095, first_page + 63 * PAGE_SIZE + 100):
        bad = bytearray(data)
        bad[pos] ^= 0x10
        with pytest.raises(StreamError, match="checksum"):
            _load(bytes(bad), dst)


def _head() -> bytes:
    return stream.HEADER.pack(stream.MAGIC, stream.VERSION, 0) + bytes([stream.T_CONFIG]) + \
        struct.pack("<I", 2) + b"{}"


@pytest.mark.parametrize("record, error", [
    (struct.pack("<BHII", stream.T_RUN, 1, 0, 1), "RAM block 1, which does not exist"),
    (struct.pack("<BHII", stream.T_RUN, 0, 0, 0), "exceeds the limits"),
    (struct.pack("<BHII", stream.T_RUN, 0, 0, stream.MAX_NORMAL + 1), "exceeds the limits"),
    (struct.pack("<BHII", stream.T_RUN, 0, NPAGES - 1, 2), "beyond RAM block 0"),
    (struct.pack("<BHII", stream.T_RUN, 0, 0xFFFFFFFF, 1), "beyond RAM block 0"),
    (struct.pack("<BHII", stream.T_ZERORUN, 0, 1, NPAGES), "beyond RAM block 0"),
    (struct.pack("<BHII", stream.T_ZERORUN, 0, 5, 0), "exceeds the limits"),
    (struct.pack("<BHII", stream.T_RUN, 0, 0, 2) + b"\1" * PAGE_SIZE, "truncated"),
])
def test_hostile_runs_are_refused_before_any_write(record: bytes, error: str) -> None:
    dst = _block()
    with pytest.raises(StreamError, match=error):
        _load(_head() + record, dst)
    if "truncated" not in error:
        assert not dst.array.any()


def _swap_words(data: bytearray, page_at: int, a: int, b: int) -> bytearray:
    bad = bytearray(data)
    wa, wb = page_at + 8 * a, page_at + 8 * b
    bad[wa:wa + 8], bad[wb:wb + 8] = data[wb:wb + 8], data[wa:wa + 8]
    return bad


def test_words_swapped_within_any_page_are_caught() -> None:
    """A per-page sum of words cannot see them reordered; the stream's checksum must."""
    src, dst = _block("src"), _block("dst")
    rng = np.random.default_rng(6)
    pages = np.r_[0:40, 100, 300, 2000:2020]  # RUN records and scattered PAGES records
    src.array.reshape(-1, PAGE_SIZE)[pages] = rng.integers(0, 256, (len(pages), PAGE_SIZE), dtype=np.uint8)
    data = bytearray(_stream(lambda w: RamSender([src], w, RamCounters()).send_all(0)))
    _load(bytes(data), dst)
    assert np.array_equal(src.array, dst.array)
    for p in pages.tolist():
        page = bytes(src.array[p * PAGE_SIZE:(p + 1) * PAGE_SIZE])
        at = data.index(page)
        a, b = sorted(rng.choice(PAGE_SIZE // 8, 2, replace=False).tolist())
        assert page[8 * a:8 * a + 8] != page[8 * b:8 * b + 8]
        with pytest.raises(StreamError, match="checksum"):
            _load(bytes(_swap_words(data, at, a, b)), _block("victim"))


@pytest.mark.parametrize("version", [1, 2, 4, 0xFFFFFFFF])
def test_other_stream_versions_are_refused_by_number(version: int) -> None:
    """Versions 1 and 2 checksummed pages by word sums; they are refused, not trusted."""
    head = stream.HEADER.pack(stream.MAGIC, version, 0) + bytes([stream.T_CONFIG]) + struct.pack("<I", 2) + b"{}"
    with pytest.raises(StreamError, match=f"version {version} is not supported"):
        _load(head + bytes([stream.T_END]) + bytes(8), _block())
