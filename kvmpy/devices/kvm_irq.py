"""KvmIrqLine: an IrqLine wired to a GSI of KVM's in-kernel irqchip through KVM_IRQ_LINE."""

from __future__ import annotations

from dataclasses import dataclass

from kvmpy.kvm.vm import VmFd


@dataclass
class KvmIrqLine:
    vm: VmFd
    gsi: int

    def set_level(self, level: bool) -> None:
        self.vm.irq_line(self.gsi, 1 if level else 0)

    def pulse(self) -> None:
        self.set_level(True)
        self.set_level(False)
