"""VmState: capture and apply of the whole VM's non-RAM state as versioned, plain data.

One implementation for reset (the power-on CPU state), snapshots and
migration. A capture is an ordered dict of sections:

- ``vm/clock`` (KVM clock), ``vm/irqchip`` (PIC master, slave, IOAPIC), ``vm/pit``
- ``cpu/N``: regs, sregs, FPU/XSAVE, XCRs, debug regs, MSRs with the TSC, LAPIC,
  events and MP state of vCPU N
- ``dev/NAME``: ``{"version": DEVICE_STATE_VERSION, "state": device.save()}`` for
  each device of the board's table

``apply`` checks every section it is given (types, shapes, each device's own
field checks) before it restores any of them, and raises StreamError naming
the unfit section. ``describe``/``check_config`` give and compare the facts
two machines must share for a state to fit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvmpy.kvm import abi
from kvmpy.migration.errors import ConfigMismatchError, StreamError
from kvmpy.vcpu.state import VcpuState

if TYPE_CHECKING:
    from kvmpy.boards.pc import PcBoard

log = logging.getLogger(__name__)

DEVICE_STATE_VERSION = 1
VM_SECTIONS = ("vm/clock", "vm/irqchip", "vm/pit")
IRQCHIPS = (abi.IRQCHIP_PIC_MASTER, abi.IRQCHIP_PIC_SLAVE, abi.IRQCHIP_IOAPIC)
Sections = dict[str, Any]


def _show(key: str, value: Any) -> str:
    if key == "memory" and isinstance(value, int):
        return f"{value >> 20} MiB" if value % (1 << 20) == 0 else f"{value} bytes"
    return repr(value)


def _ram_name(name: str) -> str:
    """A RAM block as QEMU names it in its messages: a memory backend by its object id."""
    return name.removeprefix("/objects/")


def _ram_diffs(remote: Any, local: list[dict[str, Any]], there: str) -> list[str]:
    """RAM blocks by name, in QEMU's words where QEMU refuses (a block it lacks, a size that differs)."""
    if not isinstance(remote, list) or not all(isinstance(b, dict) and isinstance(b.get("name"), str) and
                                               type(b.get("size")) is int for b in remote):
        return [f"ram: {remote!r} {there} is not a list of RAM blocks"]
    theirs = {b["name"]: b["size"] for b in remote}
    ours = {b["name"]: b["size"] for b in local}
    diffs = [f'Unknown ramblock "{_ram_name(n)}", cannot accept migration' for n in theirs if n not in ours]
    diffs += [f"Size mismatch: {_ram_name(n)}: {theirs[n]:#x} != {ours[n]:#x}"
              for n in theirs if n in ours and theirs[n] != ours[n]]
    diffs += [f'ramblock "{_ram_name(n)}" is not {there}' for n in ours if n not in theirs]
    return diffs or ([f"ram: the blocks are in another order {there}"] if list(theirs) != list(ours) else [])


def _memhp_diffs(remote: Any, local: dict[str, Any], there: str) -> list[str]:
    """The hotplug window and the DIMMs, each DIMM by its id."""
    if not isinstance(remote, dict) or not isinstance(remote.get("dimms"), list) or \
            not all(isinstance(d, dict) and isinstance(d.get("id"), str) for d in remote["dimms"]):
        return [f"memory-hotplug: {remote!r} {there}, {local!r} here"]
    diffs = [f"memory-hotplug {k}: {remote.get(k)!r} {there}, {local[k]!r} here"
             for k in local if k != "dimms" and remote.get(k) != local[k]]
    theirs, ours = {d["id"]: d for d in remote["dimms"]}, {d["id"]: d for d in local["dimms"]}

    def show(d: dict[str, Any]) -> str:
        return f"DIMM '{d['id']}' (memdev {d.get('memdev')}, slot {d.get('slot')})"

    diffs += [f"{show(d)} {there}, not here" for i, d in theirs.items() if i not in ours]
    diffs += [f"{show(d)} here, not {there}" for i, d in ours.items() if i not in theirs]
    diffs += [f"DIMM '{i}': {d} {there}, {ours[i]} here" for i, d in theirs.items()
              if i in ours and d != ours[i]]
    return diffs


