"""QMP query-pci and HMP info pci, in QEMU 7.2's shapes, from the board's PCI bus.

A region's ``address`` is where the BAR decodes now, or -1 (QEMU's unmapped
marker) when it does not; ``irq`` appears only for a function with an INTx pin.
Class descriptions are QEMU's names for the classes kvmpy's functions use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvmpy.devices.pci.device import INTERRUPT_LINE, INTERRUPT_PIN, BarKind, PciDevice

if TYPE_CHECKING:
    from kvmpy.monitor.context import Context

UNMAPPED = -1
CLASS_NAMES = {
    0x0100: "SCSI controller", 0x0101: "IDE controller", 0x0200: "Ethernet controller",
    0x0300: "VGA controller", 0x0380: "Display controller", 0x0600: "Host bridge", 0x0601: "ISA bridge",
    0x0604: "PCI bridge",
    0x0680: "Bridge", 0x0780: "Communication controller",
}


def device_info(fn: PciDevice) -> dict[str, Any]:
    ident = fn.identity
    class_info: dict[str, Any] = {"class": ident.class_code}
    if ident.class_code in CLASS_NAMES:
        class_info["desc"] = CLASS_NAMES[ident.class_code]
    mapped = fn.mapped_bars()
    regions = []
    for bar, _programmed in fn.regions():
        r: dict[str, Any] = {"bar": bar.index, "type": "io" if bar.kind is BarKind.IO else "memory",
                             "address": mapped.get(bar.index, UNMAPPED), "size": bar.size}
        if bar.kind is not BarKind.IO:
            r["prefetch"] = bar.prefetchable
            r["mem_type_64"] = bar.kind is BarKind.MEM64
        regions.append(r)
    info: dict[str, Any] = {
        "bus": 0, "slot": fn.devfn >> 3, "function": fn.devfn & 7, "class_info": class_info,
        "id": {"device": ident.device, "vendor": ident.vendor, "subsystem": ident.subsystem,
               "subsystem-vendor": ident.subsystem_vendor},
        "irq_pin": fn.config_read(INTERRUPT_PIN, 1), "qdev_id": fn.qdev_id, "regions": regions,
    }
    if info["irq_pin"]:
        info["irq"] = fn.config_read(INTERRUPT_LINE, 1)
    return info


def query_pci(ctx: "Context") -> list:
    bus = ctx.machine.board.pci
    return [] if bus is None else [{"bus": 0, "devices": [device_info(fn) for fn in bus]}]


def info_pci_text(ctx: "Context") -> str:
    out = []
    for bus in query_pci(ctx):
        for d in bus["devices"]:
            out.append(f"  Bus {d['bus']:2d}, device {d['slot']:3d}, function {d['function']}:\n")
            ci, ident = d["class_info"], d["id"]
            head = ci["desc"] if "desc" in ci else f"Class {ci['class']:04d}"
            out.append(f"    {head}: PCI device {ident['vendor']:04x}:{ident['device']:04x}\n")
            out.append(f"      PCI subsystem {ident['subsystem-vendor']:04x}:{ident['subsystem']:04x}\n")
            if "irq" in d:
                out.append(f"      IRQ {d['irq']}, pin {chr(ord('A') + d['irq_pin'] - 1)}\n")
            for r in d["regions"]:
                addr = r["address"] & 0xFFFFFFFFFFFFFFFF
                last = (addr + r["size"] - 1) & 0xFFFFFFFFFFFFFFFF
                if r["type"] == "io":
                    out.append(f"      BAR{r['bar']}: I/O at 0x{addr:04x} [0x{last:04x}].\n")
                else:
                    bits = 64 if r["mem_type_64"] else 32
                    pf = " prefetchable" if r["prefetch"] else ""
                    out.append(f"      BAR{r['bar']}: {bits} bit{pf} memory at 0x{addr:08x} [0x{last:08x}].\n")
            out.append(f"      id \"{d['qdev_id']}\"\n")
    return "".join(out)
