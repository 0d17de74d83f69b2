"""A Linux ISO booted from ``-cdrom`` through SeaBIOS and GRUB: kvmpy against QEMU+KVM (issue 14).

``kvmpy -enable-kvm -m 512 -cdrom linux.iso -nographic``, the ISO made by grub-mkrescue with Debian's
cloud kernel and the busybox test initramfs (tests/firmware/linux_iso.py). SeaBIOS boots the CD
(El Torito, over ATAPI), GRUB on the serial port loads the kernel and initramfs from it through
SeaBIOS's int 13h, and the initramfs's init ends in a shell on ttyS0. The test runs a command there
and ``poweroff -f`` ends the VMM with status 0, under kvmpy and under QEMU with the same arguments; the
firmware's and the guest's lines must be the same, and the time from launch to the shell is compared.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from tests.firmware.grub_iso import missing_tools
from tests.firmware.linux_iso import APPEND, linux_iso
from tests.linux.conftest import prepare_assets
from tests.linux.guest_process import GuestProcess

BOOT_TIMEOUT = 600.0  # GRUB reads the 14 MB kernel by BIOS PIO: minutes in the nested bed, for QEMU too


def prepare_bed_assets() -> Path:
    """The ISO, made on the host (L1 sees the cache read-only)."""
    build = os.environ.get("KVMPY_IN_BED") != "1"
    assets = prepare_assets(build=build)
    return linux_iso(assets.kernel, assets.initrd, build=build)


def _boot(vmm: list[str], iso: Path, work: Path) -> tuple[float, list[str]]:
    """Seconds from launch to the guest's shell, and the lines that must match between VMMs."""
    work.mkdir()
    t0 = time.monotonic()
    guest = GuestProcess([*vmm, "-enable-kvm", "-m", "512", "-cdrom", str(iso), "-nographic", "-no-reboot"], work)
    try:
        # QEMU's SeaBIOS tries its empty default floppy and hard disk first; both end on the CD
        guest.expect(r"Booting from DVD/CD\.\.\.", BOOT_TIMEOUT)
        guest.expect(r"kvmpy-iso-grub", BOOT_TIMEOUT)
        cmdline = guest.expect(r"KVMPY-TEST cmdline=\[([^\]]*)\]", BOOT_TIMEOUT).group(1).decode()
        t_shell = time.monotonic() - t0
        out = guest.sh("echo CPUS=$(cat /sys/devices/system/cpu/online) INIT=$(cat /proc/1/comm) "
                       "ROOT=$(stat -f -c %T /)", "ISO", timeout=120)
        facts = re.search(r"CPUS=\S* INIT=\S* ROOT=\S*", out)
        assert facts is not None, out
        guest.send("poweroff -f\n")
        assert guest.wait(120) == 0, guest.text()[-2000:]
    finally:
        guest.close()
    assert cmdline.split()[-len(APPEND.split()):] == APPEND.split(), cmdline
    return t_shell, [cmdline, facts.group(0)]


@pytest.mark.kvm_full
@pytest.mark.skipif(bool(missing_tools()) or shutil.which("qemu-system-x86_64") is None,
                    reason="needs qemu-system-x86, grub-pc-bin, grub-common, xorriso and mtools")
def test_linux_iso_boots_from_cdrom_to_a_shell(tmp_path: Path) -> None:
    try:
        iso = prepare_bed_assets()
    except Exception as exc:
        pytest.fail(f"the Linux ISO is unavailable: {exc}", pytrace=False)
    qemu_s, qemu_lines = _boot(["qemu-system-x86_64"], iso, tmp_path / "qemu")
    ours_s, our_lines = _boot([sys.executable, "-m", "kvmpy"], iso, tmp_path / "kvmpy")
    assert our_lines == qemu_lines
    print(f"-cdrom linux.iso to the shell: kvmpy {ours_s:.1f} s, QEMU {qemu_s:.1f} s, ratio {ours_s / qemu_s:.2f}")
