"""Piix3: the PIIX3 PCI-to-ISA bridge function (8086:7000, class 0601) at 01.0, with PIRQ routing.

Registers 0x60-0x63 (PIRQRC[A-D]) route the four PCI interrupt lines to ISA
IRQs: bit 7 set disables the route, bits 0-3 name the IRQ. As on QEMU's pc,
INTx pin P of slot S drives PIRQ (S - 1 + P) mod 4, and an IRQ is asserted
while any enabled PIRQ routed to it is asserted (lines are shared, level
triggered). Power-on values are QEMU's; the ACPI link devices LNKA-LNKD read
and write these registers through a PCI_Config operation region.
"""

from __future__ import annotations

import logging
from typing import Callable

from kvmpy.devices.irq import IrqLine
from kvmpy.devices.pci.device import PciDevice, PciIdentity

log = logging.getLogger(__name__)

VENDOR_INTEL, DEVICE_PIIX3 = 0x8086, 0x7000
CLASS_ISA_BRIDGE = 0x0601
PIRQRC = 0x60
NUM_PIRQS = 4
ROUTE_DISABLED = 0x80
NUM_ISA_IRQS = 16
POWER_ON = {0x06: 0x00, 0x07: 0x02, 0x4C: 0x4D, 0x4E: 0x03, **{PIRQRC + i: ROUTE_DISABLED for i in range(4)},
            0x69: 0x02, 0x70: 0x80, 0x76: 0x0C, 0x77: 0x0C, 0x78: 0x02, 0xA0: 0x08, 0xA8: 0x0F}


def pirq_of(slot: int, pin: int) -> int:
    """The PIRQ line (0=A .. 3=D) that INTx ``pin`` (0=A) of ``slot`` drives."""
    return (slot - 1 + pin) & 3


class Piix3(PciDevice):
    """``irq_line(n)`` gives the line of ISA IRQ n (KVM_IRQ_LINE on a PC)."""

    def __init__(self, irq_line: Callable[[int], IrqLine]) -> None:
        self.irq_line = irq_line
        self.pirq_sources: list[set[tuple[int, int]]] = [set() for _ in range(NUM_PIRQS)]
        self.irq_levels = [False] * NUM_ISA_IRQS
        super().__init__("PIIX3", PciIdentity(VENDOR_INTEL, DEVICE_PIIX3, CLASS_ISA_BRIDGE, multifunction=True))

    def init_config(self) -> None:
        for reg, value in POWER_ON.items():
            self.config[reg] = value

    def route(self, pirq: int) -> int | None:
        """The ISA IRQ PIRQ ``pirq`` is routed to, or None when disabled."""
        value = self.config[PIRQRC + pirq]
        return None if value & ROUTE_DISABLED else value & 0x0F

    # INTx from the bus (every function's pins arrive here)
    def set_intx(self, slot: int, pin: int, level: bool) -> None:
        with self._lock:
            sources = self.pirq_sources[pirq_of(slot, pin)]
            if level:
                sources.add((slot, pin))
            else:
                sources.discard((slot, pin))
            self._update_irqs()

    def _update_irqs(self) -> None:
        want = [False] * NUM_ISA_IRQS
        for pirq in range(NUM_PIRQS):
            irq = self.route(pirq)
            if irq is not None and self.pirq_sources[pirq]:
                want[irq] = True
        for irq, (old, new) in enumerate(zip(self.irq_levels, want)):
            if old != new:
                self.irq_levels[irq] = new
                try:
                    self.irq_line(irq).set_level(new)
                except OSError as exc:
                    log.warning("PIIX3: cannot drive IRQ %d: %s", irq, exc)

    def config_written(self, old: bytes, addr: int, size: int) -> None:
        if addr < PIRQRC + NUM_PIRQS and PIRQRC < addr + size:
            self._update_irqs()

    def config_restored(self) -> None:
        with self._lock:
            self._update_irqs()

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self._update_irqs()
