"""AML (ACPI Machine Language) byte encoders: the terms kvmpy's DSDT is made of.

Each function returns the encoded bytes of one term, so a table is built by
nesting calls: ``scope("\\\\_SB", device("PCI0", name("_HID", eisaid("PNP0A03"))))``.
Encodings (opcodes, PkgLength, NameString prefixes, resource descriptors) are
facts from the ACPI specification, chapters 19.6 and 20; only the terms kvmpy
uses are here.
"""

from __future__ import annotations

import struct

ZERO_OP, ONE_OP, ONES_OP = 0x00, 0x01, 0xFF
BYTE_PREFIX, WORD_PREFIX, DWORD_PREFIX, STRING_PREFIX, QWORD_PREFIX = 0x0A, 0x0B, 0x0C, 0x0D, 0x0E
NAME_OP, SCOPE_OP, METHOD_OP, BUFFER_OP, PACKAGE_OP = 0x08, 0x10, 0x14, 0x11, 0x12
EXT_OP, DEVICE_OP, OPREGION_OP, FIELD_OP = 0x5B, 0x82, 0x80, 0x81
LOCAL0, ARG0 = 0x60, 0x68
STORE_OP, AND_OP, OR_OP, LLESS_OP = 0x70, 0x7B, 0x7D, 0x95
IF_OP, ELSE_OP, RETURN_OP, CREATE_DWORD_FIELD_OP = 0xA0, 0xA1, 0xA4, 0x8A
DUAL_NAME, MULTI_NAME, ROOT_CHAR, PARENT_CHAR = 0x2E, 0x2F, 0x5C, 0x5E

# Operation region spaces and field flags
SYSTEM_IO, PCI_CONFIG = 0x01, 0x02
BYTE_ACC, NO_LOCK, PRESERVE = 0x01, 0x00, 0x00


def pkg_length(content_len: int) -> bytes:
    """The PkgLength of a package whose content (after the PkgLength) is ``content_len`` bytes."""
    for n in range(1, 5):
        total = content_len + n
        if n == 1 and total < 0x40:
            return bytes((total,))
        if n > 1 and total < 1 << (4 + 8 * (n - 1)):
            lead = ((n - 1) << 6) | (total & 0x0F)
            return bytes((lead,)) + (total >> 4).to_bytes(n - 1, "little")
    raise ValueError(f"AML package of {content_len} bytes is too long")


def field_length(bits: int) -> bytes:
    """A field unit's width: PkgLength encoding of the value itself (not counting its own bytes)."""
    if bits < 0x40:
        return bytes((bits,))
    for n in range(2, 5):
        if bits < 1 << (4 + 8 * (n - 1)):
            return bytes((((n - 1) << 6) | (bits & 0x0F),)) + (bits >> 4).to_bytes(n - 1, "little")
    raise ValueError("field too wide")


def _seg(s: str) -> bytes:
    if not 1 <= len(s) <= 4 or not (s[0].isupper() or s[0] == "_") or not all(
            c.isupper() or c.isdigit() or c == "_" for c in s):
        raise ValueError(f"bad AML name segment {s!r}")
    return s.ljust(4, "_").encode()


def name_string(path: str) -> bytes:
    """``\\_SB.PCI0``, ``^PX13.P13C``, ``PRQ0``: root/parent prefixes, then one, two or more segments."""
    prefix = b""
    while path.startswith(("\\", "^")):
        prefix += bytes((ROOT_CHAR if path[0] == "\\" else PARENT_CHAR,))
        path = path[1:]
    segs = [_seg(s) for s in path.split(".")] if path else []
    if not segs:
        return prefix + b"\x00"
    if len(segs) == 1:
        return prefix + segs[0]
    if len(segs) == 2:
        return prefix + bytes((DUAL_NAME,)) + b"".join(segs)
    return prefix + bytes((MULTI_NAME, len(segs))) + b"".join(segs)


def integer(v: int) -> bytes:
    if v < 0 or v >= 1 << 64:
        raise ValueError(f"AML integer {v} out of range")
    if v == 0:
        return bytes((ZERO_OP,))
    if v == 1:
        return bytes((ONE_OP,))
    for prefix, fmt, limit in ((BYTE_PREFIX, "<B", 1 << 8), (WORD_PREFIX, "<H", 1 << 16),
                               (DWORD_PREFIX, "<I", 1 << 32), (QWORD_PREFIX, "<Q", 1 << 64)):
        if v < limit:
            return bytes((prefix,)) + struct.pack(fmt, v)
    raise AssertionError


