"""The x86 PC board: KVM VM setup, memory layout, the device table, both buses, vCPUs and boot.

``PcBoard`` builds everything a PC is made of from a validated MachineConfig:
RAM below and above 4 GiB, the in-kernel irqchip and PIT, one vCPU per -smp
(with CPUID and baseline MSRs), the devices of ``PC_DEVICES`` mapped on the
port-I/O bus (and MMIO devices as I/O regions routed by the board's MMIO
router), the PCI bus (config mechanism #1, the i440FX host bridge and the PIIX3
ISA bridge, whose BARs ``PcBarSpace`` maps on the same buses), and the kernel
(multiboot or Linux) loaded with vCPU 0 at its entry. Without -kernel it boots
firmware as QEMU does: the BIOS image (SeaBIOS) read-only below 4 GiB, fw_cfg
with kvmpy's ACPI tables, and vCPU 0 left at the reset vector.

Shadow RAM, the simpler equivalent of the i440FX PAM registers: RAM is always
mapped at 0xC0000-0xFFFFF, and at power-on and every reset the board copies the
BIOS's last 128 KiB into it at 0xE0000. SeaBIOS finds PAM0 "not RAM", runs its
copy routine from the high flash (copying the same bytes over themselves) and
then owns the segment; the PAM values it writes are only stored. What differs
from QEMU: before SeaBIOS makes the area writable, a write there sticks instead
of being dropped, and its final "read-only" setting is not enforced. On reset
QEMU leaves the shadow alone and SeaBIOS re-copies itself (qemu_reboot); kvmpy's
re-copy gives the same fresh image.
Devices report only through the ``post`` callback (the machine's lifecycle);
the board never holds the machine. A new device is one file in
``kvmpy/devices/`` plus one line in ``PC_DEVICES``; the ``-device`` PCI
functions are appended to the table by ``pc_pci`` (one line per driver there).
"""

from __future__ import annotations

import struct

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, NamedTuple, Union, cast

from kvmpy.boards.mmio import MmioRouter
from kvmpy.boards.lazy_factory import LazyFactory
from kvmpy.boards.pc_pci import pci_device_lines, place
from kvmpy.config import MachineConfig
from kvmpy.boards.pc_memhp import PcMemoryHotplug, cold_plug
from kvmpy.devices.acpi_gpe import GPE0_BASE, GPE0_LEN, AcpiGpe
from kvmpy.devices.acpi_memhp import MEMHP_BASE, MEMHP_LEN, MemoryHotplugController
from kvmpy.devices.acpi_pm import BLOCK_SIZE as PM_BLOCK_SIZE, AcpiPm, ResetControl
from kvmpy.devices.bus import Bus, BusConflictError, OffsetDevice
from kvmpy.devices.chardev import CharBackend, open_backend
from kvmpy.devices.debug_exit import DebugExit
from kvmpy.devices.device import Device, OwnsRam
from kvmpy.devices.fw_cfg import DMA_PORT as FW_CFG_DMA_PORT, PORT_BASE as FW_CFG_PORT, FwCfg
from kvmpy.devices.i8042 import I8042
from kvmpy.devices.ide.units import ide_units
from kvmpy.display.options import parse_vnc, parse_web
from kvmpy.devices.irq import SharedIrq
from kvmpy.devices.kvm_irq import KvmIrqLine
from kvmpy.devices.msi import MsiRoutes
from kvmpy.devices.pci.bus import PciBus, PciHost
from kvmpy.devices.pci.device import BarKind, PciDevice
from kvmpy.devices.pci.i440fx import I440fx
from kvmpy.devices.pci.piix3 import Piix3
from kvmpy.devices.port80 import Port80
from kvmpy.devices.rtc import CmosRtc
from kvmpy.devices.serial import Uart16550
from kvmpy.kvm import abi
from kvmpy.kvm.flavor import KvmKind, host_kvm_kind
from kvmpy.firmware.bootorder import bootorder
from kvmpy.firmware.bios import BiosImage, load_bios
from kvmpy.firmware.pc_fw_cfg import pc_fw_cfg
from kvmpy.kvm.system import Kvm
from kvmpy.lifecycle import MachineEvent
from kvmpy.loader import acpi
from kvmpy.loader.memhp_aml import HotplugMemory
from kvmpy.loader.e820 import FOUR_GIB, HIGH_TABLES, pc_e820, pci_holes, split_ram
from kvmpy.loader.linux import EntryMode, KernelFormat, LinuxBoot, detect_format, load_linux, prepare_kernel
from kvmpy.loader.multiboot import BootEntry, load_multiboot
from kvmpy.memory.address_space import AddressSpace
from kvmpy.memory.guest_memory import GuestMemory
from kvmpy.memory.kvm_slots import KvmSlots
from kvmpy.memory.ramblock import RAMBlock
from kvmpy.memory.region import MemoryRegion
from kvmpy.vcpu.cpu_models import cpu_model
from kvmpy.vcpu.cpuid import vcpu_cpuid
from kvmpy.vcpu.state import VcpuStateIO
from kvmpy.vcpu.thread import EventSink, VcpuThread, install_kick_handler
from kvmpy.vcpu.x86 import apply_msrs, baseline_msrs, set_flat_protected_mode, set_long_mode

