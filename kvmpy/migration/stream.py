"""The migration stream format: framing, limits and the running checksum.

Layout (little-endian)::

    header   "KVMPYMIG" u32 version u32 flags
    records  u8 type, then by type:
      CONFIG   u32 len, JSON            the source machine's description (first record)
      PAGES    u16 block u32 nzero u32 nnormal, u32 zero_index[nzero],
               u32 normal_index[nnormal], nnormal * 4096 bytes of page data
      RUN      u16 block u32 first u32 count, count * 4096 bytes: pages first.. in order
      ZERORUN  u16 block u32 first u32 count: pages first.. are all zero
      ROUND    u32 n                    the end of precopy round n (informational)
      SECTION  u16 name_len name u32 len JSON   one device / vCPU / VM-level state
      END      u64 xxh3_64 of every byte before this field, page data included

The checksum is XXH3-64 (the ``xxhash`` package) run over the whole stream in
order: it sees any damaged, lost, duplicated or reordered byte, at the speed
of a memory read. Versions 1 and 2 (a CRC-32 that counted each page only as
the wrapping sum of its 64-bit words, blind to words swapped within a page)
are refused by number. The checksum guards against damage in transit or on
disk, not against an attacker, who can recompute it: see "Trust" below.

Zero pages travel as an index or a range only. Contiguous pages (RUN) are
read straight into guest RAM once their range has been checked. The reader
trusts nothing: every count, length and index is checked against fixed limits and the local RAM sizes
before anything is allocated or written, and any violation is a StreamError.

Trust: ``-incoming tcp::PORT`` (or ``tcp:0:PORT``) listens on every interface,
as QEMU does, and takes the first connection, so anyone who can reach the port
can feed this VM a stream of their own, with a valid checksum. The reader's
limits, the configuration check and the validation of every state section in
``vmstate.apply`` and the devices' ``restore()`` are therefore what stands
between the network and the host: restore validates everything before it
applies anything. Bind to a specific address (``tcp:127.0.0.1:PORT``) or use
``unix:PATH`` when the network is not trusted.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import xxhash

from kvmpy.memory.ramblock import PAGE_SIZE
from kvmpy.migration import codec
from kvmpy.migration.errors import MigrationError, StreamError

MAGIC = b"KVMPYMIG"
VERSION = 3  # 2 added RUN and ZERORUN; 3 replaced the CRC-32 of page sums with XXH3-64 over every byte
READ_VERSIONS = (VERSION,)
HEADER = struct.Struct("<8sII")
T_CONFIG, T_PAGES, T_ROUND, T_SECTION, T_END, T_RUN, T_ZERORUN = 1, 2, 3, 4, 5, 6, 7
RECORD_NAMES = {T_CONFIG: "config", T_PAGES: "pages", T_ROUND: "round", T_SECTION: "section", T_END: "end",
                T_RUN: "run", T_ZERORUN: "zero run"}
PAGES_HDR = struct.Struct("<BHII")
RUN_HDR = struct.Struct("<BHII")
RUN_BODY = struct.Struct("<HII")
U8, U16, U32, U64 = struct.Struct("<B"), struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")

MAX_CONFIG = 1 << 20
MAX_SECTION = 16 << 20
MAX_NAME = 64
MAX_NORMAL = 1024  # pages of data per record (4 MiB)
MAX_ZERO = 1 << 16
MAX_SECTIONS = 4096
HASH_STEP = 64 << 10  # page data is hashed on arrival in steps of at least this many bytes

# Handshake on two-way transports once END is verified: the destination says ACK
# (state complete and applied, its disk images taken over, not running), then the source says
# GO (it has given up the VM). NAK: the stream was bad; NAK_BLOCK: the stream was good but the
# destination could not take the disk images over (someone else holds them).
ACK, NAK, GO = b"ACK1", b"NAK1", b"GO!!"
NAK_BLOCK = b"NAKB"


class Channel(Protocol):
    duplex: bool

    def write(self, data: Any) -> None: ...
    def readinto(self, buf: memoryview) -> int: ...
    def close(self) -> None: ...


def read_reply(channel: Channel, n: int = len(ACK)) -> bytes:
    """Up to ``n`` bytes of a handshake reply; fewer if the peer hung up. OSError propagates."""
    buf = bytearray(n)
    got = 0
    while got < n:
        k = channel.readinto(memoryview(buf)[got:])
        if not k:
            break
        got += k
    return bytes(buf[:got])


@dataclass
class RateLimiter:
    """Caps throughput at ``rate`` bytes/s in 100 ms windows (QEMU's scheme); 0 means unlimited."""

    rate: int = 0
    window: float = 0.1
    _start: float = field(default_factory=time.monotonic)
    _used: int = 0

    def consume(self, n: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        if now - self._start >= self.window:
            self._start, self._used = now, 0
        self._used += n
        budget = self.rate * self.window
        if self._used > budget:
            # Sleep off the excess: the time those bytes are worth at the rate.
            delay = self._start + self._used / self.rate - now
            if delay > 0:
                time.sleep(delay)
            self._start, self._used = time.monotonic(), 0


class StreamWriter:
    """Writes records; small ones are gathered and go out with the next page data (or at END)."""

    FLUSH = 64 << 10

    def __init__(self, channel: Channel, limiter: RateLimiter | None = None) -> None:
        self.channel = channel
        self.limiter = limiter or RateLimiter()
        self.hash = xxhash.xxh3_64()
        self.bytes = 0
        self.busy = 0.0  # seconds spent handing data to the channel (and in the rate limiter)
        self._pending = bytearray()

    def _put(self, *parts: Any) -> None:
        for p in parts:
            if isinstance(p, np.ndarray):
                p = p.tobytes()  # small index arrays; ``bytearray += ndarray`` would broadcast
            n = len(p)
            if not n:
                continue
            self.hash.update(p)
            self._pending += p
            self.bytes += n
        if len(self._pending) >= self.FLUSH:
            self.flush()

    def _put_data(self, data: np.ndarray) -> None:
        """Page data (C-contiguous): hashed, then handed to the channel without a copy."""
        if not data.nbytes:
            return
        self.hash.update(data)
        self.flush()
        t = time.monotonic()
        self.limiter.consume(data.nbytes)
        self.channel.write(data)
        self.busy += time.monotonic() - t
        self.bytes += data.nbytes

    def flush(self) -> None:
        if self._pending:
            self.limiter.consume(len(self._pending))
            self.channel.write(bytes(self._pending))
            self._pending.clear()

    def header(self, config: dict[str, Any]) -> None:
        body = codec.encode(config)
        self._put(HEADER.pack(MAGIC, VERSION, 0), U8.pack(T_CONFIG), U32.pack(len(body)), body)

    def pages(self, block: int, zero: np.ndarray, normal: np.ndarray, data: np.ndarray) -> None:
        """``zero``/``normal`` are uint32 page indices; ``data`` holds the normal pages in order."""
        assert len(zero) <= MAX_ZERO and len(normal) <= MAX_NORMAL and data.nbytes == len(normal) * PAGE_SIZE
        self._put(PAGES_HDR.pack(T_PAGES, block, len(zero), len(normal)),
                  zero.astype("<u4", copy=False), normal.astype("<u4", copy=False))
        self._put_data(data)

    def run(self, block: int, first: int, data: np.ndarray) -> None:
        """Pages ``first``.. of a block; ``data`` is C-contiguous, whole pages, at most MAX_NORMAL of them."""
        count = data.nbytes // PAGE_SIZE
        assert 0 < count <= MAX_NORMAL and data.nbytes == count * PAGE_SIZE and data.flags.c_contiguous
        self._put(RUN_HDR.pack(T_RUN, block, first, count))
        self._put_data(data)

    def zero_run(self, block: int, first: int, count: int) -> None:
        self._put(RUN_HDR.pack(T_ZERORUN, block, first, count))

    def round(self, n: int) -> None:
        self._put(U8.pack(T_ROUND), U32.pack(n))

    def section(self, name: str, state: Any) -> None:
        body = codec.encode(state)
        raw = name.encode()
        if len(raw) > MAX_NAME or len(body) > MAX_SECTION:
            raise MigrationError(f"state section {name!r} is too large to send ({len(body)} bytes)")
        self._put(U8.pack(T_SECTION), U16.pack(len(raw)), raw, U32.pack(len(body)), body)

    def end(self) -> None:
        self._put(U8.pack(T_END))
        self._pending += U64.pack(self.hash.intdigest())
        self.bytes += U64.size
        self.flush()


@dataclass
class RunRecord:
    """A RUN (already written into the RAM view the reader was given) or a ZERORUN."""

    block: int
    first: int
    count: int


@dataclass
class PagesRecord:
    block: int
    zero: np.ndarray
    normal: np.ndarray
    data: np.ndarray  # (nnormal, PAGE_SIZE) uint8, valid until the next record is read


class StreamReader:
    """Reads and checks records; ``block_pages`` (set after the config check) bounds page indices."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.hash = xxhash.xxh3_64()
        self.bytes = 0
        self.block_pages: list[int] = []
        self.block_views: list[memoryview] = []  # writable bytes of each RAM block: RUN data lands here
        self._data = bytearray(MAX_NORMAL * PAGE_SIZE)
        self._sections = 0

    def _take(self, n: int, what: str, buf: bytearray | memoryview | None = None,
              hashed: bool = True) -> memoryview:
        """Exactly ``n`` bytes; unless ``hashed`` is False they go into the checksum as they arrive
        (in steps of HASH_STEP, while they are still in the cache)."""
        out = memoryview(buf if buf is not None else bytearray(n))[:n]
        got = done = 0
        while got < n:
            try:
                k = self.channel.readinto(out[got:])
            except OSError as exc:
                raise StreamError(f"the stream broke while reading {what}: {exc.strerror or exc}") from None
            if not k:
                raise StreamError(f"the stream is truncated: it ended inside {what} "
                                  f"after {self.bytes + got} bytes")
            got += k
            if hashed and (got - done >= HASH_STEP or got == n):
                self.hash.update(out[done:got])
                done = got
        self.bytes += n
        return out

    def header(self) -> dict[str, Any]:
        magic, version, flags = HEADER.unpack(self._take(HEADER.size, "the header"))
        if magic != MAGIC:
            raise StreamError("not a kvmpy migration stream (bad magic number)")
        if version not in READ_VERSIONS:
            why = (": its page checksum cannot see data reordered within a page; save it again with this kvmpy"
                   if version < VERSION else "")
            raise StreamError(f"migration stream version {version} is not supported (this kvmpy reads version "
                              f"{VERSION} only){why}")
        if flags:
            raise StreamError(f"unknown stream flags {flags:#x}")
        (kind,) = U8.unpack(self._take(1, "the first record"))
        if kind != T_CONFIG:
            raise StreamError("the stream does not start with a configuration record")
        (n,) = U32.unpack(self._take(4, "the configuration length"))
        if n > MAX_CONFIG:
            raise StreamError(f"configuration record of {n} bytes exceeds the {MAX_CONFIG}-byte limit")
        config = codec.decode(self._take(n, "the configuration"), "config")
        if not isinstance(config, dict):
            raise StreamError("the configuration record is not an object")
        return config

    def next(self) -> tuple[int, Any]:
        """One record: (T_PAGES, PagesRecord), (T_RUN or T_ZERORUN, RunRecord), (T_ROUND, n),
        (T_SECTION, (name, state)) or (T_END, None)."""
        (kind,) = U8.unpack(self._take(1, "a record type"))
        if kind == T_PAGES:
            block, nzero, nnormal = struct.unpack("<HII", self._take(10, "a pages header"))
            if block >= len(self.block_pages):
                raise StreamError(f"pages record for RAM block {block}, which does not exist")
            if nzero > MAX_ZERO or nnormal > MAX_NORMAL:
                raise StreamError(f"pages record with {nzero} zero and {nnormal} data pages exceeds the limits")
            idx = np.frombuffer(self._take(4 * (nzero + nnormal), "page indices"), dtype="<u4")
            if len(idx) and int(idx.max()) >= self.block_pages[block]:
                raise StreamError(f"page index {int(idx.max())} is beyond RAM block {block} "
                                  f"({self.block_pages[block]} pages)")
            data = self._take(nnormal * PAGE_SIZE, "page data", self._data)
            arr = np.frombuffer(data, dtype=np.uint8).reshape(nnormal, PAGE_SIZE)
            return kind, PagesRecord(block, idx[:nzero], idx[nzero:], arr)
        if kind in (T_RUN, T_ZERORUN):
            block, first, count = RUN_BODY.unpack(self._take(RUN_BODY.size, "a run header"))
            if block >= len(self.block_pages):
                raise StreamError(f"page run for RAM block {block}, which does not exist")
            if not count or (kind == T_RUN and count > MAX_NORMAL):
                raise StreamError(f"page run of {count} pages exceeds the limits")
            if first + count > self.block_pages[block]:
                raise StreamError(f"page run {first}+{count} is beyond RAM block {block} "
                                  f"({self.block_pages[block]} pages)")
            if kind == T_RUN:
                if block >= len(self.block_views):
                    raise StreamError("page run where no RAM can receive it")
                self._take(count * PAGE_SIZE, "page data",
                           self.block_views[block][first * PAGE_SIZE:(first + count) * PAGE_SIZE])
            return kind, RunRecord(block, first, count)
        if kind == T_ROUND:
            return kind, U32.unpack(self._take(4, "a round marker"))[0]
        if kind == T_SECTION:
            self._sections += 1
            if self._sections > MAX_SECTIONS:
                raise StreamError(f"more than {MAX_SECTIONS} state sections")
            (n,) = U16.unpack(self._take(2, "a section name length"))
            if not 0 < n <= MAX_NAME:
                raise StreamError(f"section name length {n} is out of range")
            try:
                name = bytes(self._take(n, "a section name")).decode("ascii")
            except UnicodeDecodeError:
                raise StreamError("a section name is not ASCII") from None
            (size,) = U32.unpack(self._take(4, f"the length of section {name!r}"))
            if size > MAX_SECTION:
                raise StreamError(f"section {name!r} of {size} bytes exceeds the {MAX_SECTION}-byte limit")
            return kind, (name, codec.decode(self._take(size, f"section {name!r}"), name))
        if kind == T_END:
            expected = self.hash.intdigest()
            (got,) = U64.unpack(self._take(U64.size, "the checksum", hashed=False))
            if got != expected:
                raise StreamError(f"checksum mismatch: the stream says {got:#018x}, its contents give "
                                  f"{expected:#018x} (corrupted in transit or on disk)")
            return kind, None
        raise StreamError(f"unknown record type {kind} at byte {self.bytes - 1}")
