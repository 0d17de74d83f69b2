"""fw_cfg: the port interface, the file directory, and DMA against a real GuestMemory (plus a fuzz)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kvmpy.devices.device import DeviceStateError
from kvmpy.devices.fw_cfg import (DMA_CTL_ERROR, DMA_CTL_READ, DMA_CTL_SELECT, DMA_CTL_SKIP, DMA_CTL_WRITE,
                                  DMA_HIGH, DMA_LOW, DATA, FW_CFG_FILE_DIR, FW_CFG_ID, FW_CFG_NB_CPUS,
                                  FW_CFG_SIGNATURE, SELECTOR, FwCfg)
from kvmpy.memory.address_space import AddressSpace
from kvmpy.memory.guest_memory import GuestMemory
from kvmpy.memory.ramblock import RAMBlock
from kvmpy.memory.region import MemoryRegion

RAM = 1 << 20
HOLE = 0x80000  # [HOLE, HOLE + 64 KiB) is not RAM


def make_memory() -> GuestMemory:
    block = RAMBlock.allocate("ram", RAM)
    root = MemoryRegion.container("system", 1 << 32)
    ram = MemoryRegion.ram_region("ram", block)
    root.add_subregion(0, MemoryRegion.alias("low", ram, 0, HOLE))
    root.add_subregion(HOLE + 0x10000, MemoryRegion.alias("high", ram, HOLE + 0x10000, RAM - HOLE - 0x10000))
    space = AddressSpace("system", root)
    space.commit()
    return GuestMemory(space)


def bswap32(v: int) -> int:
    return int.from_bytes(v.to_bytes(4, "little"), "big")


def select(fw: FwCfg, key: int) -> None:
    fw.write(SELECTOR, 2, key)


def read_bytes(fw: FwCfg, n: int) -> bytes:
    return bytes(fw.read(DATA, 1) for _ in range(n))


def dma(fw: FwCfg, desc_addr: int) -> None:
    """As SeaBIOS does it: outl(cpu_to_be32(high), 0x514); outl(cpu_to_be32(low), 0x518)."""
    fw.write(DMA_HIGH, 4, bswap32(desc_addr >> 32))
    fw.write(DMA_LOW, 4, bswap32(desc_addr & 0xFFFFFFFF))


def put_desc(mem: GuestMemory, at: int, control: int, length: int, address: int) -> None:
    mem.write(at, struct.pack(">IIQ", control, length, address))


def control_of(mem: GuestMemory, at: int) -> int:
    return struct.unpack(">I", mem.read(at, 4))[0]


def test_signature_and_id() -> None:
    fw = FwCfg(make_memory())
    select(fw, FW_CFG_SIGNATURE)
    assert read_bytes(fw, 4) == b"QEMU"
    assert read_bytes(fw, 2) == b"\0\0"  # past the end: zeros
    select(fw, FW_CFG_ID)
    assert struct.unpack("<I", read_bytes(fw, 4))[0] == 3  # traditional + DMA
    assert FwCfg(None).items[FW_CFG_ID].data == struct.pack("<I", 1)
    # The DMA register reads as the "QEMU CFG" signature, in memory order.
    raw = fw.read(DMA_HIGH, 4).to_bytes(4, "little") + fw.read(DMA_LOW, 4).to_bytes(4, "little")
    assert raw == b"QEMU CFG"


def test_select_rewinds_and_unknown_reads_zero() -> None:
    fw = FwCfg(None)
    fw.add_u16(FW_CFG_NB_CPUS, 3)
    select(fw, FW_CFG_NB_CPUS)
    assert fw.read(DATA, 2) == 3
    select(fw, FW_CFG_NB_CPUS)
    assert read_bytes(fw, 2) == b"\3\0"
    select(fw, 0x1234)
    assert read_bytes(fw, 4) == bytes(4)
    fw.write(DATA, 1, 0x55)  # ignored
    select(fw, FW_CFG_NB_CPUS)
    assert fw.read(DATA, 2) == 3


def test_file_directory() -> None:
    fw = FwCfg(None)
    sel_b = fw.add_file("etc/b", b"bbb")
    sel_a = fw.add_file("etc/a", b"a" * 70)
    select(fw, FW_CFG_FILE_DIR)
    count = struct.unpack(">I", read_bytes(fw, 4))[0]
    entries = [struct.unpack(">IHH56s", read_bytes(fw, 64)) for _ in range(count)]
    assert [(e[3].rstrip(b"\0"), e[0], e[1]) for e in entries] == [(b"etc/a", 70, sel_a), (b"etc/b", 3, sel_b)]
    select(fw, sel_b)
    assert read_bytes(fw, 3) == b"bbb"
    assert fw.add_file("etc/b", b"new") == sel_b  # replacing keeps the selector
    with pytest.raises(ValueError):
        fw.add_file("x" * 56, b"")
    with pytest.raises(ValueError):
        fw.add_item(sel_a, b"")  # a file's selector is not a numbered item


def test_dma_read_select_skip() -> None:
    mem = make_memory()
    fw = FwCfg(mem)
    sel = fw.add_file("etc/data", bytes(range(200)))
    put_desc(mem, 0x1000, (sel << 16) | DMA_CTL_SELECT | DMA_CTL_SKIP, 10, 0)
    dma(fw, 0x1000)
    assert control_of(mem, 0x1000) == 0
    put_desc(mem, 0x1000, DMA_CTL_READ, 300, 0x2000)  # 190 bytes left, then zeros
    mem.write(0x2000, b"\xff" * 300)
    dma(fw, 0x1000)
    assert control_of(mem, 0x1000) == 0
    assert mem.read(0x2000, 300) == bytes(range(10, 200)) + bytes(110)


def test_dma_64bit_register_write() -> None:
    mem = make_memory()
    fw = FwCfg(mem)
    put_desc(mem, 0x3000, (FW_CFG_SIGNATURE << 16) | DMA_CTL_SELECT | DMA_CTL_READ, 4, 0x3100)
    fw.write(DMA_HIGH, 8, int.from_bytes((0x3000).to_bytes(8, "big"), "little"))
    assert mem.read(0x3100, 4) == b"QEMU"


def test_dma_bad_ranges_set_error() -> None:
    mem = make_memory()
    fw = FwCfg(mem)
    sel = fw.add_file("etc/data", b"x" * 100)
    for target, length in ((HOLE - 10, 100), (RAM - 4, 100), (1 << 40, 8), (0, 1 << 32 - 1)):
        mem.write(0x4000 - 100, b"\xaa" * 100)
        put_desc(mem, 0x1000, (sel << 16) | DMA_CTL_SELECT | DMA_CTL_READ, length, target)
        before = mem.read(HOLE - 10, 10)
        dma(fw, 0x1000)
        assert control_of(mem, 0x1000) & DMA_CTL_ERROR
        assert mem.read(HOLE - 10, 10) == before  # nothing written when the range is bad
    # A write to a read-only item is refused.
    put_desc(mem, 0x1000, (sel << 16) | DMA_CTL_SELECT | DMA_CTL_WRITE, 4, 0x2000)
    dma(fw, 0x1000)
    assert control_of(mem, 0x1000) == DMA_CTL_ERROR
    # A descriptor in the hole or past RAM is ignored, and nothing raises.
    for addr in (HOLE, RAM - 8, (1 << 64) - 16):
        dma(fw, addr)


def test_dma_write_to_writable_item() -> None:
    mem = make_memory()
    fw = FwCfg(mem)
    sel = fw.add_file("etc/rw", bytes(8), writable=True)
    mem.write(0x2000, b"abcd")
    put_desc(mem, 0x1000, (sel << 16) | DMA_CTL_SELECT | DMA_CTL_WRITE, 4, 0x2000)
    dma(fw, 0x1000)
    assert control_of(mem, 0x1000) == 0
    assert fw.file_data("etc/rw") == b"abcd" + bytes(4)
    put_desc(mem, 0x1000, DMA_CTL_WRITE, 8, 0x2000)  # only 4 bytes left: refused
    dma(fw, 0x1000)
    assert control_of(mem, 0x1000) == DMA_CTL_ERROR


def test_state_roundtrip_and_hostile_state() -> None:
    fw = FwCfg(make_memory())
    select(fw, FW_CFG_SIGNATURE)
    fw.read(DATA, 1)
    state = fw.save()
    other = FwCfg(make_memory())
    other.restore(state)
    assert other.read(DATA, 1) == ord("E")
    for bad in ({"selector": 0, "offset": 5, "dma_high": 0}, {"selector": -1, "offset": 0, "dma_high": 0},
                {"selector": 0, "offset": 0}, {"selector": 0, "offset": 0, "dma_high": 1 << 32}, "x"):
        with pytest.raises(DeviceStateError):
            other.restore(bad)  # type: ignore[arg-type]
    assert other.save()["offset"] == 2
    other.reset()
    assert other.save() == {"selector": 0, "offset": 0, "dma_high": 0}


MEMORY = make_memory()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.tuples(st.sampled_from(["sel", "read", "dma", "raw"]), st.integers(0, (1 << 64) - 1),
                              st.integers(0, (1 << 32) - 1), st.integers(0, (1 << 32) - 1)), max_size=20))
def test_fuzz_never_raises(ops: list[tuple[str, int, int, int]]) -> None:
    fw = FwCfg(MEMORY)
    fw.add_file("etc/a", b"a" * 33)
    fw.add_file("etc/rw", bytes(16), writable=True)
    for op, a, b, c in ops:
        if op == "sel":
            fw.write(SELECTOR, 2, a & 0xFFFF)
        elif op == "read":
            fw.read(DATA, 1 + (a & 3))
        elif op == "raw":  # any register, any width
            fw.write(a % 12, (1, 2, 4, 8)[b & 3], c)
            fw.read(a % 12, (1, 2, 4)[b % 3])
        else:
            desc = a % (RAM + 0x100)
            try:
                put_desc(MEMORY, desc, b, c & 0x3FFFF, a >> 8)  # lengths up to 256 KiB, any address
            except ValueError:
                pass
            dma(fw, desc)
    state = fw.save()
    fw.validate(state)