if TYPE_CHECKING:
    from kvmpy.display.vnc import VncServer
    from kvmpy.display.web import WebConsole

log = logging.getLogger(__name__)

# The same pages QEMU uses (and reserves in e820): identity map, then a 3-page TSS.
IDENTITY_MAP_ADDR = 0xFEFFC000
TSS_ADDR = 0xFEFFD000
ADDRESS_SPACE_SIZE = 1 << 52
COM1_PORT, COM1_IRQ = 0x3F8, 4
GDT_ADDR = 0x500
# null, null, flat 32-bit code (0x10), flat data (0x18): QEMU's multiboot ROM selectors.
BOOT_GDT = (0, 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF)
DEFAULT_BOOT_ORDER = "cad"  # QEMU pc's default -boot order
ISA_BIOS_END = 0x100000
RSDP_ADDR = 0xF0000  # in the BIOS area, where a kernel without boot_params.acpi_rsdp_addr scans
PVM_WARNING = ("this host's /dev/kvm is PVM-based (kvm_pvm), which emulates guest ring 0 and hangs on "
               "instructions Linux uses (cmpxchg16b, xrstor, int3), so this Linux kernel will hang here; "
               "it boots on a hardware-backed KVM (kvm-intel/kvm-amd), e.g. in the nested bed: "
               "python -m kvmpy.testbed -- kvmpy ...")

Post = Callable[[MachineEvent], None]
Emit = Callable[[str, "dict | None"], None]


class Window(NamedTuple):
    """One window of a device on a bus; ``offset`` is where it starts inside the device."""
    base: int
    size: int
    offset: int = 0
    name: str = ""  # shown by "info mtree"; the device's table name when empty


Ranges = tuple[Window, ...]
RangesFor = Union[Ranges, Callable[[MachineConfig], Ranges]]


@dataclass(frozen=True)
class DeviceSlot:
    """One line of a board's device table.

    ``make(board)`` builds the device, or returns None when this configuration
    has none; ``pio``/``mmio`` are its windows, fixed or computed from the config.
    An MMIO window becomes an I/O region in the board's memory tree.
    """

    name: str
    make: Callable[["PcBoard"], Device | None]
    pio: RangesFor = ()
    mmio: RangesFor = ()

    def pio_ranges(self, cfg: MachineConfig) -> Ranges:
        return self.pio(cfg) if callable(self.pio) else self.pio

    def mmio_ranges(self, cfg: MachineConfig) -> Ranges:
        return self.mmio(cfg) if callable(self.mmio) else self.mmio


