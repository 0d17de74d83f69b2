"""Minimal kernel modules for the initramfs tests: an ELF64 relocatable with a .modinfo section."""

import struct


def fake_module(name: str, depends: str) -> bytes:
    """What the builder reads from a module: an ELF64 header, sections, and ``.modinfo`` with depends=."""
    modinfo = f"name={name}\0depends={depends}\0".encode()
    shstr = b"\0.modinfo\0.shstrtab\0"
    data_off = 64
    shstr_off = data_off + len(modinfo)
    shoff = (shstr_off + len(shstr) + 7) & ~7
    hdr = bytearray(64)
    hdr[:16] = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    struct.pack_into("<HHIQQQIHHHHHH", hdr, 16, 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2)
    body = bytes(hdr) + modinfo + shstr
    body += b"\0" * (shoff - len(body))
    sh = bytes(64)
    sh += struct.pack("<IIQQQQIIQQ", 1, 1, 0, 0, data_off, len(modinfo), 0, 0, 1, 0)
    sh += struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, shstr_off, len(shstr), 0, 0, 1, 0)
    return body + sh
