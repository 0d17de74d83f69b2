"""GRUB from a grub-mkrescue ISO on kvmpy's std VGA and PS/2 keyboard, screen for screen against QEMU.

The same ISO boots three ways, each with the same arguments under kvmpy and QEMU (TCG):
from ``-cdrom`` (ATAPI, El Torito), as the positional image (QEMU's -hda: the ISO is
hybrid, so its MBR boots), and from a virtio-blk disk picked by ``bootindex``. In each,
GRUB's menu must equal QEMU's screendump; then ``c`` typed with QMP send-key opens GRUB's
command line, ``echo kvmpy-grub-ok`` and Enter print the text, and both screens must
equal QEMU's again. GRUB reads the keys through SeaBIOS's int 16h, which needs SeaBIOS's
PS/2 driver (the DSDT's PNP0303) and IRQ1; its text goes through int 10h to VGA text mode.

On this host's KVM (PVM emulates guest ring 0) GRUB takes about 30 s to reach its menu
under kvmpy (28 s measured, SeaBIOS's banner at 8 s): the time goes into GRUB's own ring-0
code (module loading, its heap), not into kvmpy's exits. QEMU with -accel kvm is no faster
here, so the oracle runs TCG.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from tests.firmware.grub_iso import grub_iso, missing_tools
from tests.firmware.screens import KvmpyScreen, QemuScreen

SEABIOS = Path("/usr/share/seabios/bios-256k.bin")
MENU_HELP = "before booting or `c' for a command-line."
PROMPT = "grub>"
OUTPUT = "kvmpy-grub-ok"
BOOT_TIMEOUT = 300  # kvmpy under PVM, on a shared 2-core machine
pytestmark = [pytest.mark.kvm_host,
              pytest.mark.skipif(not SEABIOS.is_file() or shutil.which("qemu-system-x86_64") is None
                                 or bool(missing_tools()),
                                 reason="needs seabios, qemu-system-x86, grub-pc-bin, grub-common, xorriso, mtools")]


@pytest.fixture(scope="module")
def iso() -> Path:
    return grub_iso()


def last_line(rows: list[str]) -> str:
    lines = [r for r in rows if r.strip()]
    return lines[-1] if lines else ""


Step = tuple[np.ndarray, tuple[int, int] | None]


def kvmpy_session(args: list[str], tmp: Path) -> tuple[list[Step], list[str]]:
    """kvmpy's screens at GRUB's menu, at its command line, and after the echo; and the last text."""
    ours = KvmpyScreen(args, tmp)
    steps: list[Step] = []
    try:
        ours.wait_text(lambda rows: any(r.strip() == MENU_HELP for r in rows), BOOT_TIMEOUT)
        steps.append((ours.frame(), ours.cursor()))
        ours.press("c")
        ours.wait_text(lambda rows: last_line(rows) == PROMPT, 60)
        steps.append((ours.frame(), ours.cursor()))
        ours.type(f"echo {OUTPUT}\n")
        rows = ours.wait_text(lambda rows: last_line(rows) == PROMPT and OUTPUT in rows, 60)
        steps.append((ours.frame(), ours.cursor()))
        time.sleep(0.3)  # the last key's release before the VM goes
    finally:
        ours.close()
    return steps, rows


def qemu_session(args: list[str], tmp: Path, steps: list[Step]) -> None:
    """QEMU, typing the same, must show each of kvmpy's screens in turn."""
    theirs = QemuScreen(args, tmp)
    try:
        (menu, menu_cur), (cmdline, cmd_cur), (echoed, echo_cur) = steps
        theirs.wait_frame(menu, menu_cur, timeout=120)
        theirs.press("c")
        theirs.wait_frame(cmdline, cmd_cur, timeout=30)
        theirs.type(f"echo {OUTPUT}\n")
        theirs.wait_frame(echoed, echo_cur, timeout=30)
    finally:
        theirs.close()


def check(args: list[str], tmp: Path) -> None:
    steps, rows = kvmpy_session(["-m", "128", "-nodefaults", "-vga", "std", *args], tmp)
    echo = [i for i, r in enumerate(rows) if r.endswith(f"{PROMPT} echo {OUTPUT}")]
    assert echo and rows[echo[-1] + 1] == OUTPUT, rows  # the command, its output, a new prompt
    qemu_session(["-m", "128", "-nodefaults", "-vga", "std", *args], tmp, steps)


def test_grub_from_cdrom(iso: Path, tmp: Path) -> None:
    check(["-cdrom", str(iso)], tmp)


def test_grub_from_positional_image(iso: Path, tmp: Path) -> None:
    disk = tmp / "grub.img"
    shutil.copyfile(iso, disk)  # a writable disk: each VM gets the cached ISO's bytes, not the cache itself
    check([str(disk)], tmp)


def test_grub_from_virtio_blk_with_bootindex(iso: Path, tmp: Path) -> None:
    disk = tmp / "grub.img"
    shutil.copyfile(iso, disk)
    check(["-drive", f"file={disk},if=none,id=d0,format=raw", "-device", "virtio-blk-pci,drive=d0,bootindex=1"],
          tmp)