# ---- device factories (one per table line) ------------------------------------------------
def _serial(b: "PcBoard") -> Uart16550:
    return Uart16550(output=b.console.write, irq=KvmIrqLine(b.vm, COM1_IRQ))


def _i8042(b: "PcBoard") -> I8042:
    return I8042(on_reset=lambda: b.post(MachineEvent("reset", message="i8042 reset")),
                 kbd_irq=KvmIrqLine(b.vm, 1), aux_irq=KvmIrqLine(b.vm, 12))


def _rtc(b: "PcBoard") -> CmosRtc:
    below, above = split_ram(b.config.memory)
    order = getattr(b.config, "boot_order", "") or DEFAULT_BOOT_ORDER  # -boot order=
    return CmosRtc(ram_below_4g=below, ram_above_4g=above, boot_order=order, nr_cpus=b.config.smp,
                   boot_once=getattr(b.config, "boot_once", ""))  # -boot once=: until the first reset


def _fw_cfg(b: "PcBoard") -> FwCfg | None:
    devices = tuple(getattr(b.config, "devices", ()))
    # built (and so checked: a repeated bootindex is refused) with -kernel too, as QEMU checks it
    order = bootorder(place(devices), ide_units(b.config), getattr(b.config, "boot_strict", False), devices)
    if b.bios is None:
        return None  # -kernel boots need no firmware interface
    tables = acpi.build_tables(0, b.config.smp, pci_holes(b.config.memory) if b.pci_host is not None else None)
    fw = pc_fw_cfg(b.memory, b.config.memory, b.config.smp, tables, serial_console=b.config.serial != "none",
                   boot_menu=getattr(b.config, "boot_menu", False), bootorder=order)
    # -boot splash-time= / reboot-timeout=, as QEMU's fw_cfg_bootsplash/fw_cfg_reboot write them
    splash, reboot = getattr(b.config, "boot_splash_time", None), getattr(b.config, "boot_reboot_timeout", None)
    if splash is not None:
        fw.add_file("etc/boot-menu-wait", struct.pack("<H", splash))
    if reboot is not None:
        fw.add_file("etc/boot-fail-wait", struct.pack("<i", reboot))
    return fw


def _fw_cfg_ports(cfg: MachineConfig) -> Ranges:
    return (Window(FW_CFG_PORT, 2, 0, "fwcfg"), Window(FW_CFG_DMA_PORT, 8, 4, "fwcfg.dma"))


def _port80(b: "PcBoard") -> Port80:
    if b.kvm.check_extension(abi.CAP_COALESCED_PIO):
        # Writes to 0x80 have no effect, so KVM may batch them instead of exiting.
        b.vm.register_coalesced(0x80, 1, pio=True)
    return Port80()


def _acpi_pm(b: "PcBoard") -> AcpiPm:
    # ACPI fixed hardware: PM1 block + PM timer (SCI on IRQ 9).
    return AcpiPm(on_poweroff=lambda: b.post(MachineEvent("poweroff", 0, "ACPI S5")),
                  sci=b.sci.source(), s5_type=acpi.SLP_TYP_S5)


def _acpi_gpe(b: "PcBoard") -> AcpiGpe:
    return AcpiGpe(sci=b.sci.source())  # GPE0: hotplug events (memory: GPE 3) raise the shared SCI


def _acpi_memhp(b: "PcBoard") -> MemoryHotplugController | None:
    """The memory-hotplug controller, present (as in QEMU) only with -m slots=."""
    cfg = b.config
    below, above = split_ram(cfg.memory)
    b.memhp = PcMemoryHotplug(b.root, b.address_space, cast(AcpiGpe, b.devices["acpi-gpe"]), b.emit,
                              cfg.memory, above, cfg.memory_slots, cfg.max_memory)
    return b.memhp.controller if b.memhp.slots else None


def _memhp_ports(cfg: MachineConfig) -> Ranges:
    return (Window(MEMHP_BASE, MEMHP_LEN),) if cfg.memory_slots else ()


