"""The ACPI memory-hotplug controller: QEMU's register block at port 0x0A00 (24 bytes) for DIMM slots.

The register interface is QEMU's (docs/specs/acpi_mem_hotplug.rst), which the
DSDT methods of kvmpy.loader.memhp_aml drive. A write to offset 0 selects a
slot; reads then give that slot's DIMM address (0x0, 0x4), size (0x8, 0xC),
proximity (0x10) and flags (0x14: bit 0 enabled, bit 1 insert event, bit 2
remove event). Writes: _OST event (0x4) and status (0x8, which reports
ACPI_DEVICE_OST), and at 0x14 bit 1/2 clear the insert/remove event and bit 3
ejects the DIMM. ``plug``/``request_unplug`` set an event and raise GPE 3;
``on_ost`` and ``on_eject`` tell the owner (the board) what the guest did.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

from kvmpy.devices.device import DeviceStateError, check_keys, int_field

log = logging.getLogger(__name__)

MEMHP_BASE = 0x0A00
MEMHP_LEN = 24
ADDR_LO, ADDR_HI, SIZE_LO, SIZE_HI, PROXIMITY, FLAGS = 0x0, 0x4, 0x8, 0xC, 0x10, 0x14
SELECTOR, OST_EVENT, OST_STATUS = 0x0, 0x4, 0x8
F_ENABLED, F_INSERTING, F_REMOVING, F_EJECT = 1, 2, 4, 8


@dataclass
class DimmSlot:
    addr: int = 0
    size: int = 0
    node: int = 0
    device: str | None = None
    enabled: bool = False
    inserting: bool = False
    removing: bool = False
    ost_event: int = 0
    ost_status: int = 0

    def flags(self) -> int:
        return (F_ENABLED if self.enabled else 0) | (F_INSERTING if self.inserting else 0) | \
            (F_REMOVING if self.removing else 0)

    def ost_info(self, index: int) -> dict[str, Any]:
        """ACPIOSTInfo, as query-acpi-ospm-status and ACPI_DEVICE_OST give it."""
        info: dict[str, Any] = {}
        if self.device is not None:
            info["device"] = self.device
        info.update({"source": self.ost_event, "status": self.ost_status, "slot": str(index), "slot-type": "DIMM"})
        return info


class MemoryHotplugController:
    """``raise_gpe()`` signals the guest; ``on_ost(info)`` and ``on_eject(slot)`` run in the vCPU thread."""

    def __init__(self, nr_slots: int, raise_gpe: Callable[[], None],
                 on_ost: Callable[[dict[str, Any]], None], on_eject: Callable[[int], None]) -> None:
        self.slots = [DimmSlot() for _ in range(nr_slots)]
        self.raise_gpe = raise_gpe
        self.on_ost = on_ost
        self.on_eject = on_eject
        self.selector = 0
        self._lock = threading.Lock()

    # ---- the board's side -------------------------------------------------------
    def plug(self, slot: int, addr: int, size: int, node: int, device: str | None, hotplug: bool = True) -> None:
        with self._lock:
            s = self.slots[slot]
            s.addr, s.size, s.node, s.device = addr, size, node, device
            s.enabled, s.inserting, s.removing = True, hotplug, False
        if hotplug:
            self.raise_gpe()

    def request_unplug(self, slot: int) -> None:
        with self._lock:
            self.slots[slot].removing = True
        self.raise_gpe()

    def unplug(self, slot: int) -> None:
        with self._lock:
            s = self.slots[slot]
            s.addr = s.size = s.node = 0
            s.device = None
            s.enabled = s.inserting = s.removing = False

    def ospm_status(self) -> list[dict[str, Any]]:
        with self._lock:
            return [s.ost_info(i) for i, s in enumerate(self.slots)]

    # ---- the guest's side -------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        with self._lock:
            if self.selector >= len(self.slots):
                return 0
            s = self.slots[self.selector]
            value = {ADDR_LO: s.addr & 0xFFFFFFFF, ADDR_HI: s.addr >> 32, SIZE_LO: s.size & 0xFFFFFFFF,
                     SIZE_HI: s.size >> 32, PROXIMITY: s.node, FLAGS: s.flags()}.get(offset, 0xFFFFFFFF)
        return value & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        ost = eject = None
        with self._lock:
            if not self.slots:
                return
            if offset == SELECTOR:
                self.selector = value
                return
            if self.selector >= len(self.slots):
                return
            index = self.selector
            s = self.slots[index]
            if offset == OST_EVENT:
                s.ost_event = value
            elif offset == OST_STATUS:
                s.ost_status = value
                ost = s.ost_info(index)
            elif offset == FLAGS:
                if value & F_INSERTING:
                    s.inserting = False
                if value & F_REMOVING:
                    s.removing = False
                if value & F_EJECT:
                    if s.enabled:
                        eject = index
                    else:
                        log.debug("memory hotplug: eject of empty slot %d ignored", index)
        if ost is not None:
            self.on_ost(ost)
        if eject is not None:
            self.on_eject(eject)

    # ---- device protocol ---------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            self.selector = 0  # plugged DIMMs stay plugged across a reset, as on real hardware

    _SLOT_KEYS = {"addr", "size", "node", "device", "enabled", "inserting", "removing", "ost_event", "ost_status"}

    def save(self) -> dict[str, Any]:
        with self._lock:
            return {"selector": self.selector,
                    "slots": [{k: getattr(s, k) for k in sorted(self._SLOT_KEYS)} for s in self.slots]}

    def validate(self, state: dict[str, Any]) -> tuple[int, list[DimmSlot]]:
        check_keys(state, {"selector", "slots"})
        selector = int_field(state, "selector", 0, 0xFFFFFFFF)
        slots = state["slots"]
        if not isinstance(slots, list) or len(slots) != len(self.slots):
            raise DeviceStateError(f"slots must be a list of {len(self.slots)} DIMM slots")
        out = []
        for raw in slots:
            check_keys(raw, self._SLOT_KEYS)
            dev = raw["device"]
            if dev is not None and (not isinstance(dev, str) or len(dev) > 256):
                raise DeviceStateError("a slot's device must be a DIMM id or None")
            flags = [raw[k] for k in ("enabled", "inserting", "removing")]
            if any(type(f) is not bool for f in flags):
                raise DeviceStateError("a slot's enabled/inserting/removing must be booleans")
            out.append(DimmSlot(int_field(raw, "addr", 0, (1 << 64) - 1), int_field(raw, "size", 0, (1 << 64) - 1),
                                int_field(raw, "node", 0, 0xFFFFFFFF), dev, *flags,
                                int_field(raw, "ost_event", 0, 0xFFFFFFFF), int_field(raw, "ost_status", 0, 0xFFFFFFFF)))
        return selector, out

    def restore(self, state: dict[str, Any]) -> None:
        selector, slots = self.validate(state)
        with self._lock:
            self.selector, self.slots = selector, slots
