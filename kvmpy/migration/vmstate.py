"""What a migration carries besides RAM: the machine description and every piece of VM state.

``describe`` gives the facts two machines must share for a stream to fit
(checked by ``check_config`` on the destination). ``capture`` returns the
state sections of a paused machine: KVM clock, PIC/IOAPIC, PIT, each vCPU
(regs, sregs, FPU/XSAVE, XCRs, debug regs, MSRs with the TSC, LAPIC, events,
MP state) and each device's ``save()``. ``apply`` validates a complete set of
sections before restoring any of them into the (not yet running) new VM.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kvmpy.memory.ramblock import RAMBlock
from kvmpy.migration.errors import ConfigMismatchError, StreamError
from kvmpy.vcpu.state import VcpuState

if TYPE_CHECKING:
    from kvmpy.machine import Machine

log = logging.getLogger(__name__)

DEVICE_STATE_VERSION = 1
VM_SECTIONS = ("vm/clock", "vm/irqchip", "vm/pit")


def ram_blocks(machine: "Machine") -> list[RAMBlock]:
    return [machine.ram]


def describe(machine: "Machine") -> dict[str, Any]:
    cfg = machine.config
    d = cfg.debug_exit
    return {
        "arch": cfg.arch, "machine": "pc", "memory": cfg.memory, "smp": cfg.smp,
        "ram": [{"name": b.name, "size": b.size} for b in ram_blocks(machine)],
        "devices": sorted(machine.devices),
        "debug-exit": None if d is None else [d.iobase, d.iosize],
        "acpi": bool(machine.has_acpi),
    }


def _show(key: str, value: Any) -> str:
    if key == "memory" and isinstance(value, int):
        return f"{value >> 20} MiB" if value % (1 << 20) == 0 else f"{value} bytes"
    return repr(value)


def check_config(local: dict[str, Any], remote: dict[str, Any]) -> None:
    """Refuse a stream from a differently configured machine, naming every difference."""
    diffs = [f"{k}: {_show(k, remote.get(k))} in the stream, {_show(k, local[k])} here"
             for k in local if remote.get(k) != local[k]]
    extra = sorted(set(remote) - set(local))
    if extra:
        diffs.append(f"unknown configuration keys in the stream: {', '.join(map(str, extra))}")
    if diffs:
        raise ConfigMismatchError("the incoming VM's configuration does not match this machine: "
                                  + "; ".join(diffs))


def complete_pending_io(machine: "Machine") -> None:
    """Re-enter each parked vCPU with immediate_exit set, so KVM finishes a pending I/O instruction.

    Until then the registers can still point at an IN/OUT whose result was handed
    back but not yet retired, which the destination would execute a second time.
    """
    for v in machine.vcpus:
        v.set_immediate_exit(True)
        v.run()


def capture(machine: "Machine") -> list[tuple[str, Any]]:
    """All non-RAM state of a machine whose vCPUs are parked."""
    complete_pending_io(machine)
    cpu = machine.save_cpu_state()
    sections: list[tuple[str, Any]] = [
        ("vm/clock", machine.vm.get_clock()),
        ("vm/irqchip", list(cpu["irqchip"])),
        ("vm/pit", cpu["pit"]),
    ]
    sections += [(f"cpu/{i}", s.to_data()) for i, s in enumerate(cpu["vcpus"])]
    sections += [(f"dev/{name}", {"version": DEVICE_STATE_VERSION, "state": dev.save()})
                 for name, dev in machine.devices.items()]
    return sections


def expected_sections(machine: "Machine") -> set[str]:
    return {*VM_SECTIONS, *(f"cpu/{i}" for i in range(len(machine.vcpus))),
            *(f"dev/{n}" for n in machine.devices)}


def apply(machine: "Machine", sections: dict[str, Any]) -> None:
    """Restore the sections into a machine whose vCPUs are parked; raises StreamError if any is unfit."""
    want = expected_sections(machine)
    missing, unknown = sorted(want - set(sections)), sorted(set(sections) - want)
    if missing:
        raise StreamError(f"the stream lacks state for: {', '.join(missing)}")
    if unknown:
        raise StreamError(f"the stream has state for parts this machine lacks: {', '.join(unknown)}")
    # Decode and check everything first, so a bad section is refused before anything is restored.
    try:
        vcpus = [VcpuState.from_data(sections[f"cpu/{i}"]) for i in range(len(machine.vcpus))]
    except (KeyError, TypeError, ValueError) as exc:
        raise StreamError(f"a vCPU state section is malformed: {exc}") from None
    for i, s in enumerate(vcpus):
        if s.vcpu_id != i:
            raise StreamError(f"section cpu/{i} holds the state of vCPU {s.vcpu_id}")
    irqchip, pit, clock = sections["vm/irqchip"], sections["vm/pit"], sections["vm/clock"]
    if not (isinstance(irqchip, list) and len(irqchip) == 3 and all(isinstance(c, bytes) for c in irqchip)):
        raise StreamError("section vm/irqchip must hold three byte strings (PIC master, slave, IOAPIC)")
    if not isinstance(pit, bytes) or not isinstance(clock, bytes):
        raise StreamError("sections vm/pit and vm/clock must be byte strings")
    devices = {}
    for name in machine.devices:
        sec = sections[f"dev/{name}"]
        if not isinstance(sec, dict) or sec.get("version") != DEVICE_STATE_VERSION or \
                not isinstance(sec.get("state"), dict):
            raise StreamError(f"section dev/{name} is not version {DEVICE_STATE_VERSION} device state")
        devices[name] = sec["state"]
    step = "vm/irqchip"
    try:
        for chip in irqchip:
            machine.vm.set_irqchip(chip)
        step = "vm/pit"
        machine.vm.set_pit2(pit)
        for i, (v, s) in enumerate(zip(machine.vcpus, vcpus)):
            step = f"cpu/{i}"
            machine.state_io.restore(v, s)
        for name, dev in machine.devices.items():
            step = f"dev/{name}"
            dev.restore(devices[name])
        step = "vm/clock"
        machine.vm.set_clock(clock)
    except Exception as exc:  # hostile values: KVM refuses them or a device's restore does
        raise StreamError(f"section {step} cannot be restored: {exc}") from None
