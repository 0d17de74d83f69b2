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
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from kvmpy.config import MachineConfig
from kvmpy.devices.acpi_pm import BLOCK_SIZE as PM_BLOCK_SIZE, AcpiPm, ResetControl
from kvmpy.devices.bus import Bus, OffsetDevice
from kvmpy.devices.chardev import CharBackend, open_backend
from kvmpy.devices.debug_exit import DebugExit
from kvmpy.devices.i8042 import I8042
from kvmpy.devices.kvm_irq import KvmIrqLine
from kvmpy.devices.port80 import Port80
from kvmpy.devices.rtc import CmosRtc
from kvmpy.devices.serial import Uart16550
from kvmpy.kvm import abi
from kvmpy.kvm.flavor import KvmKind, host_kvm_kind
from kvmpy.kvm.system import Kvm
from kvmpy.loader import acpi
from kvmpy.loader.e820 import FOUR_GIB, HIGH_TABLES, pc_e820, split_ram
from kvmpy.loader.linux import EntryMode, KernelFormat, LinuxBoot, detect_format, load_linux, prepare_kernel
from kvmpy.loader.multiboot import BootEntry, load_multiboot
from kvmpy.memory.address_space import AddressSpace
from kvmpy.memory.guest_memory import GuestMemory
from kvmpy.memory.kvm_slots import KvmSlots
from kvmpy.memory.ramblock import RAMBlock
from kvmpy.memory.region import MemoryRegion
from kvmpy.vcpu.cpuid import vcpu_cpuid
from kvmpy.vcpu.state import VcpuState, VcpuStateIO
from kvmpy.vcpu.thread import StopReason, VcpuEvent, VcpuThread, install_kick_handler
from kvmpy.vcpu.x86 import apply_msrs, baseline_msrs, set_flat_protected_mode, set_long_mode

log = logging.getLogger(__name__)

# The same pages QEMU uses (and reserves in e820): identity map, then a 3-page TSS.
IDENTITY_MAP_ADDR = 0xFEFFC000
TSS_ADDR = 0xFEFFD000
ADDRESS_SPACE_SIZE = 1 << 52
COM1_PORT, COM1_IRQ = 0x3F8, 4
GDT_ADDR = 0x500
# null, null, flat 32-bit code (0x10), flat data (0x18): QEMU's multiboot ROM selectors.
BOOT_GDT = (0, 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF)
RSDP_ADDR = 0xF0000  # in the BIOS area, where a kernel without boot_params.acpi_rsdp_addr scans
PVM_WARNING = ("this host's /dev/kvm is PVM-based (kvm_pvm), which emulates guest ring 0 and hangs on "
               "instructions Linux uses (cmpxchg16b, xrstor, int3), so this Linux kernel will hang here; "
               "it boots on a hardware-backed KVM (kvm-intel/kvm-amd), e.g. in the nested bed: "
               "python -m kvmpy.testbed -- kvmpy ...")


class RunState(enum.Enum):
    """QEMU's RunState names (query-status reports ``value``)."""
    PRELAUNCH = "prelaunch"  # built, vCPUs never started (-S)
    RUNNING = "running"
    PAUSED = "paused"  # stopped by the user (QMP stop)
    SHUTDOWN = "shutdown"  # the guest ended or quit was requested
    INTERNAL_ERROR = "internal-error"  # a vCPU cannot continue; needs a reset
    GUEST_PANICKED = "guest-panicked"
    INMIGRATE = "inmigrate"  # waiting for an incoming migration
    POSTMIGRATE = "postmigrate"  # migrated away; may not resume without a reset
    FINISH_MIGRATE = "finish-migrate"  # paused for the last migration pass


# States from which "cont" must refuse, as QEMU's runstate_needs_reset().
NEEDS_RESET = frozenset({RunState.INTERNAL_ERROR, RunState.SHUTDOWN, RunState.GUEST_PANICKED})
# QEMU's SHUTDOWN/RESET event reasons (qapi ShutdownCause) for what ends or resets a kvmpy VM.
SHUTDOWN_REASONS = {"poweroff": "guest-shutdown", "reset": "guest-reset", "quit": "host-qmp-quit"}
EventListener = Callable[[str, "dict[str, Any] | None"], None]


@dataclass(frozen=True)
class MachineEvent:
    kind: str  # "exit", "reset", "poweroff", "error", "quit"
    status: int = 0
    message: str = ""
    guest: bool = True  # caused by the guest (False: by the host, e.g. a QMP command)


