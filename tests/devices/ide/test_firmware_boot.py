"""SeaBIOS boots from kvmpy's IDE disk and ATAPI CD-ROM, compared with qemu-system-x86_64 given the same arguments.

A hand-written boot sector (bootsector.S, built here with binutils) asks int 13h for its
extensions, reads two runs of 16 KiB with extended reads (AH=42h) and prints their 16-bit
word sums through int 10h, which SeaBIOS's serial console carries to COM1 under -nographic.
As an MBR on ``-hda`` the runs are 512-byte sectors; as an El Torito no-emulation boot image
on ``-cdrom`` (xorriso -b ... -no-emul-boot) they are 2048-byte CD sectors. The sums must be
the image's own and QEMU's. Runs on this host's KVM (SeaBIOS needs no complete KVM).
"""

from __future__ import annotations

import random
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.boards.test_pc_firmware import kvmpy_argv, run_until

SEABIOS = Path("/usr/share/seabios/bios-256k.bin")
SOURCE = Path(__file__).with_name("bootsector.S")
LINE = re.compile(rb"IDE-BOOT dl=([0-9A-F]{2}) a=([0-9A-F]{4}) b=([0-9A-F]{4})(?: FAIL)?")
DAP1, DAP2 = 0x1C0, 0x1D0
RUN = 16384
pytestmark = [pytest.mark.kvm_host,
              pytest.mark.skipif(not SEABIOS.is_file() or shutil.which("qemu-system-x86_64") is None
                                 or shutil.which("as") is None, reason="needs seabios, qemu-system-x86, binutils")]


def boot_sector(tmp: Path, count: int, lba_a: int, lba_b: int) -> bytes:
    obj, out = tmp / "boot.o", tmp / "boot.bin"
    subprocess.run(["as", "--32", "-o", str(obj), str(SOURCE)], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext", "0x7c00", "--oformat", "binary", "-o", str(out), str(obj)],
                   check=True)
    code = bytearray(out.read_bytes())
    assert len(code) == 512
    for dap, lba in ((DAP1, lba_a), (DAP2, lba_b)):
        struct.pack_into("<H", code, dap + 2, count)
        struct.pack_into("<Q", code, dap + 8, lba)
    return bytes(code)


def word_sum(data: bytes) -> str:
    return f"{sum(struct.unpack(f'<{len(data) // 2}H', data)) & 0xFFFF:04X}"


def boot_line(argv: list[str]) -> tuple[str, str, str]:
    out = run_until(argv, b"IDE-BOOT", timeout=240)
    m = LINE.search(out.replace(b"\r", b""))
    assert m is not None and b"FAIL" not in m.group(0), out[-800:]
    return m.group(1).decode(), m.group(2).decode(), m.group(3).decode()


def both(args: list[str]) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
    mine = boot_line(kvmpy_argv("-m", "128", "-nographic", *args))
    qemu = boot_line(["qemu-system-x86_64", "-m", "128", "-nographic", "-net", "none", *args])
    return mine, qemu


def make_disk(tmp: Path, seed: int = 14, name: str = "disk.raw") -> tuple[Path, tuple[str, str]]:
    """An MBR disk image and the two sums its boot sector must print (``seed`` picks the data)."""
    rng = random.Random(seed)
    disk = bytearray(boot_sector(tmp, 32, 1, 4000)) + rng.randbytes(4 << 20)
    image = tmp / name
    image.write_bytes(disk)
    return image, (word_sum(disk[512:512 + RUN]), word_sum(disk[4000 * 512:4000 * 512 + RUN]))


def make_iso(tmp: Path) -> tuple[Path, tuple[str, str]]:
    """An El Torito no-emulation ISO and the two sums its boot image must print."""
    root = tmp / "iso"
    root.mkdir()
    payload = random.Random(15).randbytes(1 << 20)
    (root / "data.bin").write_bytes(payload)
    (root / "boot.img").write_bytes(bytes(2048))
    iso = tmp / "boot.iso"

    def build() -> bytes:
        subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), "-b", "boot.img", "-no-emul-boot",
                        "-boot-load-size", "4", str(root)], check=True, capture_output=True)
        return iso.read_bytes()

    data_lba = build().find(payload[:256]) // 2048
    assert data_lba > 0
    (root / "boot.img").write_bytes(boot_sector(tmp, 8, data_lba, data_lba + 100).ljust(2048, b"\0"))
    image = build()
    assert image.find(payload[:256]) // 2048 == data_lba
    a = image[data_lba * 2048:data_lba * 2048 + RUN]
    b = image[(data_lba + 100) * 2048:(data_lba + 100) * 2048 + RUN]
    return iso, (word_sum(a), word_sum(b))


