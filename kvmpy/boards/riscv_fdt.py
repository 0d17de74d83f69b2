"""The flattened device tree (DTB) of the riscv64 ``virt`` board, as QEMU 7.2 generates it.

``FdtWriter`` writes the FDT blob format (devicetree specification v0.4,
chapter 5: a 40-byte header, the memory reservation block, the structure block
of BEGIN_NODE/PROP/END_NODE tokens and the strings block).  It is small enough
that kvmpy writes it itself instead of depending on a library, and the order of
nodes and properties is then exactly the order QEMU's libfdt calls leave them
in, so ``dtc -I dtb -O dts`` of both blobs can be compared line by line.

``virt_fdt(VirtFdtParams)`` builds the ``virt`` tree for what kvmpy's board has:
one cpu node per hart, memory, CLINT, PLIC, ns16550a UART, the virtio-mmio transports, sifive_test with its syscon
poweroff/reboot nodes, the empty platform bus and ``/chosen``.  Nodes for
devices kvmpy does not model (pmu, fw-cfg, flash, rtc, pci) are
left out, so no guest probes hardware that is not there.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

FDT_MAGIC = 0xD00DFEED
FDT_VERSION = 17
FDT_LAST_COMP_VERSION = 16
FDT_BEGIN_NODE, FDT_END_NODE, FDT_PROP, FDT_END = 1, 2, 3, 9
HEADER_SIZE = 40

# phandles, numbered as QEMU's virt hands them out: the harts' cpu and interrupt-controller
# nodes from the last hart down to hart 0, then the PLIC, then sifive_test.


def phandle_cpu(hart: int, harts: int) -> int:
    return 1 + 2 * (harts - 1 - hart)


def phandle_intc(hart: int, harts: int) -> int:
    return phandle_cpu(hart, harts) + 1


def phandle_plic(harts: int) -> int:
    return 2 * harts + 1


def phandle_test(harts: int) -> int:
    return 2 * harts + 2


IRQ_S_SOFT, IRQ_M_SOFT, IRQ_S_TIMER, IRQ_M_TIMER, IRQ_S_EXT, IRQ_M_EXT = 1, 3, 5, 7, 9, 11


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


class FdtWriter:
    """Builds one FDT blob: open nodes, add properties, close nodes, then ``finish()``."""

    def __init__(self, boot_cpuid: int = 0) -> None:
        self.boot_cpuid = boot_cpuid
        self._struct = bytearray()
        self._strings = bytearray()
        self._string_offsets: dict[str, int] = {}
        self._depth = 0

    def begin_node(self, name: str) -> None:
        self._struct += struct.pack(">I", FDT_BEGIN_NODE) + _pad4(name.encode() + b"\0")
        self._depth += 1

    def end_node(self) -> None:
        if self._depth == 0:
            raise ValueError("fdt: end_node without an open node")
        self._struct += struct.pack(">I", FDT_END_NODE)
        self._depth -= 1

    def _name_offset(self, name: str) -> int:
        off = self._string_offsets.get(name)
        if off is None:
            off = self._string_offsets[name] = len(self._strings)
            self._strings += name.encode() + b"\0"
        return off

    def prop(self, name: str, value: bytes = b"") -> None:
        if self._depth == 0:
            raise ValueError(f"fdt: property {name!r} outside a node")
        self._struct += struct.pack(">III", FDT_PROP, len(value), self._name_offset(name)) + _pad4(value)

    def prop_u32(self, name: str, *values: int) -> None:
        self.prop(name, struct.pack(f">{len(values)}I", *values))

    def prop_str(self, name: str, *strings: str) -> None:
        """A string, or a string list (each NUL-terminated)."""
        self.prop(name, b"".join(s.encode() + b"\0" for s in strings))

    def finish(self) -> bytes:
        if self._depth != 0:
            raise ValueError(f"fdt: {self._depth} node(s) left open")
        body = bytes(self._struct) + struct.pack(">I", FDT_END)
        rsvmap = bytes(16)                               # one terminating (0, 0) entry
        off_rsvmap = HEADER_SIZE
        off_struct = off_rsvmap + len(rsvmap)
        off_strings = off_struct + len(body)
        total = off_strings + len(self._strings)
        header = struct.pack(">10I", FDT_MAGIC, total, off_struct, off_strings, off_rsvmap, FDT_VERSION,
                             FDT_LAST_COMP_VERSION, self.boot_cpuid, len(self._strings), len(body))
        return header + rsvmap + body + bytes(self._strings)


def _reg(*pairs: tuple[int, int]) -> bytes:
    """A ``reg`` value with #address-cells = #size-cells = 2."""
    return b"".join(struct.pack(">QQ", base, size) for base, size in pairs)


@dataclass(frozen=True)
class VirtFdtParams:
    """What the ``virt`` device tree describes: where each device sits and how it is wired."""

    memory_base: int
    memory_size: int
    isa: str                     # the riscv,isa string of the hart
    mmu_type: str                # "riscv,sv39", ...
    timebase_hz: int             # CLINT mtime frequency
    clint: tuple[int, int]       # (base, size)
    plic: tuple[int, int]
    plic_ndev: int
    uart: tuple[int, int]
    uart_irq: int
    uart_clock_hz: int
    test: tuple[int, int]        # sifive_test
    platform_bus: tuple[int, int]
    rng_seed: bytes              # 32 bytes for /chosen/rng-seed
    bootargs: str = ""           # /chosen/bootargs when non-empty (-append)
    hartid: int = 0              # the boot hart (the header's boot_cpuid_phys)
    harts: int = 1               # harts 0 .. harts-1, each with its cpu node
    virtio: tuple[tuple[int, int, int], ...] = ()  # virtio-mmio transports: (base, size, PLIC source)