def _reset_control(b: "PcBoard") -> ResetControl:
    return ResetControl(on_reset=lambda: b.post(MachineEvent("reset", message="0xcf9 reset")))


def _debug_exit(b: "PcBoard") -> DebugExit | None:
    d = b.config.debug_exit
    if d is None:
        return None
    return DebugExit(on_exit=lambda status: b.post(MachineEvent("exit", status)), iosize=d.iosize)


class PcBarSpace:
    """Where the board's PCI BARs appear: I/O BARs on the port bus, memory BARs in the memory tree.

    Memory BARs sit below RAM (priority -1, as QEMU's "pci" container does), so a
    BAR a guest programs over RAM never hides it; an I/O BAR over a port that a
    device already owns stays unmapped (logged once), as does one that does not fit.
    """

    def __init__(self, board: "PcBoard") -> None:
        self.board = board
        self.lock = threading.Lock()
        self.regions: dict[int, MemoryRegion] = {}
        self.refused: set[tuple[BarKind, int]] = set()

    def map_bar(self, kind: BarKind, base: int, size: int, device: Device, name: str,
                ram: RAMBlock | None = None) -> bool:
        b = self.board
        with self.lock:
            try:
                if kind is BarKind.IO:
                    b.pio.map(base, size, device, name)
                else:
                    region = MemoryRegion.io(name, size, device) if ram is None else \
                        MemoryRegion.ram_region(name, ram, 0, size)  # a framebuffer: a KVM slot of its own
                    b.root.add_subregion(base, region, priority=-1)
                    self.regions[base] = region
                    b.address_space.commit()
                return True
            except (BusConflictError, ValueError) as exc:
                if (kind, base) not in self.refused and len(self.refused) < 256:
                    self.refused.add((kind, base))
                    log.warning("PCI: %s left unmapped: %s", name, exc)
                return False

    def unmap_bar(self, kind: BarKind, base: int) -> None:
        b = self.board
        with self.lock:
            if kind is BarKind.IO:
                b.pio.unmap(base)
            else:
                b.root.del_subregion(self.regions.pop(base))
                b.address_space.commit()


def _pci_host(b: "PcBoard") -> PciHost:
    if b.kvm.check_extension(abi.CAP_COALESCED_PIO):
        # As on QEMU's i440FX: a CONFIG_ADDRESS write only matters to the next CONFIG_DATA access, and the vCPU
        # threads replay the ring at every exit, so KVM may batch it (one exit per config access instead of
        # two). The zone covers 0xCF9 as well, so a reset written there happens at that vCPU's next exit.
        b.vm.register_coalesced(0xCF8, 4, pio=True)
    return PciHost(PciBus(PcBarSpace(b)))


def _pci_bus(b: "PcBoard") -> PciBus:
    return cast(PciHost, b.devices["pci-host"]).bus


def _i440fx(b: "PcBoard") -> I440fx:
    return cast(I440fx, _pci_bus(b).plug(I440fx(), 0))


def _piix3(b: "PcBoard") -> Piix3:
    bus = _pci_bus(b)
    piix3 = cast(Piix3, bus.plug(Piix3(irq_line=lambda irq: KvmIrqLine(b.vm, irq)), 1))
    bus.router = piix3.set_intx  # INTx of every slot goes through the PIRQ routing
    return piix3


def _serial_ports(cfg: MachineConfig) -> Ranges:
    return () if cfg.serial == "none" else (Window(COM1_PORT, 8),)  # "-serial none": no COM1 at all


def _debug_exit_ports(cfg: MachineConfig) -> Ranges:
    d = cfg.debug_exit
    return () if d is None else (Window(d.iobase, d.iosize),)


