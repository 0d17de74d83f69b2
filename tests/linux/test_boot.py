"""Booting Debian's unmodified cloud kernel with a busybox initramfs: poweroff, SMP, reboot, console input.

The kvm_full tests run in-process (one Machine per boot, some through the Python API,
kvmpy.VM) so that the nested bed pays Python's start-up once; each boot is a few seconds
of guest time.
"""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import kvmpy
from kvmpy.api import VMGone, WaitTimeout
from kvmpy.config import MachineConfig
from kvmpy.devices.chardev import CharBackend
from kvmpy.kvm.flavor import KvmKind, host_kvm_kind

MiB = 1 << 20
BOOT_TIMEOUT = 300.0


class ScriptedConsole(CharBackend):
    """A serial backend that records the guest's output and types ``send`` once ``expect`` shows up."""

    def __init__(self, script: list[tuple[bytes, bytes]] | None = None) -> None:
        self.out = bytearray()
        self.script = list(script or [])
        self.pos = 0
        self._receive = None

    def start(self, receive, on_quit) -> None:
        self._receive = receive

    def write(self, data: bytes) -> None:
        self.out += data
        while self.script and self._receive is not None:
            expect, send = self.script[0]
            at = self.out.find(expect, self.pos)
            if at < 0:
                break
            self.pos = at + len(expect)
            self.script.pop(0)
            self._receive(send)

    def text(self) -> str:
        return self.out.decode(errors="replace")


def boot(assets, *, action: str, smp: int = 1, no_reboot: bool = True, mode: str = "auto",
         script: list[tuple[bytes, bytes]] | None = None, extra: str = "") -> tuple[int, str]:
    from kvmpy.machine import Machine

    append = f"console=ttyS0 quiet panic=-1 kvmpy_test={action}{extra}"
    cfg = MachineConfig(kernel=assets.kernel, initrd=assets.initrd, memory=512 * MiB, smp=smp, append=append,
                        no_reboot=no_reboot, linux_boot=mode)
    console = ScriptedConsole(script)
    machine = Machine(cfg, console=console)
    try:
        status = machine.run(timeout=BOOT_TIMEOUT)
    finally:
        machine.close()
    return status, console.text()


def _init_lines(text: str) -> list[str]:
    return re.findall(r"KVMPY-TEST init [^\r\n]*", text)


@pytest.mark.kvm_full
def test_boot_to_init_then_poweroff(linux_assets):
    extra = " kvmpy.mark=Ab-9_x/y"
    status, out = boot(linux_assets, action="poweroff", extra=extra)
    inits = _init_lines(out)
    assert len(inits) == 1, out
    assert "online=0 " in inits[0]
    assert f"sha256={linux_assets.payload_sha256}" in inits[0], "the initrd reached the guest damaged"
    assert f"cmdline=[console=ttyS0 quiet panic=-1 kvmpy_test=poweroff{extra}]" in out
    assert "reboot: Power down" in out
    assert status == 0


@pytest.mark.kvm_full
def test_smp2_and_reboot_exits_under_no_reboot(linux_assets):
    status, out = boot(linux_assets, action="reboot", smp=2, no_reboot=True)
    inits = _init_lines(out)
    assert len(inits) == 1 and "online=0-1 " in inits[0], out
    assert "reboot: Restarting system" in out
    assert status == 0


@pytest.mark.kvm_full
def test_console_input_reboot_resets_then_poweroff_pvh(linux_assets):
    # Host-side decompression (PVH entry), an interactive shell, a real reset and a second boot.
    script = [(b"KVMPY-TEST cmdline=", b"echo typed-$((6*7)); reboot -f\n"),
              (b"KVMPY-TEST cmdline=", b"poweroff -f\n")]
    status, out = boot(linux_assets, action="shell", smp=2, no_reboot=False, mode="pvh", script=script)
    assert "typed-42" in out, out
    assert len(_init_lines(out)) == 2, out
    assert all("online=0-1 " in line for line in _init_lines(out))
    assert status == 0