def config_diffs(local: dict[str, Any], remote: dict[str, Any], there: str = "in the stream") -> list[str]:
    """Every difference between two ``VmState.describe()`` results, each in a few words; [] if they fit.

    ``remote`` is the saved side, which the words call ``there`` ("in the stream", "in the snapshot").
    """
    if not isinstance(remote, dict):
        return ["the saved configuration is not a description of a machine"]
    diffs: list[str] = []
    for k in local:
        if remote.get(k) == local[k]:
            continue
        if k == "ram":
            diffs += _ram_diffs(remote.get(k), local[k], there)
        elif k == "memory-hotplug" and k in remote:
            diffs += _memhp_diffs(remote[k], local[k], there)
        else:
            diffs.append(f"{k}: {_show(k, remote.get(k))} {there}, {_show(k, local[k])} here")
    extra = sorted(set(remote) - set(local))
    if extra:
        diffs.append(f"unknown configuration keys {there}: {', '.join(map(str, extra))}")
    return diffs


def check_config(local: dict[str, Any], remote: dict[str, Any]) -> None:
    """Refuse a stream from a differently configured machine, naming every difference."""
    if not isinstance(remote, dict):
        raise ConfigMismatchError("the incoming VM's configuration is not a description of a machine")
    diffs = config_diffs(local, remote)
    if diffs:
        raise ConfigMismatchError("the incoming VM's configuration does not match this machine: "
                                  + "; ".join(diffs))