# The PC's devices, in the order their state is saved, reset and migrated.
PC_DEVICES: tuple[DeviceSlot, ...] = (
    DeviceSlot("serial0", _serial, pio=_serial_ports),
    DeviceSlot("i8042", _i8042, pio=(Window(0x60, 1, 0, "i8042-data"), Window(0x64, 1, 4, "i8042-cmd"))),
    DeviceSlot("rtc", _rtc, pio=(Window(0x70, 2),)),
    DeviceSlot("port80", _port80, pio=(Window(0x80, 1),)),
    DeviceSlot("acpi-pm", _acpi_pm, pio=(Window(acpi.PM_BASE, PM_BLOCK_SIZE),)),
    DeviceSlot("reset-control", _reset_control, pio=(Window(acpi.RESET_PORT, 1),)),
    DeviceSlot("acpi-gpe", _acpi_gpe, pio=(Window(GPE0_BASE, GPE0_LEN),)),
    DeviceSlot("acpi-memhp", _acpi_memhp, pio=_memhp_ports),
    DeviceSlot("isa-debug-exit", _debug_exit, pio=_debug_exit_ports),
    # CONFIG_ADDRESS around PIIX3's reset register at 0xCF9 (which QEMU overlays the same way), then CONFIG_DATA.
    DeviceSlot("pci-host", _pci_host, pio=(Window(0xCF8, 1, 0, "pci-conf-idx"), Window(0xCFA, 2, 2, "pci-conf-idx"),
                                           Window(0xCFC, 4, 4, "pci-conf-data"))),
    DeviceSlot("i440fx", _i440fx),
    DeviceSlot("piix3", _piix3),
    DeviceSlot("piix3-ide", LazyFactory("kvmpy.devices.ide.factory", "piix_ide")),  # 00:01.1, only when an IDE drive is given (its legacy ports map themselves)
    DeviceSlot("fw_cfg", _fw_cfg, pio=_fw_cfg_ports),  # only when booting firmware (no -kernel)
)


