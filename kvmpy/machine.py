"""Machine: one x86 KVM virtual machine, composed of a lifecycle, a PC board, its vmstate and migration.

Data flows one way: a validated MachineConfig goes in; the ``PcBoard`` builds
memory, devices, vCPUs and boot; the ``Lifecycle`` owns the run state, the
event queue and the vCPU threads' start/park/stop; ``VmState`` captures and
applies the VM's state (reset, snapshots, migration); the
``MigrationManager`` is the migration component (QMP migrate, -incoming).
Devices and vCPU threads report through the lifecycle's ``post``; the thread
that called ``run()`` acts on what they report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmpy.boards.pc import PcBoard
from kvmpy.config import MachineConfig
from kvmpy.devices.chardev import CharBackend
from kvmpy.lifecycle import DeviceControl, Lifecycle, MachineEvent, RunState
from kvmpy.memory.kvm_slots import KvmSlots
from kvmpy.memory.ramblock import RAMBlock
from kvmpy.migration.manager import MigrationManager
from kvmpy.monitor.jobs import Jobs
from kvmpy.vmstate import VmState

if TYPE_CHECKING:
    from kvmpy.block.drive import Drive
    from kvmpy.monitor.schema import CommandTable

__all__ = ["Machine", "RunState", "MachineEvent", "qmp_commands"]


def qmp_commands() -> "CommandTable":
    """A fresh table of every QMP command a Machine serves (the core set, migration's, the block ones).

    Whoever starts a QmpServer passes it in; nothing registers commands by being imported.
    """
    from kvmpy.migration.qmp import add_migration_commands
    from kvmpy.monitor.block import add_block_commands
    from kvmpy.monitor.commands import add_core_commands
    from kvmpy.monitor.display import add_display_commands
    from kvmpy.monitor.net import add_net_commands
    from kvmpy.monitor.jobs import add_job_commands
    from kvmpy.monitor.memory import add_memory_commands
    from kvmpy.monitor.snapshots import add_snapshot_commands
    from kvmpy.monitor.schema import CommandTable

    table = CommandTable()
    add_core_commands(table)
    add_migration_commands(table)
    add_block_commands(table)
    add_net_commands(table)
    add_memory_commands(table)
    add_display_commands(table)
    add_job_commands(table)
    add_snapshot_commands(table)
    return table


class Machine:
    """One VM. ``run()`` blocks until the guest ends and returns the process exit status."""

    def __init__(self, config: MachineConfig, console: CharBackend | None = None) -> None:
        self.config = config
        self.lifecycle = Lifecycle(no_reboot=config.no_reboot, start_paused=config.start_paused)
        self.board = PcBoard(config, self.lifecycle.post, self.lifecycle.on_vcpu_event, console,
                             emit=self.lifecycle.emit)
        self.lifecycle.attach_vcpus(self.board.threads)
        self.lifecycle.attach_devices([d for d in self.board.devices.values() if isinstance(d, DeviceControl)])
        self.vmstate = VmState(self.board)
        self._power_on = self.vmstate.capture(cpu_only=True)
        self.migration = MigrationManager(self)
        self.jobs = Jobs(self.lifecycle.emit)  # QMP jobs (snapshot-save, ...)

    # ---- what migration sees (kvmpy.migration.interface.MigratableVm) ----------------
    @property
    def ram_blocks(self) -> list[RAMBlock]:
        memhp = self.board.memhp
        return [self.board.ram] + (memhp.ram_blocks() if memhp is not None else []) + self.board.device_ram()

    @property
    def dirty_log(self) -> KvmSlots:
        return self.board.slots

    @property
    def drives(self) -> "list[Drive]":
        """The guest disks' drives (migration hands their images over; ``cont`` takes them back)."""
        from kvmpy.monitor.block import attached_drives

        return [a.drive for a in attached_drives(self.board)]

    # ---- running -------------------------------------------------------------------
    def start(self) -> None:
        """Connect the console and start the vCPUs (parked under -S or while a migration comes in)."""
        self.board.console.start(self.board.serial.receive,
                                 lambda: self.lifecycle.post(MachineEvent("quit", 0, guest=False)))
        self.lifecycle.start()

    def run(self, timeout: float | None = None) -> int:
        """Start the VM and serve its events until it ends; returns the exit status.

        With ``timeout`` (seconds), a VM still running by then is stopped and
        TimeoutError is raised: for tests and scripts that must not hang.
        """
        self.start()
        try:
            return self.lifecycle.serve(self.reset, timeout)
        finally:
            self.shutdown()

    def reset(self, guest: bool = False, reason: str = "host-qmp-system-reset") -> None:
        """Back to power-on: vCPUs, irqchip and every device reset, the kernel reloaded (RAM is kept)."""
        self.lifecycle.reset(self._power_on_state, guest, reason)

    def _power_on_state(self) -> None:
        self.vmstate.apply(self._power_on, cpu_only=True)
        self.board.reset_devices()
        self.board.boot = self.board.load_kernel()

    def system_powerdown(self) -> None:
        """Press the ACPI power button (PWRBTN_STS + SCI); the guest decides what to do."""
        if not self.board.has_acpi:
            raise RuntimeError("this machine has no ACPI (a multiboot guest), so it has no power button "
                               "to press; use system_reset or quit")
        self.lifecycle.emit("POWERDOWN")
        self.board.acpi_pm.press_power_button()

    def shutdown(self) -> None:
        self.lifecycle.stop_vcpus()
        self.board.console.close()

    def close(self) -> None:
        self.shutdown()
        self.board.close()
