"""A bootable Linux ISO for the ``-cdrom`` tests: grub-mkrescue with a Debian kernel and an initramfs.

The ISO is what a live or installer CD looks like to the firmware: a hybrid grub-mkrescue image
(El Torito for a CD, an MBR for a disk) whose GRUB, on the first serial port, says
``kvmpy-iso-grub`` and boots ``/boot/vmlinuz`` with ``/boot/initrd.gz`` straight away. The
kernel and initramfs are the ones the Linux tests use (Debian's cloud kernel and the busybox
test init of tests/linux/conftest.py, which ends in a shell on ttyS0 when no ``kvmpy_test=``
action is given). Cached under ~/.cache/kvmpy/grub beside the GRUB-only ISO.
"""

from __future__ import annotations

from pathlib import Path

from tests.firmware.grub_iso import mkrescue_iso

APPEND = "console=ttyS0 quiet panic=-1"
GRUB_CFG = f"""\
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
menuentry "Linux from a kvmpy test ISO" {{
  echo kvmpy-iso-grub
  linux /boot/vmlinuz {APPEND}
  initrd /boot/initrd.gz
}}
"""


def linux_iso(kernel: Path, initrd: Path, build: bool = True) -> Path:
    """The cached ISO holding ``kernel`` and ``initrd`` (``build=False``: only look; FileNotFoundError if missing)."""
    return mkrescue_iso("linux", GRUB_CFG, {"boot/vmlinuz": kernel, "boot/initrd.gz": initrd}, build=build)