def virt_fdt(p: VirtFdtParams) -> bytes:
    """The ``virt`` board's DTB, nodes and properties in the order QEMU 7.2's dump shows them."""
    if len(p.rng_seed) % 4:
        raise ValueError("rng-seed must be a whole number of 32-bit cells")
    if p.harts < 1:
        raise ValueError("a virt board has at least one hart")
    n = p.harts
    plic_ph, test_ph = phandle_plic(n), phandle_test(n)
    w = FdtWriter(boot_cpuid=p.hartid)
    w.begin_node("")
    w.prop_u32("#address-cells", 2)
    w.prop_u32("#size-cells", 2)
    w.prop_str("compatible", "riscv-virtio")
    w.prop_str("model", "riscv-virtio,qemu")

    w.begin_node("chosen")
    w.prop("rng-seed", p.rng_seed)
    if p.bootargs:
        w.prop_str("bootargs", p.bootargs)
    w.prop_str("stdout-path", f"/soc/serial@{p.uart[0]:x}")
    w.end_node()

    for name, value in (("poweroff", 0x5555), ("reboot", 0x7777)):   # sifive_test finisher codes
        w.begin_node(name)
        w.prop_u32("value", value)
        w.prop_u32("offset", 0)
        w.prop_u32("regmap", test_ph)
        w.prop_str("compatible", f"syscon-{name}")
        w.end_node()

    pb_base, pb_size = p.platform_bus
    w.begin_node(f"platform-bus@{pb_base:x}")
    w.prop_u32("interrupt-parent", plic_ph)
    w.prop_u32("ranges", 0, 0, pb_base, pb_size)
    w.prop_u32("#address-cells", 1)
    w.prop_u32("#size-cells", 1)
    w.prop_str("compatible", "qemu,platform", "simple-bus")
    w.end_node()

    w.begin_node(f"memory@{p.memory_base:x}")
    w.prop_str("device_type", "memory")
    w.prop("reg", _reg((p.memory_base, p.memory_size)))
    w.end_node()

    w.begin_node("cpus")
    w.prop_u32("#address-cells", 1)
    w.prop_u32("#size-cells", 0)
    w.prop_u32("timebase-frequency", p.timebase_hz)
    for hart in range(n):
        w.begin_node(f"cpu@{hart:x}")
        w.prop_u32("phandle", phandle_cpu(hart, n))
        w.prop_str("device_type", "cpu")
        w.prop_u32("reg", hart)
        w.prop_str("status", "okay")
        w.prop_str("compatible", "riscv")
        w.prop_str("riscv,isa", p.isa)
        w.prop_str("mmu-type", p.mmu_type)
        w.begin_node("interrupt-controller")
        w.prop_u32("#interrupt-cells", 1)
        w.prop("interrupt-controller")
        w.prop_str("compatible", "riscv,cpu-intc")
        w.prop_u32("phandle", phandle_intc(hart, n))
        w.end_node()
        w.end_node()
    w.begin_node("cpu-map")
    w.begin_node("cluster0")             # one socket: every hart is a core of cluster0
    for hart in range(n):
        w.begin_node(f"core{hart}")
        w.prop_u32("cpu", phandle_cpu(hart, n))
        w.end_node()
    w.end_node()
    w.end_node()
    w.end_node()

    w.begin_node("soc")
    w.prop_u32("#address-cells", 2)
    w.prop_u32("#size-cells", 2)
    w.prop_str("compatible", "simple-bus")
    w.prop("ranges")

    w.begin_node(f"serial@{p.uart[0]:x}")
    w.prop_u32("interrupts", p.uart_irq)
    w.prop_u32("interrupt-parent", plic_ph)
    w.prop_u32("clock-frequency", p.uart_clock_hz)
    w.prop("reg", _reg(p.uart))
    w.prop_str("compatible", "ns16550a")
    w.end_node()

    w.begin_node(f"test@{p.test[0]:x}")
    w.prop_u32("phandle", test_ph)
    w.prop("reg", _reg(p.test))
    w.prop_str("compatible", "sifive,test1", "sifive,test0", "syscon")
    w.end_node()

    for base, size, irq in sorted(p.virtio, reverse=True):   # QEMU's dump lists them from the highest down
        w.begin_node(f"virtio_mmio@{base:x}")
        w.prop_u32("interrupts", irq)
        w.prop_u32("interrupt-parent", plic_ph)
        w.prop("reg", _reg((base, size)))
        w.prop_str("compatible", "virtio,mmio")
        w.end_node()

    w.begin_node(f"plic@{p.plic[0]:x}")
    w.prop_u32("phandle", plic_ph)
    w.prop_u32("riscv,ndev", p.plic_ndev)
    w.prop("reg", _reg(p.plic))
    # context 2N = hart N's M-mode external interrupt, 2N+1 its S-mode one, as kvmpy's PLIC numbers them
    w.prop_u32("interrupts-extended", *(v for h in range(n) for v in (phandle_intc(h, n), IRQ_M_EXT,
                                                                     phandle_intc(h, n), IRQ_S_EXT)))
    w.prop("interrupt-controller")
    w.prop_str("compatible", "sifive,plic-1.0.0", "riscv,plic0")
    w.prop_u32("#address-cells", 0)
    w.prop_u32("#interrupt-cells", 1)
    w.end_node()

    w.begin_node(f"clint@{p.clint[0]:x}")
    w.prop_u32("interrupts-extended", *(v for h in range(n) for v in (phandle_intc(h, n), IRQ_M_SOFT,
                                                                     phandle_intc(h, n), IRQ_M_TIMER)))
    w.prop("reg", _reg(p.clint))
    w.prop_str("compatible", "sifive,clint0", "riscv,clint0")
    w.end_node()

    w.end_node()   # soc
    w.end_node()   # root
    return w.finish()
