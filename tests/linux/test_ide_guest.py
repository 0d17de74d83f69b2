"""Linux's ata_piix on kvmpy's PIIX IDE: an ATA disk (-hda) and an ATAPI CD-ROM (-cdrom) through libata.

The guest (Debian's cloud kernel; this module's initramfs adds ata_piix, sd_mod, sr_mod and
isofs to the usual test init) finds both drives, reads known sectors of /dev/sda (libata
reads by bus-master DMA), writes a sector and reads it back past the page cache, mounts the
ISO 9660 CD at /dev/sr0 and checks a file, and sees the CD's capacity. The host then checks
the written sector in the image.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

import kvmpy
from kvmpy.tools.fetch import cache_root, fetch_busybox, fetch_kernel
from tests.linux.conftest import INIT_SCRIPT
from tests.linux.guest_process import sh

BOOT_TIMEOUT = 300.0
MODULES = ["ata_piix", "sd_mod", "sr_mod", "isofs"]
DISK_SECTORS = 16384


def _dir() -> Path:
    return cache_root() / "ide-tests"


def prepare_bed_assets() -> tuple[Path, Path, Path, Path]:
    """(kernel, initrd, disk, iso), built on the host and cached (the bed has no network)."""
    kernel = fetch_kernel("cloud-amd64")
    busybox = fetch_busybox()
    out = _dir()
    out.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(INIT_SCRIPT.encode() + f"{busybox}:{kernel.modules_dir}:{MODULES}".encode()).hexdigest()
    initrd = out / f"initrd-{key[:16]}.gz"
    if not initrd.exists():
        from kvmpy.tools.initrd import main as initrd_main

        (out / "init.sh").write_text(INIT_SCRIPT)
        (out / "payload.bin").write_bytes(b"ide")
        status = initrd_main(["-o", str(initrd), "--busybox", str(busybox), "--init", str(out / "init.sh"),
                              "--file", f"{out / 'payload.bin'}:payload", "--modules-dir", str(kernel.modules_dir),
                              *(a for m in MODULES for a in ("-m", m))])
        if status != 0:
            raise RuntimeError(f"kvmpy initrd failed with status {status}")
    disk = out / "disk.raw"
    if not disk.exists():
        with open(disk, "wb") as f:
            for n in range(DISK_SECTORS):
                f.write(struct.pack("<Q", n) + bytes([n & 0xFF]) * 504)
    iso = out / "cd.iso"
    if not iso.exists():
        root = out / "iso"
        root.mkdir(exist_ok=True)
        (root / "hello.txt").write_text("hello from the kvmpy CD\n")
        (root / "big.bin").write_bytes(random.Random(16).randbytes(3 << 20))
        subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), str(root)], check=True,
                       capture_output=True)
    return kernel.vmlinuz, initrd, disk, iso


@pytest.mark.kvm_full
@pytest.mark.skipif(shutil.which("xorriso") is None, reason="needs xorriso")
def test_ata_piix_disk_and_cdrom(tmp_path: Path) -> None:
    try:
        kernel, initrd, disk0, iso = prepare_bed_assets()
    except Exception as exc:
        pytest.fail(f"IDE test assets are unavailable: {exc}", pytrace=False)
    disk = tmp_path / "disk.raw"
    shutil.copyfile(disk0, disk)
    big_sha = hashlib.sha256(random.Random(16).randbytes(3 << 20)).hexdigest()
    with kvmpy.VM(kernel, initrd=initrd, memory="256M", smp=1, no_reboot=True, process=True,
                  extra_args=["-drive", f"file={disk},format=raw,if=ide,index=0", "-cdrom", str(iso)],
                  append="console=ttyS0 quiet panic=-1 kvmpy_test=shell") as vm:
        vm.console.expect("KVMPY-TEST cmdline=", timeout=BOOT_TIMEOUT)
        out = sh(vm.console, "sleep 2; echo SDSIZE=$(cat /sys/block/sda/size) SRRO=$(cat /sys/block/sr0/ro); "
                             "dd if=/dev/sda bs=512 skip=1000 count=1 2>/dev/null | head -c 8 | od -An -tu8 | "
                             "sed 's/^ */SECT=/'", "I1")
        assert f"SDSIZE={DISK_SECTORS} SRRO=1" in out, out[-2000:]
        assert "SECT=1000" in out, out[-2000:]
        out = sh(vm.console, "printf 'written by ata_piix' | dd of=/dev/sda bs=512 seek=77 conv=sync,fsync "
                             "2>/dev/null; echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/sda bs=512 skip=77 "
                             "count=1 iflag=direct 2>/dev/null | head -c 19; echo", "I2")
        assert "written by ata_piix" in out, out[-2000:]
        out = sh(vm.console, "mkdir -p /cd && mount -t iso9660 -o ro /dev/sr0 /cd && cat /cd/hello.txt && "
                             "sha256sum /cd/big.bin | sed 's/^/BIG /'", "I3")
        assert "hello from the kvmpy CD" in out and f"BIG {big_sha}" in out, out[-2000:]
    with open(disk, "rb") as f:
        f.seek(77 * 512)
        assert f.read(512) == b"written by ata_piix".ljust(512, b"\0")
