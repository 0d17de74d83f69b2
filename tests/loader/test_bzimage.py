"""bzImage parsing and host-side payload decompression (LZ4 legacy, xz, gzip, bzip2), with hostile inputs."""

import bz2
import gzip
import lzma
import random
import struct

import pytest

from kvmpy.loader.bzimage import compression_of, decompress_payload, parse_bzimage
from kvmpy.loader.elf import parse_elf64
from kvmpy.loader.errors import LoaderError

from loader_helpers import MiB, lz4_legacy, tiny_bzimage, tiny_elf


def _data(n: int) -> bytes:
    # Compressible but not trivial: a numbered 4 KiB pattern.
    page = random.Random(1).randbytes(4000)
    return b"".join(struct.pack("<Q", i) + page + b"\0" * 88 for i in range(n // 4096))


@pytest.mark.parametrize("kind,pack", [
    ("lz4", lz4_legacy),
    ("xz", lambda d: lzma.compress(d, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32) + struct.pack("<I", len(d))),
    ("gzip", lambda d: gzip.compress(d)),
    ("bzip2", lambda d: bz2.compress(d) + struct.pack("<I", len(d))),
])
def test_decompress_formats(kind, pack):
    data = _data(9 * MiB if kind == "lz4" else 256 << 10)  # LZ4: two legacy blocks
    payload = pack(data)
    assert compression_of(payload) == kind
    assert decompress_payload(payload) == data


def test_decompress_is_bounded():
    payload = lz4_legacy(bytes(9 * MiB))
    with pytest.raises(LoaderError, match="size limit"):
        decompress_payload(payload, limit=MiB)
    with pytest.raises(LoaderError, match="size limit"):
        decompress_payload(gzip.compress(bytes(2 * MiB)), limit=MiB)


@pytest.mark.parametrize("payload", [
    b"\x02\x21\x4c\x18" + struct.pack("<I", 100) + b"\xff" * 100,  # corrupt LZ4 block
    b"\x02\x21\x4c\x18" + struct.pack("<I", 1 << 30) + b"\x00" * 10,  # block runs past the end
    b"\x1f\x8b" + b"\x00" * 30,  # broken gzip
    b"\xfd7zXZ\x00" + b"\x00" * 30,  # broken xz
    b"ABCD" * 8,  # unknown
])
def test_corrupt_payloads_give_loader_errors(payload):
    with pytest.raises(LoaderError):
        decompress_payload(payload)


@pytest.mark.parametrize("kind,pack", [
    ("xz", lambda d: lzma.compress(d, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)),
    ("lzma", lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE)),
    ("gzip", gzip.compress),
    ("bzip2", bz2.compress),
])
def test_truncated_streams_are_refused_not_returned_short(kind, pack):
    # A cut-off payload must never pass for a (shorter) kernel.
    whole = pack(_data(256 << 10))
    assert compression_of(whole) == kind
    with pytest.raises(LoaderError, match="truncated|corrupt"):
        decompress_payload(whole[:len(whole) // 2])


def test_payload_roundtrip_through_bzimage():
    elf = tiny_elf()
    bz = parse_bzimage(tiny_bzimage(lz4_legacy(elf)))
    assert bz.header.version == 0x20F and bz.header.cmdline_size == 2047
    assert bz.header.kernel_offset == 5 * 512
    image = parse_elf64(decompress_payload(bz.payload()))
    assert image.pvh_entry == 0x1000123 and image.low == 0x1000000


@pytest.mark.parametrize("mutate,match", [
    (lambda b: b[:0x100], "no HdrS"),
    (lambda b: b[:0x202] + b"XXXX" + b[0x206:], "no HdrS"),
    (lambda b: b[:0x206] + struct.pack("<H", 0x204) + b[0x208:], "too old"),
    (lambda b: b[:0x1FE] + b"\0\0" + b[0x200:], "0xAA55"),
    (lambda b: b[:0x1F1] + b"\xff" + b[0x1F2:], "truncated"),
])
def test_bad_setup_headers(mutate, match):
    with pytest.raises(LoaderError, match=match):
        parse_bzimage(mutate(tiny_bzimage(b"x" * 64)))


def test_payload_outside_file():
    img = bytearray(tiny_bzimage(b"x" * 64))
    struct.pack_into("<I", img, 0x24C, 1 << 30)
    with pytest.raises(LoaderError, match="outside the file"):
        parse_bzimage(bytes(img)).payload()


def test_elf_without_pvh_note_and_bad_elves():
    assert parse_elf64(tiny_elf(pvh_entry=None)).pvh_entry is None
    with pytest.raises(LoaderError):
        parse_elf64(b"\x7fELF\x01\x01" + b"\0" * 60)  # ELF32
    bad = bytearray(tiny_elf())
    struct.pack_into("<Q", bad, 64 + 8, 1 << 40)  # p_offset far past the end
    with pytest.raises(LoaderError, match="outside the file"):
        parse_elf64(bytes(bad))