@pytest.mark.kvm_full
def test_power_button_reaches_acpid_which_powers_off(linux_assets):
    # system_powerdown sets PWRBTN_STS and raises the SCI; Linux's button driver turns that
    # into KEY_POWER, and busybox acpid in the guest runs its poweroff action.
    with kvmpy.VM(linux_assets.kernel, initrd=linux_assets.initrd, memory="512M", no_reboot=True,
                  append="console=ttyS0 quiet panic=-1 kvmpy_test=powerbutton") as vm:
        vm.console.expect("KVMPY-TEST acpid listening", timeout=BOOT_TIMEOUT)
        deadline = time.monotonic() + BOOT_TIMEOUT
        while vm.running and time.monotonic() < deadline:  # a press before acpid opened the device is lost
            with contextlib.suppress(VMGone):
                vm.qmp("system_powerdown")
            with contextlib.suppress(WaitTimeout):
                vm.wait(timeout=5)
        status = vm.wait(timeout=60)
    out = vm.console.output
    assert "event0" in out, out  # the button driver registered its input device
    assert "KVMPY-TEST power button pressed" in out, out
    assert "reboot: Power down" in out
    names = [e.name for e in vm.events]
    assert "POWERDOWN" in names and names[-1] == "SHUTDOWN"
    assert status == 0


@pytest.mark.kvm_full
def test_python_api_drives_a_linux_shell(linux_assets):
    # kvmpy.VM in-process: console expect/send against a real shell, QMP while it runs, then a poweroff.
    with kvmpy.VM(linux_assets.kernel, initrd=linux_assets.initrd, memory="512M", smp=2, no_reboot=True,
                  append="console=ttyS0 quiet panic=-1 kvmpy_test=shell") as vm:
        vm.console.expect("KVMPY-TEST cmdline=", timeout=BOOT_TIMEOUT)
        vm.console.send("echo typed-$((6*7)) cpus=$(cat /sys/devices/system/cpu/online)\n")
        assert vm.console.expect(re.compile(r"typed-42 cpus=(\S+)\s"), timeout=120).group(1) == "0-1"
        assert vm.status == "running"
        assert len(vm.qmp("query-cpus-fast")) == 2
        vm.pause()
        vm.resume()
        vm.console.send("poweroff -f\n")
        assert vm.wait(timeout=120) == 0
    assert [e.name for e in vm.events] == ["RESUME", "STOP", "RESUME", "SHUTDOWN"]
    assert vm.events[-1].data == {"guest": True, "reason": "guest-shutdown"}
    assert "reboot: Power down" in vm.console.output


@pytest.mark.kvm_host
def test_bad_kernel_file_is_one_clear_error(tmp_path):
    junk = tmp_path / "kernel.bin"
    junk.write_bytes(b"\x7fELG not a kernel\n" * 300)
    res = subprocess.run([sys.executable, "-m", "kvmpy", "-enable-kvm", "-kernel", str(junk), "-nographic"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"kvmpy: error: {junk}: not a kernel kvmpy can boot (no multiboot header, no Linux bzImage setup "
        f"header, not ELF)"]


@pytest.mark.kvm_host
@pytest.mark.skipif(host_kvm_kind() is not KvmKind.PVM, reason="the warning is about PVM-based host KVM")
def test_pvm_host_warns_before_booting_linux(tmp_path, caplog):
    from kvmpy.machine import Machine

    sys.path.insert(0, str(Path(__file__).parents[1] / "loader"))
    from loader_helpers import tiny_bzimage

    kernel = tmp_path / "bzImage"
    kernel.write_bytes(tiny_bzimage())
    with caplog.at_level(logging.WARNING, logger="kvmpy.machine"):
        machine = Machine(MachineConfig(kernel=kernel, memory=64 * MiB, serial="null"))
    machine.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "PVM-based" in warnings[0] and "kvm-amd" in warnings[0]
