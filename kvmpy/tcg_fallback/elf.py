"""Loading a riscv64 ELF kernel into guest RAM (by physical address, as QEMU does).

Every field of the file is checked against the file size and the RAM window
before use, so a truncated or hostile ELF produces a ``TcgUserError``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from kvmpy.tcg_fallback.errors import TcgUserError

EM_RISCV = 243
PT_LOAD = 1
SHT_SYMTAB = 2
MAX_FILE = 1 << 31
MAX_SYMBOLS = 1 << 20


@dataclass
class ElfImage:
    entry: int
    segments: list[tuple[int, bytes, int]] = field(default_factory=list)   # paddr, data, memsz
    symbols: dict[str, int] = field(default_factory=dict)

    @property
    def low(self) -> int:
        return min(s[0] for s in self.segments)

    @property
    def high(self) -> int:
        return max(s[0] + s[2] for s in self.segments)


def parse_elf(path: Path, wanted_symbols: tuple[str, ...] = ("tohost", "fromhost")) -> ElfImage:
    try:
        size = path.stat().st_size
        if size > MAX_FILE:
            raise TcgUserError(f"{path}: file too large for a kernel ({size} bytes)")
        data = path.read_bytes()
    except OSError as exc:
        raise TcgUserError(f"{path}: cannot read kernel: {exc.strerror or exc}") from exc
    if data[:4] != b"\x7fELF":
        raise TcgUserError(f"{path}: not an ELF file")
    if len(data) < 64:
        raise TcgUserError(f"{path}: truncated ELF header")
    if data[4] != 2 or data[5] != 1:
        raise TcgUserError(f"{path}: not a 64-bit little-endian ELF (riscv64 needs ELFCLASS64/LSB)")
    (e_type, e_machine, _ver, entry, phoff, shoff, _flags, _ehsize, phentsize, phnum,
     shentsize, shnum, _shstrndx) = struct.unpack_from("<HHIQQQIHHHHHH", data, 16)
    if e_machine != EM_RISCV:
        raise TcgUserError(f"{path}: ELF machine {e_machine} is not RISC-V ({EM_RISCV})")
    if e_type != 2:
        raise TcgUserError(f"{path}: ELF type {e_type} is not an executable (ET_EXEC)")
    if phentsize != 56 or phoff + phnum * 56 > len(data):
        raise TcgUserError(f"{path}: program headers lie outside the file")
    img = ElfImage(entry)
    for i in range(phnum):
        p_type, _pf, off, _vaddr, paddr, filesz, memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + 56 * i)
        if p_type != PT_LOAD or memsz == 0:
            continue
        if filesz > memsz or off + filesz > len(data):
            raise TcgUserError(f"{path}: segment {i} has bad sizes (file {filesz}, memory {memsz})")
        img.segments.append((paddr, data[off:off + filesz], memsz))
    if not img.segments:
        raise TcgUserError(f"{path}: no loadable segments")
    img.symbols = _symbols(data, shoff, shentsize, shnum, wanted_symbols)
    return img


def _symbols(data: bytes, shoff: int, shentsize: int, shnum: int,
             wanted: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    if shoff == 0 or shentsize != 64 or shoff + shnum * 64 > len(data):
        return out
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + 64 * i) for i in range(shnum)]
    for sec in sections:
        if sec[1] != SHT_SYMTAB or sec[6] >= shnum:
            continue
        off, size, entsize = sec[4], sec[5], sec[9]
        stroff, strsize = sections[sec[6]][4], sections[sec[6]][5]
        if entsize != 24 or off + size > len(data) or stroff + strsize > len(data):
            continue
        for k in range(min(size // 24, MAX_SYMBOLS)):
            name_off, _info, _other, _shndx, value, _size = struct.unpack_from("<IBBHQQ", data, off + 24 * k)
            if name_off >= strsize:
                continue
            end = data.find(b"\0", stroff + name_off, stroff + strsize)
            name = data[stroff + name_off:end if end >= 0 else stroff + strsize].decode("latin-1")
            if name in wanted and name not in out:
                out[name] = value
    return out


def load_into(img: ElfImage, ram: bytearray, ram_base: int, path: Path) -> None:
    """Copy the segments into RAM; errors name the RAM size that would be needed."""
    for paddr, blob, memsz in img.segments:
        off = paddr - ram_base
        if off < 0 or off + memsz > len(ram):
            need = (paddr + memsz - ram_base + (1 << 20) - 1) >> 20
            if off < 0:
                raise TcgUserError(
                    f"{path}: segment at {paddr:#x} is below RAM (RAM starts at {ram_base:#x})")
            raise TcgUserError(
                f"{path}: segment at {paddr:#x}+{memsz:#x} does not fit in "
                f"{len(ram) >> 20} MiB of RAM; use -m {need}M or more")
        ram[off:off + len(blob)] = blob
        ram[off + len(blob):off + memsz] = bytes(memsz - len(blob))
