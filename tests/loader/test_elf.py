"""The one ELF reader: real ELF32/ELF64 files from three toolchains, symbols against nm, and hostile files.

Oracles: binutils' ``nm`` for symbols and ``readelf`` facts baked into the
files themselves (a host binary's GNU build-id note, whose hex ``file`` prints).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmpy.loader.elf import (EM_386, EM_RISCV, EM_X86_64, ET_EXEC, PT_LOAD, ElfImage, parse_elf, parse_elf64,
                              read_elf)
from kvmpy.loader.errors import LoaderError
from tests.guests.build import build_guest as build_x86
from tests.guests.riscv.oracle import guest as build_riscv

from loader_helpers import tiny_elf

HOST_BINARY = Path("/bin/true")


def nm_symbols(path: Path, nm: str) -> dict[str, int]:
    """Defined symbols as binutils' nm reports them (the first definition of each name)."""
    if shutil.which(nm) is None:
        pytest.skip(f"{nm} not installed")
    out = subprocess.run([nm, "--defined-only", "-P", str(path)], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    syms: dict[str, int] = {}
    seen: set[str] = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[1] not in ("a", "A", "N", "n"):      # no absolute/debug entries
            if fields[0] in seen:
                syms.pop(fields[0], None)        # a name defined twice (two static symbols): ambiguous
            else:
                syms[fields[0]] = int(fields[2], 16)
            seen.add(fields[0])
    return syms


@pytest.fixture(scope="module")
def riscv_elf() -> Path:
    return build_riscv("hello")


def test_riscv64_program(riscv_elf):
    img = read_elf(riscv_elf, machine=EM_RISCV, elf_class=64, exec_only=True)
    assert (img.elf_class, img.machine, img.type) == (64, EM_RISCV, ET_EXEC)
    assert img.entry == img.low == 0x80000000
    data = riscv_elf.read_bytes()
    for seg in img.segments:
        assert bytes(img.segment_bytes(seg)) == data[seg.offset:seg.offset + seg.filesz]
    want = nm_symbols(riscv_elf, "riscv64-linux-gnu-nm")
    assert img.symbols["_start"] == img.entry and "__bss_start" in img.symbols
    assert {k: img.symbols[k] for k in want if k in img.symbols} == {k: v for k, v in want.items()
                                                                      if k in img.symbols}
    assert set(want) - set(img.symbols) <= {n for n in want if n.startswith("$")}


def test_elf32_multiboot_guest():
    path = build_x86("hello")
    img = read_elf(path, machine=EM_386, elf_class=32)
    assert img.elf_class == 32 and img.low == 0x100000
    assert any(s.paddr <= img.entry < s.paddr + s.memsz for s in img.segments)
    want = nm_symbols(path, "nm")
    common = set(want) & set(img.symbols)
    assert common and all(img.symbols[n] == want[n] for n in common)


def test_host_binary_notes_and_stripped_symbols():
    if not HOST_BINARY.exists():
        pytest.skip(f"{HOST_BINARY} missing")
    img = read_elf(HOST_BINARY, machine=EM_X86_64)
    build_id = [n for n in img.notes if n.name == b"GNU" and n.type == 3]     # NT_GNU_BUILD_ID
    assert len(build_id) == 1 and len(build_id[0].desc) == 20
    out = subprocess.run(["file", "-L", str(HOST_BINARY)], capture_output=True, text=True).stdout
    if "BuildID[sha1]=" in out:
        assert build_id[0].desc.hex() in out
    assert img.symbols == {}            # stripped: no .symtab
    assert img.pvh_entry is None


def test_pvh_note_and_the_elf64_entry_point():
    img = parse_elf64(tiny_elf(pvh_entry=0x1000123))
    assert img.pvh_entry == 0x1000123 and img.machine == EM_X86_64
    with pytest.raises(LoaderError, match="multiboot header"):
        parse_elf64(read_elf(build_x86("hello")).data)


@pytest.mark.parametrize("patch,words", [
    (lambda d: b"MZ" + d[2:], "not an ELF"),
    (lambda d: d[:10], "truncated"),
    (lambda d: d[:4] + b"\x03" + d[5:], "class"),
    (lambda d: d[:5] + b"\x02" + d[6:], "little-endian"),
    (lambda d: d[:4] + b"\x01" + d[5:], "32-bit ELF file, but a 64-bit"),
    (lambda d: d[:18] + struct.pack("<H", 62) + d[20:], "not RISC-V"),
    (lambda d: d[:16] + struct.pack("<H", 3) + d[18:], "not an executable"),
    (lambda d: d[:56] + struct.pack("<H", 0xFFFF) + d[58:], "program header table lies outside"),
    (lambda d: d[:56] + struct.pack("<H", 0) + d[58:], "no program headers"),
    (lambda d: d[:54] + struct.pack("<H", 8) + d[56:], "program header table"),
    (lambda d: d[:40] + struct.pack("<Q", 1 << 40) + d[48:], "section header table lies outside"),
    (lambda d: d[:200], "outside the file"),
])
def test_hostile_headers(riscv_elf, patch, words):
    with pytest.raises(LoaderError, match=words):
        parse_elf(patch(riscv_elf.read_bytes()), "prog", machine=EM_RISCV, elf_class=64, exec_only=True)


def _phdrs(data: bytes) -> list[int]:
    phoff, = struct.unpack_from("<Q", data, 32)
    phnum, = struct.unpack_from("<H", data, 56)
    return [phoff + 56 * i for i in range(phnum) if struct.unpack_from("<I", data, phoff + 56 * i)[0] == PT_LOAD]


@pytest.mark.parametrize("field,value,words", [
    (8, 1 << 62, "outside the file"),                 # p_offset
    (32, 1 << 62, "outside the file"),                # p_filesz
    (40, 1, "more file bytes"),                       # p_memsz below p_filesz
    (24, (1 << 64) - 0x1000, "address space"),        # p_paddr near the top: end wraps
])
def test_hostile_segments(riscv_elf, field, value, words):
    data = bytearray(riscv_elf.read_bytes())
    struct.pack_into("<Q", data, _phdrs(data)[0] + field, value)
    with pytest.raises(LoaderError, match=words):
        parse_elf(bytes(data), "prog")


def test_overlapping_segments(tmp_path):
    data = bytearray(tiny_elf(pvh_entry=None))
    ph = bytes(data[64:120])
    # A second PT_LOAD at the same physical address: replace the header count and append it.
    body = bytes(data[64 + 56:])
    out = bytearray(data[:64]) + ph + ph + body
    struct.pack_into("<H", out, 56, 2)
    for i in range(2):
        off, = struct.unpack_from("<Q", out, 64 + 56 * i + 8)
        struct.pack_into("<Q", out, 64 + 56 * i + 8, off + 56)
    with pytest.raises(LoaderError, match="overlap"):
        parse_elf(bytes(out))


def test_corrupt_symbol_table_fails_only_when_symbols_are_read(riscv_elf):
    data = bytearray(riscv_elf.read_bytes())
    img = parse_elf(bytes(data))
    symtab = next(i for i, s in enumerate(img.sections) if s.type == 2)
    shoff, = struct.unpack_from("<Q", data, 40)
    struct.pack_into("<Q", data, shoff + 64 * symtab + 24, len(data))       # sh_offset past the end
    bad = parse_elf(bytes(data), "prog")
    with pytest.raises(LoaderError, match="symbol table"):
        _ = bad.symbols
    struct.pack_into("<Q", data, shoff + 64 * symtab + 24, img.sections[symtab].offset)
    struct.pack_into("<I", data, shoff + 64 * symtab + 40, 0)               # sh_link -> section 0
    with pytest.raises(LoaderError, match="string table"):
        _ = parse_elf(bytes(data), "prog").symbols


def _check(img: ElfImage, data: bytes) -> None:
    """What a successful parse promises, whatever the input."""
    for seg in img.segments:
        assert 0 <= seg.offset and seg.offset + seg.filesz <= len(data) and seg.filesz <= seg.memsz
    ordered = sorted(img.segments, key=lambda s: s.paddr)
    assert all(a.paddr + a.memsz <= b.paddr for a, b in zip(ordered, ordered[1:]))
    try:
        assert all(isinstance(k, str) for k in img.symbols)
    except LoaderError:
        pass


@pytest.fixture(scope="module")
def seeds(riscv_elf) -> list[bytes]:
    return [riscv_elf.read_bytes(), build_x86("hello").read_bytes(), tiny_elf()]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzzed_files_parse_or_give_a_loader_error(seeds, data):
    """Random overwrites and truncations of real ELF32 and ELF64 files never crash the reader."""
    blob = bytearray(data.draw(st.sampled_from(seeds)))
    for _ in range(data.draw(st.integers(0, 8))):
        pos = data.draw(st.integers(0, min(len(blob) - 1, 400)))     # mostly the headers and tables
        if data.draw(st.booleans()):
            pos = data.draw(st.integers(0, len(blob) - 1))
        chunk = data.draw(st.binary(min_size=1, max_size=8))
        blob[pos:pos + len(chunk)] = chunk
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(blob))))
    if cut is not None:
        del blob[cut:]
    try:
        img = parse_elf(bytes(blob), "fuzz")
    except LoaderError:
        return
    _check(img, bytes(blob))
