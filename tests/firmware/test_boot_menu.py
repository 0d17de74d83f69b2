"""SeaBIOS's boot menu opens on ESC sent with QMP send-key, under kvmpy as under QEMU given the same arguments.

With ``-boot menu=on`` SeaBIOS prints "Press ESC for boot menu." and reads the keyboard
through its own PS/2 driver (IRQ1, int 16h), which it sets up only when the DSDT declares
a PNP0303 keyboard. The key goes in through the i8042; the menu (its list of boot devices)
must appear and the screen must equal QEMU's screendump at the prompt and in the menu.

The prompt waits SeaBIOS's default 2.5 s, counted in timer ticks. On this host's KVM (PVM
emulates guest ring 0) a re-injected backlog of PIT ticks ended that wait within a fraction
of a second and starved IRQ1; kvmpy drops missed ticks there (see kvmpy.boards.pc).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.firmware.screens import KvmpyScreen, QemuScreen

SEABIOS = Path("/usr/share/seabios/bios-256k.bin")
PROMPT, MENU = "Press ESC for boot menu.", "Select boot device:"
pytestmark = [pytest.mark.kvm_host,
              pytest.mark.skipif(not SEABIOS.is_file() or shutil.which("qemu-system-x86_64") is None,
                                 reason="needs Debian's seabios and qemu-system-x86 packages")]


def test_esc_opens_the_boot_menu_as_under_qemu(tmp: Path) -> None:
    disk = tmp / "disk.raw"
    disk.write_bytes(bytes(1 << 20))  # a blank disk: the menu lists it, nothing boots from it
    args = ["-m", "128", "-nodefaults", "-vga", "std", "-boot", "menu=on",
            "-drive", f"file={disk},format=raw,if=ide,index=0"]
    ours = KvmpyScreen(args, tmp)
    try:
        ours.wait_text(lambda rows: any(r == PROMPT for r in rows), timeout=120, settle=0)
        prompt, prompt_cursor = ours.frame(), ours.cursor()
        ours.press("esc")
        rows = ours.wait_text(lambda rows: MENU in rows and any(rows[rows.index(MENU) + 1:]), timeout=60)
        menu, menu_cursor = ours.frame(), ours.cursor()
        entries = rows[rows.index(MENU) + 2:]
        assert entries and entries[0].startswith("1. "), rows
        time.sleep(0.3)  # the last key's release (send-key's 100 ms hold) before the VM goes
    finally:
        ours.close()
    theirs = QemuScreen(args, tmp)
    try:
        theirs.wait_frame(prompt, prompt_cursor, timeout=60)
        theirs.press("esc")
        theirs.wait_frame(menu, menu_cursor, timeout=60)
    finally:
        theirs.close()