class Machine:
    """One VM. ``run()`` blocks until the guest ends and returns the process exit status."""

    def __init__(self, config: MachineConfig, console: CharBackend | None = None) -> None:
        self.config = config
        self.events: queue.Queue[MachineEvent] = queue.Queue()
        self.state = RunState.PRELAUNCH
        self._lock = threading.Lock()
        # Serialises run-state changes made from the run loop, the monitor and tests.
        self._lifecycle = threading.RLock()
        self._listeners: list[EventListener] = []
        install_kick_handler()
        self.kvm = Kvm.open()
        self.vm = self.kvm.create_vm()
        self.vm.set_tss_addr(TSS_ADDR)
        self.vm.set_identity_map_addr(IDENTITY_MAP_ADDR)
        self.vm.create_irqchip()
        self.vm.create_pit2()
        supported = self.kvm.supported_cpuid()
        self.amd = any(e.function == 0 and e.ebx == 0x68747541 for e in supported)  # "Auth"enticAMD

        assert config.kernel is not None
        self.kernel_format = detect_format(config.kernel)
        self.linux = None if self.kernel_format is KernelFormat.MULTIBOOT else \
            prepare_kernel(config.kernel, config.linux_boot)
        if self.linux is not None and host_kvm_kind() is KvmKind.PVM:
            log.warning(PVM_WARNING)
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
        # ACPI fixed hardware: PM1 block + PM timer (SCI on IRQ 9) and the reset register.
        self.acpi_pm = AcpiPm(on_poweroff=lambda: self._post(MachineEvent("poweroff", 0, "ACPI S5")),
                              sci=KvmIrqLine(self.vm, acpi.SCI_IRQ), s5_type=acpi.SLP_TYP_S5)
        self.pio.map(acpi.PM_BASE, PM_BLOCK_SIZE, self.acpi_pm, "acpi-pm")
        self.reset_control = ResetControl(on_reset=lambda: self._post(MachineEvent("reset", message="0xcf9 reset")))
        self.pio.map(acpi.RESET_PORT, 1, self.reset_control, "reset-control")
        self.devices: dict[str, Any] = {"serial0": self.serial, "i8042": self.i8042, "rtc": self.rtc,
                                        "port80": self.port80, "acpi-pm": self.acpi_pm,
                                        "reset-control": self.reset_control}
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

    def _load_kernel(self) -> BootEntry | LinuxBoot:
        cfg = self.config
        assert cfg.kernel is not None
        if self.linux is not None:
            return self._load_linux()
        modules = [m for m in str(cfg.initrd).split(",")] if cfg.initrd else []
        boot = load_multiboot(cfg.kernel, cfg.append, self.memory, self.e820, modules)
        gdt = b"".join(d.to_bytes(8, "little") for d in BOOT_GDT)
        self.memory.write(GDT_ADDR, gdt)
        set_flat_protected_mode(self.vcpus[0], boot.entry, boot.eax, boot.ebx,
                                gdt_base=GDT_ADDR, gdt_limit=len(gdt) - 1)
        return boot

    def _load_linux(self) -> LinuxBoot:
        """ACPI tables in the firmware-reserved top of low RAM, then the kernel; sets up vCPU 0."""
        assert self.linux is not None
        below, _ = split_ram(self.config.memory)
        tables = acpi.build_tables(below - HIGH_TABLES, self.config.smp)
        self.memory.write(tables.base, tables.blob)
        self.memory.write(RSDP_ADDR, tables.rsdp)
        boot = load_linux(self.linux, self.config.append, self.config.initrd, self.memory, self.e820, RSDP_ADDR)
        if boot.mode is EntryMode.LONG64:
            set_long_mode(self.vcpus[0], boot.entry, boot.params, boot.cr3,
                          gdt_base=boot.gdt_base, gdt_limit=boot.gdt_limit)
        else:
            set_flat_protected_mode(self.vcpus[0], boot.entry, 0, boot.params,
                                    gdt_base=boot.gdt_base, gdt_limit=boot.gdt_limit)
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

    def request_quit(self, status: int = 0, reason: str = "host-qmp-quit") -> None:
        """End the VM from the host; ``reason`` is the SHUTDOWN event's (QEMU's names: host-signal, ...)."""
        self._post(MachineEvent("quit", status, message=reason, guest=False))

    def request_reset(self) -> None:
        """A host-side reset (QMP system_reset): run() performs it and emits RESET."""
        self._post(MachineEvent("reset", message="host-qmp-system-reset", guest=False))

    def add_event_listener(self, listener: EventListener) -> None:
        """``listener(name, data)`` hears QMP-style events (STOP, RESUME, RESET, SHUTDOWN, POWERDOWN).

        It is called from whichever thread changed the state, so it must only enqueue.
        """
        self._listeners.append(listener)

    def remove_event_listener(self, listener: EventListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _emit(self, name: str, data: dict[str, Any] | None = None) -> None:
        for listener in list(self._listeners):
            try:
                listener(name, data)
            except Exception:  # a broken listener must not take the VM down
                log.exception("event listener failed on %s", name)

    @property
    def has_acpi(self) -> bool:
        """Only Linux boots get ACPI tables; a multiboot guest cannot see the PM device."""
        return getattr(self, "linux", None) is not None

    def system_powerdown(self) -> None:
        """Press the ACPI power button (PWRBTN_STS + SCI); the guest decides what to do."""
        if not self.has_acpi:
            raise RuntimeError("this machine has no ACPI (a multiboot guest), so it has no power button "
                               "to press; use system_reset or quit")
        self._emit("POWERDOWN")
        self.acpi_pm.press_power_button()

    # ---- lifecycle --------------------------------------------------------
    def start(self) -> None:
        """Start the vCPU threads; they run unless -S asked to stay in prelaunch until ``resume()``."""
        self.console.start(self.serial.receive, lambda: self._post(MachineEvent("quit", 0, guest=False)))
        for t in self.threads:
            t.start()
        if not self.config.start_paused:
            self.resume()

    def _pause_vcpus(self) -> None:
        for t in self.threads:
            t.pause(wait=False)
        for t in self.threads:
            t.pause(wait=True)

    def pause(self, state: RunState = RunState.PAUSED) -> bool:
        """Stop every vCPU (their state is kept) and enter ``state``; emits STOP if it was running."""
        with self._lifecycle:
            self._pause_vcpus()
            if self.state is not RunState.RUNNING:
                return False
            self.state = state
        self._emit("STOP")
        return True

    def resume(self) -> bool:
        """Run the vCPUs from where they stopped; emits RESUME. Raises RuntimeError if a reset is needed."""
        with self._lifecycle:
            if self.state is RunState.RUNNING:
                return False
            if self.state in NEEDS_RESET:
                raise RuntimeError("Resetting the Virtual Machine is required")
            self.state = RunState.RUNNING
            for t in self.threads:
                t.resume()
        self._emit("RESUME")
        return True

    @contextmanager
    def vcpus_stopped(self) -> Iterator[None]:
        """Briefly park the vCPUs (to read their registers) without a run-state change or events."""
        with self._lifecycle:
            self._pause_vcpus()
            try:
                yield
            finally:
                if self.state is RunState.RUNNING and self.events.empty():
                    for t in self.threads:
                        t.resume()

    def reset(self, guest: bool = False, reason: str = "host-qmp-system-reset") -> None:
        """Back to power-on: vCPUs, irqchip and devices reset, the kernel reloaded (RAM is kept).

        The run state is kept: a running VM runs again, a paused one stays paused. Emits RESET.
        """
        with self._lifecycle:
            self._pause_vcpus()
            self.restore_cpu_state(self._initial)
            self.serial.reset()
            self.i8042.reset_state()
            self.acpi_pm.reset()
            self.boot = self._load_kernel()
            if self.state in NEEDS_RESET:
                self.state = RunState.PAUSED
            if self.state is RunState.RUNNING:
                for t in self.threads:
                    t.resume()
        self._emit("RESET", {"guest": guest, "reason": reason})

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
                    log.info("%s reset (%s)", "guest" if ev.guest else "host", ev.message or "reset request")
                    self.reset(guest=ev.guest, reason="guest-reset" if ev.guest else ev.message)
                    continue
                if ev.kind == "error":
                    self.state = RunState.INTERNAL_ERROR
                    log.error("%s", ev.message)
                    return 1
                self.state = RunState.SHUTDOWN
                if ev.kind in SHUTDOWN_REASONS:  # isa-debug-exit ends the process without one, as in QEMU
                    if ev.kind == "quit":
                        reason = ev.message or SHUTDOWN_REASONS["quit"]
                    else:
                        reason = SHUTDOWN_REASONS[ev.kind] if ev.guest else ev.message
                    self._emit("SHUTDOWN", {"guest": ev.guest, "reason": reason})
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
