"""ACPI for memory hotplug as QEMU's pc builds it: the DSDT's MHPD/MHPC devices, \\_GPE._E03 and the SRAT.

``memhp_aml`` gives ``\\_SB.PCI0.MHPD`` (the controller's I/O ports, PNP0A06)
and ``\\_SB.MHPC`` with the fields over them, the MLCK mutex, MSCN (scan the
slots and notify: device check on insert, eject request on remove), MRST
(_STA), MCRS (_CRS, 64-bit math in two dwords), MPXM (_PXM), MOST (_OST),
MEJ0 (_EJ0), the slot devices MPxx (PNP0C80) and MTFY; then ``\\_GPE._E03``
calling MSCN. ``build_srat`` gives the affinity table QEMU's pc builds when
memory is hotpluggable: every vCPU and all RAM in node 0, and the whole
hotplug window marked hotpluggable. Names, layouts and values are QEMU's (seen
in its DSDT disassembled by iasl), the encodings those of kvmpy.loader.aml.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kvmpy.devices.acpi_gpe import GPE_MEMORY_HOTPLUG
from kvmpy.devices.acpi_memhp import MEMHP_BASE, MEMHP_LEN
from kvmpy.loader import aml

FOUR_GIB = 1 << 32
HOLE_640K = (0xA0000, 0x100000)
MEM_AFFINITY_ENABLED, MEM_AFFINITY_HOTPLUGGABLE = 1, 2
NOTIFY_DEVICE_CHECK, NOTIFY_EJECT_REQUEST = 1, 3


@dataclass(frozen=True)
class HotplugMemory:
    """What the tables need to know: slot count and the hotplug window."""
    slots: int
    base: int
    size: int


def _slot_device(i: int) -> bytes:
    uid = aml.name_string("_UID")
    return aml.device(
        f"MP{i:02X}",
        aml.name("_UID", aml.string(f"0x{i:02X}")),
        aml.name("_HID", aml.eisaid("PNP0C80")),
        aml.method("_CRS", 0, aml.ret(aml.call("MCRS", uid))),
        aml.method("_STA", 0, aml.ret(aml.call("MRST", uid))),
        aml.method("_PXM", 0, aml.ret(aml.call("MPXM", uid))),
        aml.method("_OST", 3, aml.call("MOST", uid, aml.arg(0), aml.arg(1), aml.arg(2))),
        aml.method("_EJ0", 1, aml.call("MEJ0", uid, aml.arg(0))),
    )


def _select(arg0: bytes) -> bytes:
    return aml.store(aml.to_integer(arg0), aml.name_string("MSEL"))


def _mcrs() -> bytes:
    n = aml.name_string
    one, zero = aml.integer(1), aml.integer(0)
    mr32_fields = (aml.create_dword_field(n("MR32"), aml.integer(10), "MIN"),
                   aml.create_dword_field(n("MR32"), aml.integer(14), "MAX"),
                   aml.create_dword_field(n("MR32"), aml.integer(22), "LEN"))
    return aml.method(
        "MCRS", 1,
        aml.acquire("MLCK"), _select(aml.arg(0)),
        aml.name("MR64", aml.resource_template(aml.qword_memory(0, 0xFFFFFFFFFFFFFFFE, cacheable=True))),
        aml.create_dword_field(n("MR64"), aml.integer(14), "MINL"),
        aml.create_dword_field(n("MR64"), aml.integer(18), "MINH"),
        aml.create_dword_field(n("MR64"), aml.integer(38), "LENL"),
        aml.create_dword_field(n("MR64"), aml.integer(42), "LENH"),
        aml.create_dword_field(n("MR64"), aml.integer(22), "MAXL"),
        aml.create_dword_field(n("MR64"), aml.integer(26), "MAXH"),
        aml.store(n("MRBH"), n("MINH")), aml.store(n("MRBL"), n("MINL")),
        aml.store(n("MRLH"), n("LENH")), aml.store(n("MRLL"), n("LENL")),
        aml.add(n("MINL"), n("LENL"), n("MAXL")), aml.add(n("MINH"), n("LENH"), n("MAXH")),
        aml.if_(aml.lless(n("MAXL"), n("MINL")), aml.add(n("MAXH"), one, n("MAXH"))),
        aml.if_(aml.lless(n("MAXL"), one), aml.subtract(n("MAXH"), one, n("MAXH"))),
        aml.subtract(n("MAXL"), one, n("MAXL")),
        aml.if_(aml.lequal(n("MAXH"), zero),
                aml.name("MR32", aml.resource_template(aml.dword_memory(0, 0xFFFFFFFE, cacheable=True))),
                *mr32_fields,
                aml.store(n("MINL"), n("MIN")), aml.store(n("MAXL"), n("MAX")), aml.store(n("LENL"), n("LEN")),
                aml.release("MLCK"), aml.ret(n("MR32"))),
        aml.release("MLCK"), aml.ret(n("MR64")),
        serialized=True)


def memhp_aml(slots: int, res_root: str = "\\_SB.PCI0") -> bytes:
    """The DSDT terms for ``slots`` DIMM slots; the controller device goes under ``res_root``."""
    n = aml.name_string
    one, zero, idx = aml.integer(1), aml.integer(0), aml.local(0)
    region = f"{res_root}.MHPD.HPMR"
    mhpd = aml.device(
        f"{res_root}.MHPD",
        aml.name("_HID", aml.string("PNP0A06")),
        aml.name("_UID", aml.string("Memory hotplug resources")),
        aml.name("_CRS", aml.resource_template(aml.io_port(MEMHP_BASE, MEMHP_LEN, align=0))),
        aml.operation_region("HPMR", aml.SYSTEM_IO, MEMHP_BASE, MEMHP_LEN),
    )
    no_slots = aml.if_(aml.lequal(n("MDNR"), zero), aml.ret(zero))
    mscn = aml.method(
        "MSCN", 0, no_slots, aml.store(zero, idx), aml.acquire("MLCK"),
        aml.while_(aml.lless(idx, n("MDNR")),
                   aml.store(idx, n("MSEL")),
                   aml.if_(aml.lequal(n("MINS"), one),
                           aml.call("MTFY", idx, aml.integer(NOTIFY_DEVICE_CHECK)), aml.store(one, n("MINS"))),
                   aml.else_(aml.if_(aml.lequal(n("MRMV"), one),
                                     aml.call("MTFY", idx, aml.integer(NOTIFY_EJECT_REQUEST)),
                                     aml.store(one, n("MRMV")))),
                   aml.add(idx, one, idx)),
        aml.release("MLCK"), aml.ret(one))
    mrst = aml.method(
        "MRST", 1, aml.store(zero, idx), aml.acquire("MLCK"), _select(aml.arg(0)),
        aml.if_(aml.lequal(n("MES"), one), aml.store(aml.integer(0xF), idx)),
        aml.release("MLCK"), aml.ret(idx))
    mpxm = aml.method("MPXM", 1, aml.acquire("MLCK"), _select(aml.arg(0)), aml.store(n("MPX"), idx),
                      aml.release("MLCK"), aml.ret(idx))
    most = aml.method("MOST", 4, aml.acquire("MLCK"), _select(aml.arg(0)), aml.store(aml.arg(1), n("MOEV")),
                      aml.store(aml.arg(2), n("MOSC")), aml.release("MLCK"))
    mej0 = aml.method("MEJ0", 2, aml.acquire("MLCK"), _select(aml.arg(0)), aml.store(one, n("MEJ")),
                      aml.release("MLCK"))
    mtfy = aml.method("MTFY", 2, *(aml.if_(aml.lequal(aml.arg(0), aml.integer(i)),
                                           aml.notify(n(f"MP{i:02X}"), aml.arg(1))) for i in range(slots)))
    mhpc = aml.device(
        "\\_SB.MHPC",
        aml.name("_HID", aml.string("PNP0A06")),
        aml.name("_UID", aml.string("DIMM devices")),
        aml.name("MDNR", aml.integer(slots)),
        aml.field(region, [("MRBL", 32), ("MRBH", 32), ("MRLL", 32), ("MRLH", 32), ("MPX", 32)],
                  aml.DWORD_ACC),
        aml.field(region, [("", 160), ("MES", 1), ("MINS", 1), ("MRMV", 1), ("MEJ", 1)],
                  aml.BYTE_ACC | aml.WRITE_AS_ZEROS),
        aml.field(region, [("MSEL", 32), ("MOEV", 32), ("MOSC", 32)], aml.DWORD_ACC),
        aml.method("_STA", 0, no_slots, aml.ret(aml.integer(0x0B))),
        aml.mutex("MLCK"),
        mscn, mrst, _mcrs(), mpxm, most, mej0,
        *(_slot_device(i) for i in range(slots)),
        mtfy,
    )
    e03 = aml.method(f"\\_GPE._E{GPE_MEMORY_HOTPLUG:02X}", 0, aml.call("\\_SB.MHPC.MSCN"))
    return mhpd + mhpc + e03


def _srat_memory(base: int, length: int, node: int, flags: int) -> bytes:
    return struct.pack("<BBIHQQIIQ", 1, 40, node, 0, base, length, 0, flags, 0)


def srat_body(nr_cpus: int, below_4g: int, above_4g: int, hotplug: HotplugMemory, nr_nodes: int = 1) -> bytes:
    """The SRAT after its header: table revision 1, vCPU affinities, RAM ranges, padding, the hotplug window."""
    body = struct.pack("<IQ", 1, 0)
    for apic_id in range(nr_cpus):
        body += struct.pack("<BBBBIB3sI", 0, 16, 0, apic_id, 1, 0, b"\0" * 3, 0)
    ranges = [_srat_memory(0, HOLE_640K[0], 0, MEM_AFFINITY_ENABLED)]
    if below_4g > HOLE_640K[1]:
        ranges.append(_srat_memory(HOLE_640K[1], below_4g - HOLE_640K[1], 0, MEM_AFFINITY_ENABLED))
    if above_4g:
        ranges.append(_srat_memory(FOUR_GIB, above_4g, 0, MEM_AFFINITY_ENABLED))
    while len(ranges) < nr_nodes + 2:
        ranges.append(_srat_memory(0, 0, 0, 0))  # QEMU pads to one entry per node plus two
    body += b"".join(ranges)
    body += _srat_memory(hotplug.base, hotplug.size, nr_nodes - 1,
                         MEM_AFFINITY_HOTPLUGGABLE | MEM_AFFINITY_ENABLED)
    return body
