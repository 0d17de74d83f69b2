"""The pc board without -kernel boots SeaBIOS (Debian's seabios package), whose text reaches COM1 as under
``qemu-system-x86_64 -nographic``.

The host test runs on any /dev/kvm (SeaBIOS gets to "No bootable device." even on the host's PVM KVM);
the kvm_full test runs kvmpy and QEMU with the same arguments in the same bed run and compares the
lines that do not depend on timing.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmpy.config import MachineConfig
from kvmpy.devices.chardev import BufferBackend
from kvmpy.machine import Machine

SEABIOS = Path("/usr/share/seabios/bios-256k.bin")
DONE = b"No bootable device."
ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|c)")
pytestmark = pytest.mark.skipif(not SEABIOS.is_file(), reason="Debian's seabios package is not installed")


def serial_lines(raw: bytes) -> list[str]:
    """The console text without SeaBIOS's terminal control sequences, as non-empty lines."""
    text = ANSI.sub("", raw.decode(errors="replace")).replace("\r", "")
    text = re.sub(r"[^\n]*\x08", "", text)  # what iPXE's countdown rubs out with backspaces
    return [line.rstrip() for line in text.split("\n") if line.strip()]


def run_until(argv: list[str], marker: bytes, timeout: float) -> bytes:
    """Run ``argv`` (stdin /dev/null) until ``marker`` shows on its stdout or ``timeout``; then stop it."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, start_new_session=True)
    out = bytearray()
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while marker not in out and time.monotonic() < deadline:
            if sel.select(timeout=1.0):
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
        time.sleep(0.5)  # the rest of the marker's line
        if sel.select(timeout=0):
            out += os.read(proc.stdout.fileno(), 65536)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
    assert marker in out, (bytes(out[-2000:]), err[-2000:])
    return bytes(out)


def kvmpy_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "kvmpy", "-enable-kvm", *args]


@pytest.mark.kvm_host
def test_seabios_reaches_no_bootable_device_in_process() -> None:
    # SeaBIOS: POST, fw_cfg (DMA), the table-loader placing kvmpy's ACPI tables, the boot attempts.
    console = BufferBackend()
    machine = Machine(MachineConfig(memory=128 << 20), console=console)
    try:
        machine.start()
        console.wait_for(DONE, timeout=240)
        sections = machine.vmstate.capture()  # fw_cfg's state goes with the rest
    finally:
        machine.close()
    lines = serial_lines(console.output)
    assert lines[0].startswith("SeaBIOS (version "), lines
    assert "Booting from Hard Disk..." in lines and "Booting from Floppy..." in lines, lines
    assert lines[-1].startswith("No bootable device."), lines
    assert "dev/fw_cfg" in sections


@pytest.mark.kvm_host
def test_cli_without_kernel_boots_the_bios_given() -> None:
    out = run_until(kvmpy_argv("-nographic", "-m", "128", "-bios", str(SEABIOS)), DONE, 240)
    assert serial_lines(out)[0].startswith("SeaBIOS (version ")


# QEMU (with KVM as without) loads kvmvapic.bin, a legacy option ROM whose BCV makes SeaBIOS try the
# hard disk before the floppy when no disk exists; kvmpy has no such ROM, so QEMU runs without it for the
# exact comparison (checked below: with it, only the order of those two attempts differs).
NO_VAPIC = ["-global", "kvm-apic.vapic=off"]
ATTEMPTS = {"Booting from Hard Disk...", "Booting from Floppy...", "Boot failed: could not read the boot disk"}


@pytest.mark.kvm_full
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="no qemu-system-x86_64")
def test_seabios_console_matches_qemu() -> None:
    args = ["-nographic", "-m", "128", "-nodefaults", "-serial", "stdio"]
    ours = serial_lines(run_until(kvmpy_argv(*args), DONE, 600))
    qemu = serial_lines(run_until(["qemu-system-x86_64", "-enable-kvm", *args, *NO_VAPIC], DONE, 300))
    print("QEMU:", qemu, "\nkvmpy:", ours)
    assert ours == qemu and ours[0].startswith("SeaBIOS (version ") and ours[-1] == "No bootable device."
    with_vapic = serial_lines(run_until(["qemu-system-x86_64", "-enable-kvm", *args], DONE, 300))
    assert sorted(with_vapic) == sorted(ours)


@pytest.mark.kvm_full
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="no qemu-system-x86_64")
def test_seabios_banner_matches_qemu_with_default_devices_and_bios_given() -> None:
    # QEMU's default pc adds an IDE CD-ROM, a NIC with an iPXE ROM and a VGA that kvmpy lacks (for now):
    # the banner and the final line match; the boot attempts kvmpy makes are among QEMU's.
    args = ["-nographic", "-m", "256", "-smp", "2", "-bios", str(SEABIOS)]
    ours = serial_lines(run_until(kvmpy_argv(*args), DONE, 600))
    qemu = serial_lines(run_until(["qemu-system-x86_64", "-enable-kvm", *args, *NO_VAPIC], DONE, 300))
    print("QEMU:", qemu, "\nkvmpy:", ours)
    assert ours[0] == qemu[0] and ours[0].startswith("SeaBIOS (version ")
    assert ours[-1] == "No bootable device." and qemu[-1].endswith("No bootable device.")
    assert {line for line in ours if line in ATTEMPTS} <= {line for line in qemu if line in ATTEMPTS}