def test_mbr_from_hda_reads_with_int13_extensions(tmp_path: Path) -> None:
    image, sums = make_disk(tmp_path)
    mine, qemu = both(["-drive", f"file={image},format=raw,if=ide,index=0"])
    assert mine == ("80", *sums)
    assert qemu == mine


needs_xorriso = pytest.mark.skipif(shutil.which("xorriso") is None, reason="needs xorriso")


@needs_xorriso
def test_el_torito_no_emulation_from_cdrom(tmp_path: Path) -> None:
    iso, sums = make_iso(tmp_path)
    mine, qemu = both(["-cdrom", str(iso)])
    assert mine[1:] == sums
    assert mine == qemu


@needs_xorriso
def test_boot_order_d_and_bootindex(tmp_path: Path) -> None:
    image, disk_sums = make_disk(tmp_path)
    iso, cd_sums = make_iso(tmp_path)
    fmt = f"file={image},format=raw"
    mine, qemu = both(["-drive", f"{fmt},if=ide,index=0", "-cdrom", str(iso), "-boot", "order=d"])
    assert mine[1:] == cd_sums and mine == qemu
    mine, qemu = both(["-drive", f"{fmt},if=none,id=d0", "-device", "virtio-blk-pci,drive=d0,bootindex=1",
                       "-cdrom", str(iso), "-boot", "order=d"])
    assert mine[1:] == disk_sums and mine == qemu


def test_device_ide_hd_bootindex_picks_the_second_disk(tmp_path: Path) -> None:
    first, first_sums = make_disk(tmp_path, 14, "a.raw")
    second, second_sums = make_disk(tmp_path, 16, "b.raw")
    assert first_sums != second_sums
    drives = ["-drive", f"file={first},format=raw,if=none,id=a", "-drive", f"file={second},format=raw,if=none,id=b"]
    mine, qemu = both([*drives, "-device", "ide-hd,drive=a", "-device", "ide-hd,drive=b,bootindex=1"])
    assert mine[1:] == second_sums and mine == qemu
    mine, qemu = both([*drives, "-device", "ide-hd,drive=a,bus=ide.0", "-device", "ide-hd,drive=b,bus=ide.0"])
    assert mine[1:] == first_sums and mine == qemu  # no bootindex: the CMOS order's first disk, ide.0's master


@needs_xorriso
def test_device_ide_cd_bootindex_beats_a_bootable_hda(tmp_path: Path) -> None:
    image, _ = make_disk(tmp_path)
    iso, cd_sums = make_iso(tmp_path)
    mine, qemu = both(["-hda", str(image), "-drive", f"file={iso},if=none,id=cd,media=cdrom",
                       "-device", "ide-cd,drive=cd,bootindex=1"])
    assert mine[1:] == cd_sums and mine == qemu


def test_strict_boot_order_and_reboot_timeout(tmp_path: Path) -> None:
    """An empty ide-cd first in bootorder: SeaBIOS falls back to -hda, unless -boot strict=on ends the list
    (HALT); then it reports no bootable device and, with reboot-timeout=0, retries at once."""
    image, sums = make_disk(tmp_path)
    args = ["-hda", str(image), "-drive", "if=none,id=cd,media=cdrom", "-device", "ide-cd,drive=cd,bootindex=1"]
    mine, qemu = both(args)
    assert mine[1:] == sums and mine == qemu
    strict = [*args, "-boot", "strict=on,reboot-timeout=0"]
    for argv in (kvmpy_argv("-m", "128", "-nographic", *strict),
                 ["qemu-system-x86_64", "-m", "128", "-nographic", "-net", "none", *strict]):
        out = run_until(argv, b"No bootable device.  Retrying in 0 seconds.", timeout=240)
        assert b"IDE-BOOT" not in out, out[-800:]
