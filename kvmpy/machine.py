"""Machine: builds and owns one x86 KVM virtual machine (memory, vCPUs, buses, devices) and runs it.

Data flows one way: a validated MachineConfig goes in; the Machine creates the
VM, lays out RAM through the memory layer, wires the PC devices onto the
port-I/O bus, loads the kernel and starts one thread per vCPU. Devices and
vCPU threads report to the Machine through callbacks that only enqueue an
event; the thread that called ``run()`` acts on them (stop, reset, exit).
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from kvmpy.config import MachineConfig
from kvmpy.devices.bus import Bus, OffsetDevice
from kvmpy.devices.chardev import CharBackend, open_backend
from kvmpy.devices.debug_exit import DebugExit
from kvmpy.devices.i8042 import I8042
from kvmpy.devices.kvm_irq import KvmIrqLine
from kvmpy.devices.port80 import Port80
from kvmpy.devices.rtc import CmosRtc
from kvmpy.devices.serial import Uart16550
from kvmpy.kvm import abi
from kvmpy.kvm.system import Kvm
from kvmpy.loader.e820 import FOUR_GIB, pc_e820, split_ram
from kvmpy.loader.multiboot import BootEntry, load_multiboot
from kvmpy.memory.address_space import AddressSpace
from kvmpy.memory.guest_memory import GuestMemory
from kvmpy.memory.kvm_slots import KvmSlots
from kvmpy.memory.ramblock import RAMBlock
from kvmpy.memory.region import MemoryRegion
from kvmpy.vcpu.cpuid import vcpu_cpuid
from kvmpy.vcpu.state import VcpuState, VcpuStateIO
from kvmpy.vcpu.thread import StopReason, VcpuEvent, VcpuThread, install_kick_handler
from kvmpy.vcpu.x86 import apply_msrs, baseline_msrs, set_flat_protected_mode

log = logging.getLogger(__name__)

# The same pages QEMU uses (and reserves in e820): identity map, then a 3-page TSS.
IDENTITY_MAP_ADDR = 0xFEFFC000
TSS_ADDR = 0xFEFFD000
ADDRESS_SPACE_SIZE = 1 << 52
COM1_PORT, COM1_IRQ = 0x3F8, 4
GDT_ADDR = 0x500
# null, null, flat 32-bit code (0x10), flat data (0x18): QEMU's multiboot ROM selectors.
BOOT_GDT = (0, 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF)


class RunState(enum.Enum):
    PRELAUNCH = "prelaunch"
    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"
    INTERNAL_ERROR = "internal-error"


@dataclass(frozen=True)
class MachineEvent:
    kind: str  # "exit", "reset", "poweroff", "error", "quit"
    status: int = 0
    message: str = ""


class Machine:
    """One VM. ``run()`` blocks until the guest ends and returns the process exit status."""

    def __init__(self, config: MachineConfig, console: CharBackend | None = None) -> None:
        self.config = config
        self.events: queue.Queue[MachineEvent] = queue.Queue()
        self.state = RunState.PRELAUNCH
        self._lock = threading.Lock()
        install_kick_handler()
        self.kvm = Kvm.open()
        self.vm = self.kvm.create_vm()
        self.vm.set_tss_addr(TSS_ADDR)
        self.vm.set_identity_map_addr(IDENTITY_MAP_ADDR)
        self.vm.create_irqchip()
        self.vm.create_pit2()
        supported = self.kvm.supported_cpuid()
        self.amd = any(e.function == 0 and e.ebx == 0x68747541 for e in supported)  # "Auth"enticAMD

        self._build_memory()
        self.console = console if console is not None else open_backend(config.serial)
        self._build_devices()
        self._build_vcpus(supported)
        self.boot = self._load_kernel()
        self._initial = self.save_cpu_state()

    # ---- construction ------------------------------------------------------
    def _build_memory(self) -> None:
        size = self.config.memory
        self.ram = RAMBlock.allocate("pc.ram", size)
        self.root = MemoryRegion.container("system", ADDRESS_SPACE_SIZE)
        below, above = split_ram(size)
        ram_region = MemoryRegion.ram_region("pc.ram", self.ram)
        self.root.add_subregion(0, MemoryRegion.alias("ram-below-4g", ram_region, 0, below))
        if above:
            self.root.add_subregion(FOUR_GIB, MemoryRegion.alias("ram-above-4g", ram_region, below, above))
        self.address_space = AddressSpace("system", self.root)
        self.slots = KvmSlots(self.vm, self.kvm.check_extension(abi.CAP_NR_MEMSLOTS) or 32)
        self.address_space.add_listener(self.slots)
        self.address_space.commit()
        self.memory = GuestMemory(self.address_space)
        self.e820 = pc_e820(size, self.amd)

    def _build_devices(self) -> None:
        self.pio = Bus("pio")
        self.serial = Uart16550(output=self.console.write, irq=KvmIrqLine(self.vm, COM1_IRQ))
        if self.config.serial != "none":  # QEMU's "-serial none" means no COM1 device at all
            self.pio.map(COM1_PORT, 8, self.serial, "serial0")
        self.i8042 = I8042(on_reset=lambda: self._post(MachineEvent("reset", message="i8042 reset")),
                           kbd_irq=KvmIrqLine(self.vm, 1), aux_irq=KvmIrqLine(self.vm, 12))
        self.pio.map(0x60, 1, self.i8042, "i8042-data")
        self.pio.map(0x64, 1, OffsetDevice(self.i8042, 4), "i8042-cmd")
        below, above = split_ram(self.config.memory)
        self.rtc = CmosRtc(ram_below_4g=below, ram_above_4g=above)
        self.pio.map(0x70, 2, self.rtc, "rtc")
        self.port80 = Port80()
        self.pio.map(0x80, 1, self.port80, "port80")
        if self.kvm.check_extension(abi.CAP_COALESCED_PIO):
            # Writes to 0x80 have no effect, so KVM may batch them instead of exiting.
            self.vm.register_coalesced(0x80, 1, pio=True)
        self.debug_exit: DebugExit | None = None
        if self.config.debug_exit is not None:
            d = self.config.debug_exit
            self.debug_exit = DebugExit(on_exit=lambda status: self._post(MachineEvent("exit", status)),
                                        iosize=d.iosize)
            self.pio.map(d.iobase, d.iosize, self.debug_exit, "isa-debug-exit")
        self.devices: dict[str, Any] = {"serial0": self.serial, "i8042": self.i8042, "rtc": self.rtc,
                                        "port80": self.port80}
        if self.debug_exit:
            self.devices["isa-debug-exit"] = self.debug_exit

    def _build_vcpus(self, supported: list) -> None:
        n = self.config.smp
        if n > self.kvm.max_vcpus():
            raise ValueError(f"-smp {n} exceeds this host's KVM limit of {self.kvm.max_vcpus()} vCPUs")
        msr_list = self.kvm.msr_index_list()
        self.state_io = VcpuStateIO(msr_list)
        msrs = baseline_msrs(set(msr_list))
        self.vcpus = []
        for i in range(n):
            vcpu = self.vm.create_vcpu(i)
            vcpu.set_cpuid(vcpu_cpuid(supported, i, n))
            apply_msrs(vcpu, msrs)
            self.vcpus.append(vcpu)
        self.threads = [VcpuThread(v, self.pio, self.address_space.mmio_read, self.address_space.mmio_write,
                                   self._on_vcpu_event) for v in self.vcpus]

    def _load_kernel(self) -> BootEntry:
        cfg = self.config
        assert cfg.kernel is not None
        modules = [m for m in str(cfg.initrd).split(",")] if cfg.initrd else []
        boot = load_multiboot(cfg.kernel, cfg.append, self.memory, self.e820, modules)
        gdt = b"".join(d.to_bytes(8, "little") for d in BOOT_GDT)
        self.memory.write(GDT_ADDR, gdt)
        set_flat_protected_mode(self.vcpus[0], boot.entry, boot.eax, boot.ebx,
                                gdt_base=GDT_ADDR, gdt_limit=len(gdt) - 1)
        return boot

    # ---- events -------------------------------------------------------------
    def _post(self, event: MachineEvent) -> None:
        # Called from vCPU threads: freeze every vCPU at once so the guest does
        # not run on past an exit or reset request, then let run() decide.
        for t in self.threads:
            t.pause(wait=False)
        self.events.put(event)

    def _on_vcpu_event(self, ev: VcpuEvent) -> None:
        kinds = {StopReason.POWEROFF: "poweroff", StopReason.RESET: "reset", StopReason.ERROR: "error",
                 StopReason.CRASH: "error"}
        msg = ev.message if ev.reason is not StopReason.CRASH else f"guest reported a crash ({ev.message})"
        self._post(MachineEvent(kinds[ev.reason], 1 if kinds[ev.reason] == "error" else 0, msg))

    def request_quit(self, status: int = 0) -> None:
        self._post(MachineEvent("quit", status))

    # ---- lifecycle --------------------------------------------------------
    def start(self) -> None:
        self.console.start(self.serial.receive, lambda: self._post(MachineEvent("quit", 0)))
        for t in self.threads:
            t.start()
        if not self.config.start_paused:
            self.resume()
        else:
            self.state = RunState.PAUSED

    def pause(self) -> None:
        for t in self.threads:
            t.pause(wait=False)
        for t in self.threads:
            t.pause(wait=True)
        if self.state is RunState.RUNNING:
            self.state = RunState.PAUSED

    def resume(self) -> None:
        self.state = RunState.RUNNING
        for t in self.threads:
            t.resume()

    def reset(self) -> None:
        """Back to power-on: vCPUs, irqchip and devices reset, the kernel reloaded (RAM is kept)."""
        was_running = self.state is RunState.RUNNING
        self.pause()
        self.restore_cpu_state(self._initial)
        self.serial.reset()
        self.i8042.reset_state()
        self.boot = self._load_kernel()
        if was_running:
            self.resume()

    def run(self, timeout: float | None = None) -> int:
        """Start the VM and serve its events until it ends; returns the exit status.

        With ``timeout`` (seconds), a VM still running by then is stopped and
        TimeoutError is raised: for tests and scripts that must not hang.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self.start()
        try:
            while True:
                try:
                    ev = self.events.get(timeout=0.5)
                except queue.Empty:
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(f"the VM was still running after {timeout} s") from None
                    continue
                if ev.kind == "reset" and not self.config.no_reboot:
                    log.info("guest reset (%s)", ev.message or "reset request")
                    self.state = RunState.RUNNING  # reset() resumes a VM that was running
                    self.reset()
                    continue
                if ev.kind == "error":
                    self.state = RunState.INTERNAL_ERROR
                    log.error("%s", ev.message)
                    return 1
                self.state = RunState.SHUTDOWN
                return ev.status
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        for t in self.threads:
            t.stop(wait=False)
        for t in self.threads:
            t.stop(wait=True)
        self.console.close()

    def close(self) -> None:
        self.shutdown()
        for v in self.vcpus:
            v.close()
        self.vm.close()
        self.kvm.close()

    # ---- state ------------------------------------------------------------
    def save_cpu_state(self) -> dict[str, Any]:
        """vCPUs plus the in-kernel PIC, IOAPIC and PIT; the vCPUs must not be running."""
        return {
            "vcpus": [self.state_io.save(v) for v in self.vcpus],
            "irqchip": [self.vm.get_irqchip(c) for c in (abi.IRQCHIP_PIC_MASTER, abi.IRQCHIP_PIC_SLAVE,
                                                          abi.IRQCHIP_IOAPIC)],
            "pit": self.vm.get_pit2(),
        }

    def restore_cpu_state(self, state: dict[str, Any]) -> None:
        for raw in state["irqchip"]:
            self.vm.set_irqchip(raw)
        self.vm.set_pit2(state["pit"])
        for v, s in zip(self.vcpus, state["vcpus"]):
            self.state_io.restore(v, s if isinstance(s, VcpuState) else VcpuState.from_data(s))

    def save_devices(self) -> dict[str, Any]:
        return {name: dev.save() for name, dev in self.devices.items()}

    def restore_devices(self, state: dict[str, Any]) -> None:
        for name, dev in self.devices.items():
            if name in state:
                dev.restore(state[name])