def string(s: str) -> bytes:
    return bytes((STRING_PREFIX,)) + s.encode("ascii") + b"\x00"


def eisaid(pnp: str) -> bytes:
    """A compressed EISA id such as PNP0A03, as a DWord integer."""
    if len(pnp) != 7:
        raise ValueError(f"bad EISA id {pnp!r}")
    letters = [(ord(c) - 0x40) & 0x1F for c in pnp[:3]]
    vendor = (letters[0] << 10) | (letters[1] << 5) | letters[2]
    product = int(pnp[3:], 16)
    value = struct.unpack("<I", struct.pack(">HH", vendor, product))[0]
    return bytes((DWORD_PREFIX,)) + struct.pack("<I", value)


def name(path: str, obj: bytes) -> bytes:
    return bytes((NAME_OP,)) + name_string(path) + obj


def _pkg(op: bytes, body: bytes) -> bytes:
    return op + pkg_length(len(body)) + body


def scope(path: str, *terms: bytes) -> bytes:
    return _pkg(bytes((SCOPE_OP,)), name_string(path) + b"".join(terms))


def device(path: str, *terms: bytes) -> bytes:
    return _pkg(bytes((EXT_OP, DEVICE_OP)), name_string(path) + b"".join(terms))


def method(path: str, nargs: int, *terms: bytes, serialized: bool = False) -> bytes:
    flags = (nargs & 7) | (0x08 if serialized else 0)
    return _pkg(bytes((METHOD_OP,)), name_string(path) + bytes((flags,)) + b"".join(terms))


def buffer(data: bytes) -> bytes:
    return _pkg(bytes((BUFFER_OP,)), integer(len(data)) + data)


def package(*elements: bytes) -> bytes:
    if len(elements) > 255:
        raise ValueError("a Package holds at most 255 elements")
    return _pkg(bytes((PACKAGE_OP,)), bytes((len(elements),)) + b"".join(elements))


def arg(n: int) -> bytes:
    return bytes((ARG0 + n,))


def local(n: int) -> bytes:
    return bytes((LOCAL0 + n,))


def ret(obj: bytes) -> bytes:
    return bytes((RETURN_OP,)) + obj


def store(src: bytes, dst: bytes) -> bytes:
    return bytes((STORE_OP,)) + src + dst


def and_(a: bytes, b: bytes, target: bytes = b"\x00") -> bytes:
    return bytes((AND_OP,)) + a + b + target


def or_(a: bytes, b: bytes, target: bytes = b"\x00") -> bytes:
    return bytes((OR_OP,)) + a + b + target


def lless(a: bytes, b: bytes) -> bytes:
    return bytes((LLESS_OP,)) + a + b


def if_(predicate: bytes, *terms: bytes) -> bytes:
    return _pkg(bytes((IF_OP,)), predicate + b"".join(terms))


def create_dword_field(source: bytes, index: bytes, field_name: str) -> bytes:
    return bytes((CREATE_DWORD_FIELD_OP,)) + source + index + name_string(field_name)


def call(path: str, *args: bytes) -> bytes:
    """A method invocation (the callee's argument count is known from its definition)."""
    return name_string(path) + b"".join(args)


def operation_region(path: str, space: int, offset: int, length: int) -> bytes:
    return bytes((EXT_OP, OPREGION_OP)) + name_string(path) + bytes((space,)) + integer(offset) + integer(length)


def field(region: str, units: list[tuple[str, int]], flags: int = BYTE_ACC | NO_LOCK | PRESERVE) -> bytes:
    """A Field over ``region``: named units of ``bits`` bits each (an empty name reserves the bits)."""
    body = name_string(region) + bytes((flags,))
    for unit, bits in units:
        body += (_seg(unit) if unit else b"\x00") + field_length(bits)
    return _pkg(bytes((EXT_OP, FIELD_OP)), body)


# ---- resource templates (ACPI 6.4 §6.4) --------------------------------------------------
PRODUCER_FIXED = 0x0C  # resource producer, positive decode, min and max fixed
RES_MEMORY, RES_IO, RES_BUS = 0, 1, 2
MEM_RW, MEM_CACHEABLE = 0x01, 0x02
IO_ENTIRE_RANGE = 0x03


