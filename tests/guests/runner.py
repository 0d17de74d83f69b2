"""Run the test guests under kvmpy (in-process or through the CLI) and under QEMU, the same way.

The flags are the ones the guests' README uses, so the two hypervisors can be
compared run for run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from kvmpy.config import MachineConfig, DebugExitConfig
from kvmpy.devices.chardev import BufferBackend
from tests.guests.build import build_guest

REPO = Path(__file__).resolve().parents[2]
BASE_FLAGS = ["-display", "none", "-nodefaults", "-serial", "stdio", "-no-reboot",
              "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
PASS = 33  # (0x10 << 1) | 1


@dataclass
class GuestRun:
    status: int
    output: str


def qemu_flags(kernel: Path, memory: str = "64", smp: int = 1, append: str = "") -> list[str]:
    return ["-m", memory, "-smp", str(smp), *BASE_FLAGS, "-kernel", str(kernel), "-append", append]


def run_inprocess(name: str, append: str = "", smp: int = 1, memory_mib: int = 64,
                  replies: list[tuple[bytes, bytes]] | None = None, timeout: float = 60,
                  machine_hook=None) -> GuestRun:
    """Boot a guest in this process and collect its serial output."""
    from kvmpy.machine import Machine

    cfg = MachineConfig(kernel=build_guest(name), memory=memory_mib << 20, smp=smp, append=append,
                        no_reboot=True, serial="stdio", debug_exit=DebugExitConfig(0xF4, 4)).validate()
    console = BufferBackend()
    for trigger, reply in replies or []:
        console.expect(trigger, reply)
    machine = Machine(cfg, console=console)
    try:
        if machine_hook is not None:
            return machine_hook(machine, console)
        status = machine.run(timeout=timeout)
    finally:
        machine.close()
    return GuestRun(status, console.output.decode("latin-1"))


def run_cli(args: list[str], stdin: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "kvmpy", *args], input=stdin, capture_output=True,
                          timeout=timeout, env=env)


_SEABIOS = re.compile(rb"^.*?Booting from ROM\.\.", re.S)


def run_qemu(args: list[str], timeout: float = 120) -> GuestRun:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise FileNotFoundError("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    p = subprocess.run([qemu, "-enable-kvm", *args], capture_output=True, timeout=timeout)
    # SeaBIOS prints nothing with -display none, but strip its banner should it appear.
    out = _SEABIOS.sub(b"", p.stdout)
    return GuestRun(p.returncode, out.decode("latin-1"))
