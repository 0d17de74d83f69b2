"""Memory hotplug on the PC board: memory backends, pc-dimms in the device-memory window, ACPI signalling.

``PcMemoryHotplug`` owns the machine's memory-backend objects
(kvmpy.memory.backend), the hotplug window and its DIMMs (kvmpy.memory.dimm)
and the ACPI memory-hotplug controller (kvmpy.devices.acpi_memhp) with GPE 3.
``plug`` checks a DIMM (QEMU's rules and messages), maps its backend's RAM into
the guest (a KVM slot like all RAM, so it is dirty-logged and migrated) and
tells the guest; ``request_unplug`` asks the guest to eject, and the guest's
eject (MEJ0) unmaps the DIMM and reports DEVICE_DELETED through ``emit``.
Guest _OST reports become ACPI_DEVICE_OST. Without ``-m slots=`` there is no
window, and pc-dimm is refused as QEMU refuses it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from kvmpy.errors import ConfigError
from kvmpy.devices.acpi_gpe import GPE_MEMORY_HOTPLUG, AcpiGpe
from kvmpy.devices.acpi_memhp import MemoryHotplugController
from kvmpy.memory.address_space import AddressSpace
from kvmpy.memory.backend import Backends, BackendError, HostMemoryBackend
from kvmpy.memory.dimm import DeviceMemory, DimmError, PcDimm, device_memory_window
from kvmpy.memory.ramblock import RAMBlock
from kvmpy.memory.region import MemoryRegion

log = logging.getLogger(__name__)

Emit = Callable[[str, "dict[str, Any] | None"], None]


class NotFound(LookupError):
    """A device or object id that does not exist (QMP's DeviceNotFound)."""


class PcMemoryHotplug:
    def __init__(self, root: MemoryRegion, address_space: AddressSpace, gpe: AcpiGpe, emit: Emit,
                 ram_size: int, ram_above_4g: int, slots: int, maxmem: int | None) -> None:
        self.root = root
        self.address_space = address_space
        self.gpe = gpe
        self.emit = emit
        self.ram_size = ram_size
        self.backends = Backends()
        self.lock = threading.RLock()
        self.regions: dict[int, MemoryRegion] = {}  # id(PcDimm) -> its RAM region in the guest
        self.window: DeviceMemory | None = None
        if maxmem is not None and maxmem > ram_size:
            base, size = device_memory_window(ram_above_4g, ram_size, maxmem, slots)
            self.window = DeviceMemory(base, size, slots, maxmem - ram_size)
        self.controller = MemoryHotplugController(slots if self.window else 0,
                                                  lambda: gpe.raise_event(GPE_MEMORY_HOTPLUG),
                                                  self._on_ost, self._on_eject)

    @property
    def slots(self) -> int:
        return self.window.slots if self.window else 0

    @property
    def dimms(self) -> list[PcDimm]:
        with self.lock:
            return sorted(self.window.dimms, key=lambda d: d.slot) if self.window else []

    @property
    def plugged_size(self) -> int:
        return sum(d.size for d in self.dimms)

    def ram_blocks(self) -> list[RAMBlock]:
        """Every plugged DIMM's RAM, in slot order (what migration and snapshots carry besides pc.ram)."""
        return [d.backend.block for d in self.dimms]

    # ---- objects ---------------------------------------------------------------
    def object_add(self, qom_type: str, obj_id: str, props: dict[str, Any]) -> HostMemoryBackend:
        return self.backends.add(qom_type, obj_id, props)

    def object_del(self, obj_id: str) -> None:
        self.backends.delete(obj_id)

    # ---- DIMMs -------------------------------------------------------------------
    def plug(self, dev_id: str | None, memdev: str | None, addr: int | None = None, slot: int | None = None,
             node: int = 0, hotplug: bool = True) -> PcDimm:
        """Check, map and announce one pc-dimm; DimmError/BackendError (nothing changed) or NotFound."""
        if memdev is None:
            raise DimmError("'memdev' property must be set")
        backend = self.backends.get(memdev)
        if backend is None:
            raise NotFound(f"Device '{memdev}' not found")
        with self.lock:
            if self.window is None or not self.window.slots:  # QEMU checks the slot first
                raise DimmError("no slots where allocated, please specify the 'slots' option")
            if node != 0:
                raise DimmError(f"'DIMM property node has value {node}' which exceeds the number of numa nodes: 1")
            at, s = self.window.plan(backend, addr, slot)
            if backend.used_by is not None:
                raise DimmError(f"can't use already busy memdev: {memdev}")
            dimm = PcDimm(dev_id, backend, at, s, node, hotplugged=hotplug)
            region = MemoryRegion.ram_region(f"dimm:{dev_id or s}", backend.block, 0, backend.size)
            self.root.add_subregion(at, region)
            self.address_space.commit()
            backend.used_by = dev_id or f"slot{s}"
            self.window.add(dimm)
            self.regions[id(dimm)] = region
        log.info("pc-dimm %s: %d MiB at %#x, slot %d", dev_id, backend.size >> 20, at, s)
        self.controller.plug(s, at, backend.size, node, dev_id, hotplug)
        return dimm

    def find(self, dev_id: str) -> PcDimm | None:
        with self.lock:
            return self.window.find(dev_id) if self.window else None

    def request_unplug(self, dev_id: str) -> None:
        """device_del: ask the guest to eject the DIMM (it may refuse: then nothing happens)."""
        dimm = self.find(dev_id)
        if dimm is None:
            raise NotFound(f"Device '{dev_id}' not found")
        self.controller.request_unplug(dimm.slot)

    def _on_eject(self, slot: int) -> None:
        with self.lock:
            dimm = self.window.by_slot(slot) if self.window else None
            if dimm is None:
                return
            self.root.del_subregion(self.regions.pop(id(dimm)))
            self.address_space.commit()
            self.window.remove(dimm)
            dimm.backend.used_by = None
        self.controller.unplug(slot)
        log.info("pc-dimm %s ejected by the guest", dimm.id)
        data: dict[str, Any] = {"path": f"/machine/peripheral/{dimm.id}" if dimm.id else
                                f"/machine/peripheral-anon/device[{slot}]"}
        if dimm.id:
            data = {"device": dimm.id, **data}
        self.emit("DEVICE_DELETED", data)

    def _on_ost(self, info: dict[str, Any]) -> None:
        self.emit("ACPI_DEVICE_OST", {"info": info})

    def describe(self) -> dict[str, Any]:
        """What a migration destination must match: the objects and DIMMs, by name."""
        return {"slots": self.slots, "maxmem": self.ram_size + (self.window.limit if self.window else 0),
                "dimms": [{"id": d.id, "memdev": d.backend.id, "size": d.size, "addr": d.addr, "slot": d.slot}
                          for d in self.dimms]}


def _int_prop(spec: Any, key: str) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    try:
        return int(value, 0) if isinstance(value, str) else int(value)
    except ValueError:
        raise ConfigError(f"{spec.source or '-device pc-dimm'}: Parameter '{key}' expects an integer") from None


def cold_plug(memhp: PcMemoryHotplug, config: Any) -> None:
    """The memory backends of ``-object`` and the DIMMs of ``-device pc-dimm``, present at power-on.

    A refused one is a ConfigError naming the option, with QEMU's message.
    """
    for obj in config.objects:
        if obj.qom_type not in ("memory-backend-ram", "memory-backend-file"):
            continue
        try:
            memhp.object_add(obj.qom_type, obj.id, dict(obj.props))
        except BackendError as exc:
            raise ConfigError(f"{obj.source or '-object ' + obj.qom_type}: {exc}") from None
    for dev in config.devices:
        if dev.driver != "pc-dimm":
            continue
        try:
            node = _int_prop(dev, "node")
            memhp.plug(dev.id, dev.get("memdev"), _int_prop(dev, "addr"), _int_prop(dev, "slot"),
                       node or 0, hotplug=False)
        except (DimmError, BackendError, NotFound) as exc:
            raise ConfigError(f"{dev.source or '-device pc-dimm'}: {exc}") from None


__all__ = ["PcMemoryHotplug", "NotFound", "DimmError", "BackendError", "cold_plug"]
