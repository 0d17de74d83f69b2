"""kvmpy debian-image: apt's mirror, the MBR it writes, its CLI, and the real image booted by QEMU (TCG).

The boot test builds the image (minutes, needs root, debootstrap and a reachable Debian mirror; cached
afterwards) and boots it with ``qemu-system-x86_64 -accel tcg``: SeaBIOS, GRUB on the serial port, Linux,
systemd, a getty on ttyS0; it logs in as root, asks systemd how it is, and powers off (status 0).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kvmpy.tools.debian_image import (PART_START_SECTOR, ImageError, ImageSpec, apt_mirror, debian_image,
                                      image_path, mbr)
from tests.linux.guest_process import GuestProcess

BOOT_TIMEOUT = 600.0


def test_apt_mirror_reads_one_line_and_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "other.sources").write_text(
        "Types: deb\nURIs: https://example.org/node\nSuites: nodistro\nComponents: main\n\n"
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n")
    assert apt_mirror("bookworm", tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list").write_text("# deb http://commented.example/debian bookworm main\n"
                                           "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm "
                                           "main contrib\n")
    assert apt_mirror("bookworm", tmp_path) == "http://one.example/debian"  # sources.list comes first
    with pytest.raises(ImageError, match="no 'deb' source for trixie"):
        apt_mirror("trixie", tmp_path)


def test_mbr_has_one_bootable_partition_and_keeps_the_boot_code() -> None:
    boot = bytes(range(256)) * 2
    sector = mbr(boot, 4 << 21, 0x12345678)
    assert len(sector) == 512 and sector[510:] == b"\x55\xaa"
    assert sector[:0x66] == boot[:0x66] and sector[0x66:0x68] == b"\x90\x90" and sector[0x68:0x1B8] == boot[0x68:0x1B8]
    assert struct.unpack_from("<I", sector, 0x1B8)[0] == 0x12345678
    status, ptype, first, count = struct.unpack_from("<B3xB3xII", sector, 0x1BE)
    assert (status, ptype, first, count) == (0x80, 0x83, PART_START_SECTOR, (4 << 21) - PART_START_SECTOR)
    assert sector[0x1CE:0x1FE] == bytes(48)


def test_image_key_follows_its_inputs() -> None:
    a = ImageSpec(mirror="http://a/debian")
    assert a.key() == ImageSpec(mirror="http://a/debian").key()
    assert a.key() != ImageSpec(mirror="http://b/debian").key()
    assert a.key() != ImageSpec(mirror="http://a/debian", size=3 << 30).key()
    assert image_path(a, Path("/c")).parent == Path("/c/debian-image")


@pytest.mark.parametrize("args, message", [(["--size", "12"], "size '12' is not like 2G"),
                                           (["--size", "100G"], "outside 1G..64G"),
                                           (["--bogus"], "unrecognized arguments")])
def test_cli_mistakes_are_one_line(args: list[str], message: str) -> None:
    res = subprocess.run([sys.executable, "-m", "kvmpy.tools.debian_image", *args], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and res.stdout == ""
    assert len(res.stderr.splitlines()) == 1 and message in res.stderr, res.stderr


def _mirror_reachable(mirror: str) -> bool:
    try:
        with urllib.request.urlopen(f"{mirror.rstrip('/')}/dists/bookworm/Release", timeout=15) as r:
            return r.status == 200
    except OSError:
        return False


def built_image() -> Path:
    """The cached image, built here if missing; skips when it cannot be built on this machine."""
    try:
        spec = ImageSpec(mirror=apt_mirror())
    except ImageError as exc:
        pytest.skip(str(exc))
    if image_path(spec).exists():
        return image_path(spec)
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        pytest.skip("building the Debian image needs root and debootstrap (scripts/setup installs it)")
    if not _mirror_reachable(spec.mirror):
        pytest.skip(f"the Debian mirror {spec.mirror} is not reachable; the image cannot be built")
    return debian_image(spec)


def login_and_poweroff(guest: GuestProcess, timeout: float) -> dict[str, float]:
    """Drive a booting image on ``guest``'s serial console: login, systemd's state, poweroff. Returns timings."""
    t0 = time.monotonic()
    m = guest.expect(r"GNU GRUB|grub rescue>", timeout)
    assert m.group(0) == b"GNU GRUB", f"GRUB could not find its files: {guest.text()[-1500:]}"
    t_grub = time.monotonic() - t0
    m = guest.expect(r"Booting `Debian|error: .*", timeout)
    assert m.group(0).startswith(b"Booting"), f"GRUB failed: {guest.text()[-1500:]}"
    guest.expect(r"kvmpy-debian login: ", timeout)
    t_login = time.monotonic() - t0
    guest.send("root\n")
    guest.expect(r"root@kvmpy-debian:~# ", 120)
    state = guest.sh("systemctl is-system-running --wait", "STATE", timeout=300)
    assert re.search(r"\b(running|degraded)\b", state), state
    uname = guest.sh("uname -r; cat /proc/cmdline; findmnt -no SOURCE,FSTYPE /", "INFO", timeout=60)
    assert "console=ttyS0" in uname and "ext4" in uname, uname
    guest.send("systemctl poweroff\n")
    assert guest.wait(300) == 0, guest.text()[-2000:]
    return {"grub": t_grub, "login": t_login, "total": time.monotonic() - t0}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64")
def test_image_boots_to_login_under_qemu_tcg(tmp_path: Path) -> None:
    image = built_image()
    guest = GuestProcess(["qemu-system-x86_64", "-accel", "tcg", "-m", "1G", "-snapshot", str(image),
                          "-nographic", "-no-reboot"], tmp_path)
    try:
        times = login_and_poweroff(guest, BOOT_TIMEOUT)
    finally:
        guest.close()
    print(f"QEMU TCG: GRUB after {times['grub']:.1f} s, login prompt after {times['login']:.1f} s, "
          f"powered off after {times['total']:.1f} s")
