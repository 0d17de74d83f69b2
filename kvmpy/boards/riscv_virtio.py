"""virtio-mmio on the riscv64 ``virt`` board: guest RAM for the virtio core, and the -device factories.

The virtio core (``kvmpy.devices.virtio.queue``) reads and writes guest memory
through a ``GuestMemory`` over an address space of RAM blocks. The TCG board's
RAM is the softmmu's one bytearray at DRAM base; ``TcgRam`` describes that
same buffer as a RAM block in a one-region address space, so the queues and
devices reach it with their fast paths (memoryviews, host addresses for preadv)
and no copy.

Device writes into guest RAM bypass the softmmu, which would not see a write
over translated code. Every device write marks the block's dirty bitmap (the
core does that for migration); ``TcgRam.sync`` runs after each kick, takes
the pages marked since and hands those holding translated code to the
softmmu's code-write hook, as a CPU store to them would.

Threads: the hart and every device register access run on the CPU thread, but
a NIC receives on its backend's reader thread, which completes RX buffers and
raises the queue interrupt there. ``CpuThreadLines`` turns such a raise into a
request the CPU thread applies at its next device poll (in WFI at most
riscv_virt.IDLE_WAIT late), with the code-page sync, so the hart's interrupt state and the TB
cache are only ever changed by the CPU thread.

QEMU's ``virt`` has eight transports at 0x10001000 + 0x1000*i on PLIC sources
1 + i, and gives devices the highest free one first (the first -device sits at
0x10008000).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Callable

from kvmpy.devices.virtio.device import VirtioDevice
from kvmpy.errors import ConfigError
from kvmpy.kvm.abi import ffi
from kvmpy.memory.address_space import AddressSpace
from kvmpy.memory.guest_memory import GuestMemory
from kvmpy.memory.ramblock import PAGE_SHIFT, RAMBlock
from kvmpy.memory.region import MemoryRegion

if TYPE_CHECKING:
    from kvmpy.config import MachineConfig
    from kvmpy.config_devices import DeviceSpec
    from kvmpy.tcg.softmmu import SoftMmu

log = logging.getLogger(__name__)

VIRTIO_BASE = 0x10001000
VIRTIO_SIZE = 0x1000
VIRTIO_COUNT = 8
VIRTIO_IRQ = 1  # transport i raises PLIC source VIRTIO_IRQ + i
ADDRESS_BITS = 1 << 40


class TcgRam:
    """The softmmu's RAM as the virtio core's ``GuestMemory`` (``memory``), and the code-page sync."""

    def __init__(self, mem: "SoftMmu") -> None:
        self.mem = mem
        ram = mem.ram
        host = int(ffi.cast("uintptr_t", ffi.from_buffer(ram)))
        # No mmap behind it: nothing on the virtio path maps, closes or populates ``mm``.
        self.block = RAMBlock("riscv_virt.ram", mem.ram_size, ram, memoryview(ram),  # type: ignore[arg-type]
                              host, bytearray(mem.ram_size >> PAGE_SHIFT))
        root = MemoryRegion.container("system", ADDRESS_BITS)
        root.add_subregion(mem.ram_base, MemoryRegion.ram_region("riscv_virt.ram", self.block))
        space = AddressSpace("memory", root)
        space.commit()
        self.memory = GuestMemory(space)
        self._first_page = mem.ram_base >> PAGE_SHIFT

    def sync(self) -> None:
        """Pages devices wrote since the last call: translated code on them is dropped."""
        dirty = self.block.vmm_dirty
        i = dirty.find(1)
        if i < 0:
            return
        code, hook = self.mem.code_pages, self.mem.on_code_write
        while i >= 0:
            end = dirty.find(0, i)
            end = len(dirty) if end < 0 else end
            dirty[i:end] = bytes(end - i)
            for n in range(i, end):
                page = self._first_page + n
                if page in code:
                    hook(page)
            i = dirty.find(1, end)


class CpuThreadLines:
    """Interrupt lines that devices may drive from any thread; only the CPU thread changes the PLIC.

    ``line(set_level)`` wraps one line. On the CPU thread (the one that made this object)
    a level goes straight through; on another it is recorded and ``pending`` set, and
    the CPU thread's ``apply()`` (called from its device poll) passes the last level of
    each line on, after ``before_apply`` (the RAM sync: receive wrote guest memory).
    """

    def __init__(self, before_apply: Callable[[], None] | None = None) -> None:
        self.cpu_thread = threading.get_ident()
        self.before_apply = before_apply
        self.pending = False  # read without the lock by the poll: a cheap "anything to do?"
        self._lock = threading.Lock()
        self._levels: dict[int, tuple[Callable[[bool], None], bool]] = {}
        self._next_key = 0

    def line(self, set_level: Callable[[bool], None]) -> Callable[[bool], None]:
        key = self._next_key
        self._next_key += 1

        def drive(level: bool) -> None:
            if threading.get_ident() == self.cpu_thread:
                set_level(level)
                return
            with self._lock:
                self._levels[key] = (set_level, level)
                self.pending = True
        return drive

    def apply(self) -> None:
        """CPU thread: pass on what other threads asked for since the last call."""
        with self._lock:
            levels, self._levels = self._levels, {}
            self.pending = False
        if self.before_apply is not None:
            self.before_apply()
        for set_level, level in levels.values():
            set_level(level)


# -device drivers the virt board builds on a virtio-mmio transport: driver -> (factory, properties it reads).
def _blk(board: Any, spec: "DeviceSpec") -> VirtioDevice:
    from dataclasses import replace

    from kvmpy.devices.virtio.blk import VirtioBlk, blk_options, open_device_drive

    options = blk_options(spec)
    drive = open_device_drive(board.config, spec)
    if not options.serial and drive.serial:
        options = replace(options, serial=drive.serial)
    try:
        return VirtioBlk(drive, board.memory, options)
    except BaseException:
        drive.close()
        raise


def _rng(board: Any, spec: "DeviceSpec") -> VirtioDevice:
    from kvmpy.devices.virtio.rng import VirtioRng

    where = spec.source or f"-device {spec.driver}"
    for key in ("max-bytes", "period"):
        if spec.get(key) is not None:
            raise ConfigError(f"{where}: virtio-rng-device's {key}= (rate limiting) is not supported by kvmpy")
    return VirtioRng()


def _net(board: Any, spec: "DeviceSpec") -> VirtioDevice:
    from kvmpy.devices.virtio.net import VirtioNet, nic_settings
    from kvmpy.net.netdev import make_netdev

    mac, netdev = nic_settings(board.config, spec)
    backend = make_netdev(netdev)
    try:
        return VirtioNet(backend, mac, spec.id or "")
    except BaseException:
        backend.close()
        raise


BLK_PROPS = frozenset({"drive", "serial", "bootindex", "num-queues", "queue-size", "discard", "write-zeroes",
                       "write-cache", "logical_block_size", "physical_block_size", "min_io_size", "opt_io_size",
                       "share-rw", "scsi", "config-wce", "seg-max-adjust"})
FACTORIES: dict[str, tuple[Callable[[Any, "DeviceSpec"], VirtioDevice], frozenset[str]]] = {
    "virtio-blk-device": (_blk, BLK_PROPS),
    "virtio-net-device": (_net, frozenset({"netdev", "mac"})),
    "virtio-rng-device": (_rng, frozenset({"rng", "max-bytes", "period"})),
}


class VirtioBoardView:
    """What a device factory reads of the board: the config (drives) and guest memory."""

    def __init__(self, config: "MachineConfig", memory: GuestMemory) -> None:
        self.config = config
        self.memory = memory


def build_virtio_devices(config: "MachineConfig", memory: GuestMemory) -> list[tuple[str, VirtioDevice]]:
    """The virtio devices ``config`` asks for, in command-line order; ConfigError for what kvmpy refuses."""
    view = VirtioBoardView(config, memory)
    out: list[tuple[str, VirtioDevice]] = []
    try:
        for spec in config.devices:
            entry = FACTORIES.get(spec.driver)
            if entry is None:
                raise ConfigError(f"{spec.source or '-device'}: machine 'virt' does not build {spec.driver!r}")
            factory, props = entry
            where = spec.source or f"-device {spec.driver}"
            for key, _ in spec.props:
                if key not in props:
                    raise ConfigError(f"{where}: Property '{spec.driver}.{key}' not found")
            if len(out) >= VIRTIO_COUNT:
                raise ConfigError(f"{where}: No 'virtio-bus' bus found for device '{spec.driver}'")
            out.append((spec.driver, factory(view, spec)))
    except BaseException:
        for _, dev in out:
            dev.close()
        raise
    return out
