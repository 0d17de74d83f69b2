"""What a script asks for in ``kvmpy.VM(...)``, checked once and turned into a MachineConfig or a command line.

Both modes start from the same ``VMOptions``: the in-process machine gets the
validated ``MachineConfig``; the child process gets the equivalent ``kvmpy``
argv. Validation always happens here, in the caller's process, so a bad
option is the same ``ConfigError`` (a ValueError naming the problem) in both
modes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from kvmpy.config import ConfigError, DebugExitConfig, MachineConfig, parse_size

QEMU_DEBUG_EXIT = (0x501, 0x02)  # isa-debug-exit's defaults in QEMU
# The flags of ``extra_args`` an in-process machine takes too (each with one value): its devices.
DEVICE_FLAGS = frozenset({"-device", "-drive", "-blockdev", "-netdev", "-nic", "-chardev", "-object",
                          "-hda", "-hdb", "-hdc", "-hdd", "-cdrom"})
DEVICE_FIELDS = ("devices", "drives", "blockdevs", "netdevs", "chardevs", "objects")


@dataclass(frozen=True)
class VMOptions:
    kernel: Path
    initrd: Path | None = None
    append: str = ""
    memory: int = 128 << 20  # bytes
    smp: int = 1
    name: str | None = None
    debug_exit: tuple[int, int] | None = None  # (iobase, iosize)
    no_reboot: bool = False
    paused: bool = False  # -S: the vCPUs wait for resume()
    linux_boot: str = "auto"
    extra_args: tuple[str, ...] = field(default_factory=tuple)  # more kvmpy flags (in-process: device options)

    @classmethod
    def build(cls, kernel: "str | os.PathLike[str]", *, initrd: "str | os.PathLike[str] | None" = None,
              append: str = "", memory: "str | int" = "128M", smp: int = 1, name: str | None = None,
              debug_exit: "bool | tuple[int, int]" = False, no_reboot: bool = False, paused: bool = False,
              linux_boot: str = "auto", extra_args: "tuple[str, ...] | list[str]" = ()) -> "VMOptions":
        """Normalise the keyword arguments of ``kvmpy.VM`` (``memory`` as in ``-m``: 512, "512M", "2G")."""
        if debug_exit is True:
            exit_port: tuple[int, int] | None = QEMU_DEBUG_EXIT
        elif debug_exit is False or debug_exit is None:
            exit_port = None
        else:
            try:
                iobase, iosize = debug_exit
            except (TypeError, ValueError):
                raise ConfigError(f"debug_exit must be True or (iobase, iosize), not {debug_exit!r}") from None
            exit_port = (int(iobase), int(iosize))
        opts = cls(kernel=Path(kernel), initrd=None if initrd is None else Path(initrd), append=append,
                   memory=parse_size(memory, "memory size"), smp=smp, name=name, debug_exit=exit_port,
                   no_reboot=no_reboot, paused=paused, linux_boot=linux_boot,
                   extra_args=tuple(str(a) for a in extra_args))
        opts.to_config()  # validates: the same ConfigError in both modes, before anything starts
        return opts

    def device_args(self) -> list[str]:
        """The device options of ``extra_args`` (flag, value pairs, in order) for an in-process machine;
        ConfigError for any other flag (those are for a child process only)."""
        out: list[str] = []
        args = self.extra_args
        for i in range(0, len(args), 2):
            flag = args[i]
            if flag not in DEVICE_FLAGS:
                raise ConfigError(f"extra_args: an in-process VM takes only device options "
                                  f"({', '.join(sorted(DEVICE_FLAGS))}), not {flag!r}; use process=True")
            if i + 1 == len(args):
                raise ConfigError(f"extra_args: {flag} needs a value")
            out += [flag, args[i + 1]]
        return out

    def to_config(self, in_process: bool = False) -> MachineConfig:
        """The validated config for an in-process machine (COM1 present; the API supplies its backend).

        ``in_process`` adds the device options of ``extra_args``, parsed as the ``kvmpy`` command
        parses them (``device_args``); without it (a child's options, checked before it starts)
        ``extra_args`` are left to the child."""
        exit_cfg = None if self.debug_exit is None else DebugExitConfig(*self.debug_exit)
        devices: dict[str, tuple] = {}
        if in_process and self.extra_args:
            from kvmpy.cli import parse_qemu_args  # only when asked: keeps ``import kvmpy`` lean

            parsed = parse_qemu_args(["-enable-kvm", *self.device_args()])
            devices = {name: getattr(parsed, name) for name in DEVICE_FIELDS}
        return MachineConfig(kernel=self.kernel, initrd=self.initrd, append=self.append, memory=self.memory,
                             smp=self.smp, name=self.name, serial="stdio", no_reboot=self.no_reboot,
                             start_paused=self.paused, debug_exit=exit_cfg,
                             linux_boot=self.linux_boot, **devices).validate()

    def to_argv(self, qmp_socket: Path) -> list[str]:
        """``kvmpy`` flags for a child: serial on stdio, QMP on ``qmp_socket`` waiting for our client.

        The child always starts paused (-S): its driver sends ``cont`` once its QMP client has
        negotiated, so the script sees the same RESUME event as in-process.
        """
        argv = ["-enable-kvm", "-nodefaults", "-display", "none", "-serial", "stdio",
                "-m", f"{self.memory // 1024}K", "-smp", str(self.smp), "-kernel", str(self.kernel),
                "-qmp", f"unix:{qmp_socket},server=on,wait=on"]
        if self.initrd is not None:
            argv += ["-initrd", str(self.initrd)]
        if self.append:
            argv += ["-append", self.append]
        if self.name is not None:
            argv += ["-name", self.name]
        if self.debug_exit is not None:
            argv += ["-device", f"isa-debug-exit,iobase={self.debug_exit[0]:#x},iosize={self.debug_exit[1]:#x}"]
        if self.no_reboot:
            argv.append("-no-reboot")
        argv.append("-S")
        if self.linux_boot != "auto":
            argv += ["-machine", f"pc,linux-boot={self.linux_boot}"]
        return argv + list(self.extra_args)