def resource_template(*descriptors: bytes) -> bytes:
    """A Buffer of descriptors closed by an End Tag (checksum 0: "treat as summing to zero")."""
    return buffer(b"".join(descriptors) + b"\x79\x00")


def io_port(base: int, length: int, align: int = 1) -> bytes:
    """IO(Decode16, base, base, align, length)."""
    return struct.pack("<BBHHBB", 0x47, 0x01, base, base, align, length)


def irq_no_flags(irqs: list[int]) -> bytes:
    """IRQNoFlags () {irqs}: the short IRQ descriptor (ISA IRQs 0-15, edge, active high, exclusive)."""
    mask = 0
    for irq in irqs:
        if not 0 <= irq < 16:
            raise ValueError(f"ISA IRQ {irq} is not 0-15")
        mask |= 1 << irq
    return struct.pack("<BH", 0x22, mask)


def interrupt(irqs: list[int], level: bool = True, active_high: bool = True, shared: bool = True) -> bytes:
    """Interrupt(ResourceConsumer, …) {irqs}: the extended interrupt descriptor."""
    flags = 0x01 | (0 if level else 0x02) | (0 if active_high else 0x04) | (0x08 if shared else 0)
    return struct.pack("<BHBB", 0x89, 2 + 4 * len(irqs), flags, len(irqs)) + b"".join(
        struct.pack("<I", i) for i in irqs)


def word_space(kind: int, lo: int, hi: int, type_flags: int = 0) -> bytes:
    """WordBusNumber / WordIO: producer, MinFixed, MaxFixed, PosDecode, no translation."""
    return struct.pack("<BHBBBHHHHH", 0x88, 13, kind, PRODUCER_FIXED, type_flags, 0, lo, hi, 0, hi - lo + 1)


def dword_memory(lo: int, hi: int, cacheable: bool) -> bytes:
    flags = MEM_RW | (MEM_CACHEABLE if cacheable else 0)
    return struct.pack("<BHBBBIIIII", 0x87, 23, RES_MEMORY, PRODUCER_FIXED, flags, 0, lo, hi, 0, hi - lo + 1)


def qword_memory(lo: int, hi: int, cacheable: bool) -> bytes:
    flags = MEM_RW | (MEM_CACHEABLE if cacheable else 0)
    return struct.pack("<BHBBBQQQQQ", 0x8A, 43, RES_MEMORY, PRODUCER_FIXED, flags, 0, lo, hi, 0, hi - lo + 1)


# ---- control flow, synchronisation and arithmetic (ACPI 6.4 §19.6) ------------------------
MUTEX_OP, ACQUIRE_OP, RELEASE_OP = 0x01, 0x23, 0x27  # after EXT_OP
WHILE_OP, NOTIFY_OP, LEQUAL_OP = 0xA2, 0x86, 0x93
ADD_OP, SUBTRACT_OP, TO_INTEGER_OP = 0x72, 0x74, 0x99
DWORD_ACC, WRITE_AS_ZEROS = 0x03, 0x40  # field flags: access type (bits 0-3), update rule (bits 5-6)


def mutex(path: str, sync_level: int = 0) -> bytes:
    return bytes((EXT_OP, MUTEX_OP)) + name_string(path) + bytes((sync_level & 0x0F,))


def acquire(path: str, timeout: int = 0xFFFF) -> bytes:
    return bytes((EXT_OP, ACQUIRE_OP)) + name_string(path) + struct.pack("<H", timeout)


def release(path: str) -> bytes:
    return bytes((EXT_OP, RELEASE_OP)) + name_string(path)


def while_(predicate: bytes, *terms: bytes) -> bytes:
    return _pkg(bytes((WHILE_OP,)), predicate + b"".join(terms))


def else_(*terms: bytes) -> bytes:
    return _pkg(bytes((ELSE_OP,)), b"".join(terms))


def lequal(a: bytes, b: bytes) -> bytes:
    return bytes((LEQUAL_OP,)) + a + b


def add(a: bytes, b: bytes, target: bytes = b"\x00") -> bytes:
    return bytes((ADD_OP,)) + a + b + target


def subtract(a: bytes, b: bytes, target: bytes = b"\x00") -> bytes:
    return bytes((SUBTRACT_OP,)) + a + b + target


def to_integer(operand: bytes, target: bytes = b"\x00") -> bytes:
    return bytes((TO_INTEGER_OP,)) + operand + target


def notify(obj: bytes, value: bytes) -> bytes:
    return bytes((NOTIFY_OP,)) + obj + value
