"""An installed Debian 12 booted from its disk through SeaBIOS and GRUB: kvmpy against QEMU+KVM (issue 14).

The image ``kvmpy debian-image`` builds (GRUB on the serial port, Linux, systemd, a getty on ttyS0) boots
under ``-enable-kvm -m 1G -nographic`` with the disk on virtio-blk. The test logs in as root (no
password), asks systemd how the boot went, runs ``systemctl poweroff`` and expects exit status 0, under
kvmpy and under QEMU with the same arguments, and reports the boot-time ratio. The image is built on the
host before the bed boots (``prepare_bed_assets``; L1 has no network and sees the host read-only); each
VMM boots a fresh qcow2 overlay over it.

Why virtio and not the positional image (an IDE disk, which the README shows): in the nested bed every
port access costs an exit through TCG's emulated SVM, and SeaBIOS moves an IDE disk 512 bytes at a time
by PIO, so GRUB took more than 140 s to load the kernel and initramfs under QEMU+KVM alone there; over
virtio SeaBIOS sends one request per int 13h call.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvmpy.tools.debian_image import ImageError, debian_image
from tests.linux.guest_process import GuestProcess
from tests.tools.test_debian_image import login_and_poweroff

BOOT_TIMEOUT = 1800.0


def prepare_bed_assets() -> Path:
    """The Debian image, built on the host (minutes, root, debootstrap and a mirror) and cached."""
    return debian_image(build_missing=os.environ.get("KVMPY_IN_BED") != "1")


def _boot(vmm: list[str], image: Path, work: Path) -> dict[str, float]:
    """Boot ``vmm -enable-kvm -m 1G -drive file=debian.qcow2,if=virtio -nographic`` in ``work``; debian.qcow2 is a
    fresh overlay over the cached ``image`` (L1 sees the cache read-only, and the guest writes to its disk)."""
    work.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "qcow2", "debian.qcow2"],
                   cwd=work, check=True, timeout=60)
    guest = GuestProcess([*vmm, "-enable-kvm", "-m", "1G", "-drive", "file=debian.qcow2,if=virtio", "-nographic",
                          "-no-reboot"], work)
    try:
        return login_and_poweroff(guest, BOOT_TIMEOUT)
    finally:
        guest.close()


@pytest.mark.kvm_full
def test_debian_boots_to_login_and_powers_off(tmp_path: Path) -> None:
    try:
        image = prepare_bed_assets()
    except (ImageError, OSError) as exc:
        pytest.fail(f"the Debian image is unavailable: {exc}", pytrace=False)
    qemu = _boot(["qemu-system-x86_64"], image, tmp_path / "qemu")
    ours = _boot([sys.executable, "-m", "kvmpy"], image, tmp_path / "kvmpy")
    print(f"to the login prompt: kvmpy {ours['login']:.1f} s, QEMU {qemu['login']:.1f} s, "
          f"ratio {ours['login'] / qemu['login']:.2f}; to poweroff: kvmpy {ours['total']:.1f} s, "
          f"QEMU {qemu['total']:.1f} s")
