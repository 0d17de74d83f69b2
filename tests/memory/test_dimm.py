"""pc-dimm placement in the device-memory window: QEMU's window, slots, addresses and messages."""

from __future__ import annotations

import pytest

from kvmpy.memory.backend import create_backend
from kvmpy.memory.dimm import DeviceMemory, DimmError, PcDimm, device_memory_window

MiB, GiB = 1 << 20, 1 << 30


def window() -> DeviceMemory:
    # QEMU pc -m 256M,slots=4,maxmem=4G: window at 4 GiB, 3840 MiB plus 1 GiB per slot (its SRAT says so).
    base, size = device_memory_window(0, 256 * MiB, 4 * GiB, 4)
    assert (base, size) == (0x100000000, 0x1F0000000)
    return DeviceMemory(base, size, 4, 4 * GiB - 256 * MiB)


def backend(size: int, name: str = "m"):
    return create_backend("memory-backend-ram", name, {"size": size})


def plug(w: DeviceMemory, size: int, dev_id: str, **kw) -> PcDimm:
    b = backend(size, dev_id)
    addr, slot = w.plan(b, kw.get("addr"), kw.get("slot"))
    d = PcDimm(dev_id, b, addr, slot)
    w.add(d)
    return d


def test_window_starts_past_high_ram_on_a_gib_boundary() -> None:
    assert device_memory_window(1 * GiB + 1, 4 * GiB, 8 * GiB, 2)[0] == 6 * GiB


def test_first_fit_addresses_and_slots_as_qemu_assigns_them() -> None:
    w = window()
    # QEMU 7.2 placed these at 0x100000000, 0x120000000, 0x128000000, 0x130000000 in slots 0-3.
    got = [(d.addr, d.slot) for d in (plug(w, 512 * MiB, "d0"), plug(w, 128 * MiB, "d2"),
                                       plug(w, 128 * MiB, "df"), plug(w, 128 * MiB, "d3"))]
    assert got == [(0x100000000, 0), (0x120000000, 1), (0x128000000, 2), (0x130000000, 3)]
    assert w.used == 896 * MiB
    with pytest.raises(DimmError, match="^no free slots available$"):
        w.plan(backend(128 * MiB))


def test_a_freed_gap_is_reused() -> None:
    w = window()
    a = plug(w, 128 * MiB, "a")
    plug(w, 128 * MiB, "b")
    w.remove(a)
    c = plug(w, 64 * MiB, "c")
    assert (c.addr, c.slot) == (0x100000000, 0)


@pytest.mark.parametrize("size,kw,message", [
    (4 * GiB, {}, "not enough space, currently 0x20000000 in use of total space for memory devices 0xf0000000"),
    ((1 * MiB) + 4096, {}, "backend memory size must be multiple of 0x200000"),
    (128 * MiB, {"slot": 0}, "slot 0 is busy"),
    (128 * MiB, {"slot": 9}, r"invalid slot number 9, valid range is \[0-3\]"),
    (128 * MiB, {"addr": 0x100000000}, "address range conflicts with memory device id='d0'"),
    (128 * MiB, {"addr": 0x100001000}, "address must be aligned to 0x200000 bytes"),
    (128 * MiB, {"addr": 0x1000000000},
     r"can't add memory device \[0x1000000000:0x8000000\], usable range for memory devices "
     r"\[0x100000000:0x1f0000000\]"),
])
def test_qemu_errors(size: int, kw: dict, message: str) -> None:
    w = window()
    plug(w, 512 * MiB, "d0")
    with pytest.raises(DimmError, match=f"^{message}$"):
        w.plan(backend(size, "x"), kw.get("addr"), kw.get("slot"))
    assert len(w.dimms) == 1


def test_explicit_address_and_slot_are_honoured() -> None:
    w = window()
    d = plug(w, 256 * MiB, "d", addr=0x140000000, slot=2)
    assert (d.addr, d.slot) == (0x140000000, 2)
    assert d.info() == {"memdev": "/objects/d", "hotplugged": False, "addr": 0x140000000, "hotpluggable": True,
                        "size": 256 * MiB, "slot": 2, "node": 0, "id": "d"}


def test_no_slots() -> None:
    w = DeviceMemory(4 * GiB, 1 * GiB, 0, 1 * GiB)
    with pytest.raises(DimmError, match="no slots where allocated"):
        w.plan(backend(128 * MiB))