class VmState:
    """Capture/apply for one board. Both need the board's vCPUs parked (the lifecycle's job)."""

    def __init__(self, board: "PcBoard") -> None:
        self.board = board

    def describe(self) -> dict[str, Any]:
        b = self.board
        cfg = b.config
        d = cfg.debug_exit
        return {
            "arch": cfg.arch, "machine": "pc", "memory": cfg.memory, "smp": cfg.smp,
            "ram": [{"name": r.name, "size": r.size}
                    for r in [b.ram] + (b.memhp.ram_blocks() if b.memhp is not None else [])],
            "devices": sorted(b.devices),
            "debug-exit": None if d is None else [d.iobase, d.iosize],
            "acpi": bool(b.has_acpi),
            **({"memory-hotplug": b.memhp.describe()} if b.memhp is not None and b.memhp.slots else {}),
        }

    def complete_pending_io(self) -> None:
        """Re-enter each parked vCPU with immediate_exit set, so KVM finishes a pending I/O instruction.

        Until then the registers can still point at an IN/OUT whose result was handed
        back but not yet retired, which a restore would execute a second time.
        """
        for v in self.board.vcpus:
            v.set_immediate_exit(True)
            v.run()

    def expected(self, cpu_only: bool = False) -> list[str]:
        """The section names a capture of this board holds, in order."""
        names = ["vm/irqchip", "vm/pit", *(f"cpu/{i}" for i in range(len(self.board.vcpus)))]
        if cpu_only:
            return names
        return ["vm/clock", *names, *(f"dev/{n}" for n in self.board.devices)]

    # ---- capture -----------------------------------------------------------------
    def capture(self, cpu_only: bool = False) -> Sections:
        """Every section (or, with ``cpu_only``, the irqchip, PIT and vCPUs: what reset restores)."""
        b = self.board
        if not cpu_only:
            self.complete_pending_io()
        out: Sections = {}
        if not cpu_only:
            out["vm/clock"] = b.vm.get_clock()
        out["vm/irqchip"] = [b.vm.get_irqchip(c) for c in IRQCHIPS]
        out["vm/pit"] = b.vm.get_pit2()
        for i, v in enumerate(b.vcpus):
            out[f"cpu/{i}"] = b.state_io.save(v).to_data()
        if not cpu_only:
            for name, dev in b.devices.items():
                out[f"dev/{name}"] = {"version": DEVICE_STATE_VERSION, "state": dev.save()}
        return out

    # ---- apply -------------------------------------------------------------------
    def apply(self, sections: Sections, cpu_only: bool = False) -> None:
        """Check every section, then restore them all; StreamError if any is missing, extra or unfit."""
        self.apply_checked(self.check(sections, cpu_only))

    def check(self, sections: Sections, cpu_only: bool = False) -> "CheckedState":
        """Validate and decode every section without applying anything; StreamError if any is unfit.

        A snapshot checks its state once when it is taken and then applies it on every reset.
        """
        want = self.expected(cpu_only)
        missing, unknown = sorted(set(want) - set(sections)), sorted(set(sections) - set(want))
        if missing:
            raise StreamError(f"the stream lacks state for: {', '.join(missing)}")
        if unknown:
            raise StreamError(f"the stream has state for parts this machine lacks: {', '.join(unknown)}")
        vcpus, devices = self._check(sections, cpu_only)
        return CheckedState(self, sections, tuple(vcpus), devices, cpu_only)

    def apply_checked(self, checked: "CheckedState") -> None:
        """Restore a state that ``check()`` of this same VmState accepted."""
        if checked.owner is not self:
            raise StreamError("this state was checked for another machine")
        self._restore(checked.sections, list(checked.vcpus), checked.devices, checked.cpu_only)

    def _check(self, sections: Sections, cpu_only: bool) -> tuple[list[VcpuState], dict[str, Any]]:
        b = self.board
        try:
            vcpus = [VcpuState.from_data(sections[f"cpu/{i}"]) for i in range(len(b.vcpus))]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StreamError(f"a vCPU state section is malformed: {exc}") from None
        for i, s in enumerate(vcpus):
            if s.vcpu_id != i:
                raise StreamError(f"section cpu/{i} holds the state of vCPU {s.vcpu_id}")
        irqchip, pit = sections["vm/irqchip"], sections["vm/pit"]
        if not (isinstance(irqchip, list) and len(irqchip) == 3 and all(isinstance(c, bytes) for c in irqchip)):
            raise StreamError("section vm/irqchip must hold three byte strings (PIC master, slave, IOAPIC)")
        if not isinstance(pit, bytes) or (not cpu_only and not isinstance(sections["vm/clock"], bytes)):
            raise StreamError("sections vm/pit and vm/clock must be byte strings")
        devices: dict[str, Any] = {}
        if cpu_only:
            return vcpus, devices
        for name, dev in b.devices.items():
            sec = sections[f"dev/{name}"]
            if not isinstance(sec, dict) or sec.get("version") != DEVICE_STATE_VERSION or \
                    not isinstance(sec.get("state"), dict) or set(sec) != {"version", "state"}:
                raise StreamError(f"section dev/{name} is not version {DEVICE_STATE_VERSION} device state")
            devices[name] = sec["state"]
        self._check_devices(devices)
        return vcpus, devices

    def _check_devices(self, devices: dict[str, Any]) -> None:
        """Each device judges its own state (types and ranges) before any device is restored."""
        for name, state in devices.items():
            try:
                self.board.devices[name].validate(state)
            except ValueError as exc:
                raise StreamError(f"section dev/{name} cannot be restored: {exc}") from None

    def _restore(self, sections: Sections, vcpus: list[VcpuState], devices: dict[str, Any],
                 cpu_only: bool) -> None:
        b = self.board
        step = "vm/irqchip"
        try:
            for chip in sections["vm/irqchip"]:
                b.vm.set_irqchip(chip)
            step = "vm/pit"
            b.vm.set_pit2(sections["vm/pit"])
            for i, (v, s) in enumerate(zip(b.vcpus, vcpus)):
                step = f"cpu/{i}"
                b.state_io.restore(v, s)
            for name, dev in b.devices.items():
                if name in devices:
                    step = f"dev/{name}"
                    dev.restore(devices[name])
            if not cpu_only:
                step = "vm/clock"
                b.vm.set_clock(sections["vm/clock"])
        except Exception as exc:  # hostile values that KVM refuses
            raise StreamError(f"section {step} cannot be restored: {exc}") from None


@dataclass(frozen=True)
class CheckedState:
    """Sections that ``VmState.check`` validated and decoded for one machine, ready to apply."""
    owner: VmState
    sections: Sections
    vcpus: tuple[VcpuState, ...]
    devices: dict[str, Any]
    cpu_only: bool