class PcBoard:
    """One PC built from ``config``; ``post`` hears device events, ``vcpu_events`` the vCPU threads'."""

    def __init__(self, config: MachineConfig, post: Post, vcpu_events: EventSink,
                 console: CharBackend | None = None, devices: tuple[DeviceSlot, ...] = PC_DEVICES,
                 emit: Emit | None = None) -> None:
        self.config = config
        self.post = post
        self.emit: Emit = emit if emit is not None else (lambda name, data=None: None)  # QMP events
        install_kick_handler()
        self.kvm = Kvm.open()
        self.vm = self.kvm.create_vm()
        self.vm.set_tss_addr(TSS_ADDR)
        self.vm.set_identity_map_addr(IDENTITY_MAP_ADDR)
        self.vm.create_irqchip()
        self.msi = MsiRoutes(self.vm)  # GSI routes for MSI(-X) vectors; keeps KVM's irqchip routes
        self.vm.create_pit2()
        if host_kvm_kind() is KvmKind.PVM:
            # PVM emulates ring 0, so firmware and GRUB miss timer ticks for most of the time they run
            # with interrupts off; re-injected, the backlog keeps IRQ0 pending at every interrupt window
            # and starves IRQ1 and up (GRUB never got its keys: PIC IRR 0x03, IRQ0 in service over and
            # over). Dropping missed ticks, as lost_tick_policy=discard does, lets the keyboard through.
            self.vm.set_pit_reinject(False)
        self.sci = SharedIrq(KvmIrqLine(self.vm, acpi.SCI_IRQ))  # the PM block and GPE0 share the SCI
        supported = self.kvm.supported_cpuid()
        self.amd = any(e.function == 0 and e.ebx == 0x68747541 for e in supported)  # "Auth"enticAMD

        # Without -kernel the board boots its BIOS (SeaBIOS), as QEMU does.
        self.bios: BiosImage | None = None if config.kernel is not None else load_bios(config.bios, config.data_dirs)
        self.kernel_format = None if config.kernel is None else detect_format(config.kernel)
        self.linux = None if self.kernel_format in (None, KernelFormat.MULTIBOOT) else \
            prepare_kernel(config.kernel, config.linux_boot)  # type: ignore[arg-type]
        if self.linux is not None and host_kvm_kind() is KvmKind.PVM:
            log.warning(PVM_WARNING)
        self._build_memory()
        self.console = console if console is not None else open_backend(config.serial, config.chardevs)
        self.memhp: PcMemoryHotplug | None = None  # set by the acpi-memhp table line
        self.vnc: VncServer | None = None  # -vnc: started once the devices and vCPUs exist
        self.web: WebConsole | None = None  # -display web: the browser console
        self._build_devices(devices)
        if self.memhp is not None:
            cold_plug(self.memhp, config)  # -object memory-backend-*, -device pc-dimm
        self._build_vcpus(supported, vcpu_events)
        self.boot = self.load_kernel()
        self.vnc = self._start_vnc()
        self.web = self._start_web()

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
        self.mmio = MmioRouter()
        self.address_space.add_listener(self.mmio)
        self.address_space.commit()
        self.memory = GuestMemory(self.address_space)
        self.e820 = pc_e820(size, self.amd)
        if self.bios is not None:
            self._map_bios(self.bios)

    def _map_bios(self, bios: BiosImage) -> None:
        """The whole image read-only just below 4 GiB (where the reset vector fetches from)."""
        self.bios_rom = RAMBlock.allocate("pc.bios", len(bios.data))
        self.bios_rom.mv[:] = bios.data
        readonly = bool(self.kvm.check_extension(abi.CAP_READONLY_MEM))
        if not readonly:
            log.info("KVM lacks read-only memory slots: the BIOS ROM is writable RAM (reloaded at reset)")
        self.root.add_subregion(bios.base, MemoryRegion.ram_region("pc.bios", self.bios_rom, readonly=readonly))
        self.address_space.commit()

    def _build_devices(self, table: tuple[DeviceSlot, ...]) -> None:
        """Walk the device table: build each device and map its windows on the PIO bus and in MMIO."""
        table = table + tuple(DeviceSlot(n, make) for n, make in pci_device_lines(self.config))  # -device PCI
        self.pio = Bus("pio")
        self.devices: dict[str, Device] = {}
        self.pci_host: PciHost | None = None
        try:
            for slot in table:
                dev = slot.make(self)
                if dev is None:
                    continue
                self.devices[slot.name] = dev
                if isinstance(dev, PciHost):
                    self.pci_host = dev  # the firmware's ACPI tables describe the PCI bus when there is one
                for w in slot.pio_ranges(self.config):
                    self.pio.map(w.base, w.size, dev if w.offset == 0 else OffsetDevice(dev, w.offset),
                                 w.name or slot.name)
                for w in slot.mmio_ranges(self.config):
                    target = dev if w.offset == 0 else OffsetDevice(dev, w.offset)
                    self.root.add_subregion(w.base, MemoryRegion.io(w.name or slot.name, w.size, target), priority=1)
        except BaseException:
            for built in self.devices.values():  # a later line's mistake must not leave images open and locked
                if isinstance(built, PciDevice):
                    built.close()
            raise
        if any(slot.mmio_ranges(self.config) for slot in table if slot.name in self.devices):
            self.address_space.commit()
        self.serial = cast(Uart16550, self.devices["serial0"])  # the console's input goes to COM1
        self.acpi_pm = cast(AcpiPm, self.devices["acpi-pm"])  # QMP system_powerdown presses its button
        host = self.devices.get("pci-host")
        self.pci: PciBus | None = host.bus if isinstance(host, PciHost) else None  # query-pci, info pci

    def _build_vcpus(self, supported: list, vcpu_events: EventSink) -> None:
        n = self.config.smp
        if n > self.kvm.max_vcpus():
            raise ValueError(f"-smp {n} exceeds this host's KVM limit of {self.kvm.max_vcpus()} vCPUs")
        msr_list = self.kvm.msr_index_list()
        self.state_io = VcpuStateIO(msr_list)
        msrs = baseline_msrs(set(msr_list))
        model = cpu_model(self.config.cpu)  # any name: one kvmpy has no table for is host, with a warning
        self.vcpus = []
        for i in range(n):
            vcpu = self.vm.create_vcpu(i)
            vcpu.set_cpuid(vcpu_cpuid(model.apply(supported), i, n))
            apply_msrs(vcpu, msrs)
            self.vcpus.append(vcpu)
        self.threads = [VcpuThread(v, self.pio, self.mmio.read, self.mmio.write, vcpu_events)
                        for v in self.vcpus]

    # ---- boot ------------------------------------------------------------------
    @property
    def has_acpi(self) -> bool:
        """Linux and firmware boots get ACPI tables; a multiboot guest cannot see the PM device."""
        return self.linux is not None or self.bios is not None

    def load_kernel(self) -> BootEntry | LinuxBoot | None:
        """(Re)load the kernel into RAM and point vCPU 0 at its entry; at power-on and on every reset.

        A firmware boot instead (re)loads the BIOS image and its shadow copy, and vCPU 0
        stays at the reset vector, KVM's state for a new (or reset) vCPU."""
        cfg = self.config
        if self.bios is not None:
            self.bios_rom.mv[:] = self.bios.data
            self.memory.write(ISA_BIOS_END - len(self.bios.isa), self.bios.isa)
            return None
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
        below, above = split_ram(self.config.memory)
        window = self.memhp.window if self.memhp is not None else None
        hotplug = HotplugMemory(window.slots, window.base, window.size) if window is not None else None
        holes = pci_holes(self.config.memory, window.end if window is not None else None)
        tables = acpi.build_tables(below - HIGH_TABLES, self.config.smp, holes if self.pci is not None else None,
                                   hotplug, (below, above))
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

    # ---- reset and teardown -----------------------------------------------------------
    def device_ram(self) -> list[RAMBlock]:
        """RAM that devices own (a display adapter's video memory): migrated with the guest's RAM."""
        return [b for d in self.devices.values() if isinstance(d, OwnsRam) for b in d.device_ram()]

    def reset_devices(self) -> None:
        """Every device in the table back to its power-on state (a new device cannot be forgotten)."""
        for dev in self.devices.values():
            dev.reset()

    def _start_vnc(self) -> VncServer | None:
        """-vnc: a VNC console showing the display adapter (a blank screen without one), typing
        into the i8042's PS/2 keyboard and moving its PS/2 mouse."""
        options = parse_vnc(self.config.vnc) if self.config.vnc is not None else None
        if options is None:
            return None
        from kvmpy.display.console import find_display_source, start_vnc  # only a VM with a console needs it
        i8042 = self.devices.get("i8042")
        sink = i8042 if isinstance(i8042, I8042) else None
        return start_vnc(options, find_display_source(self.devices.values()), sink, sink, self.config.name)

    def _start_web(self) -> WebConsole | None:
        """-display web: the browser console, bridged to the -vnc server or to one of its own."""
        if self.config.web is None:
            return None
        from kvmpy.display.console import find_display_source
        from kvmpy.display.web import start_web  # only a VM with a browser console needs it
        i8042 = self.devices.get("i8042")
        sink = i8042 if isinstance(i8042, I8042) else None
        web, self.vnc = start_web(parse_web(self.config.web), self.vnc, find_display_source(self.devices.values()),
                                  sink, sink, self.config.name)
        return web

    def close(self) -> None:
        if self.web is not None:
            self.web.close()
        if self.vnc is not None:
            self.vnc.close()
        for dev in self.devices.values():
            if isinstance(dev, PciDevice):
                dev.close()  # device threads end before the VM they signal goes away
        for v in self.vcpus:
            v.close()
        self.msi.close()
        self.vm.close()
        self.kvm.close()
