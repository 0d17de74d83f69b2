"""Building an installed Debian 12 disk image that boots through BIOS firmware: ``kvmpy debian-image``.

The image is what a Debian installer would leave on a disk, made without one:
``debootstrap`` installs a minimal bookworm (systemd, udev, Debian's amd64 kernel
and its initramfs, GRUB's BIOS modules) from the mirror apt already uses on this
machine into a directory; the directory is configured (hostname, fstab by UUID,
root without a password, a serial console) and written as an ext4 file system
(``mkfs.ext4 -d``) into the first partition of a raw disk with an MBR partition
table. GRUB goes where ``grub-install --target=i386-pc`` puts it: its boot.img in
the MBR and a core.img (made by the image's own ``grub-mkimage``) in the gap before
the partition, with the modules and a grub.cfg under /boot/grub. No loop device and
no mount are needed; ``qemu-img convert`` finally makes the raw disk a qcow2.

GRUB and Linux talk on the first serial port (GRUB's ``serial`` terminal, the
kernel's ``console=ttyS0``), where systemd starts a getty, so ``-nographic`` shows
the whole boot and a login prompt: log in as ``root`` with no password.

The result is cached under kvmpy's cache directory, keyed on what goes into it
(suite, packages, the configuration below, size, mirror), and built under a cache
lock in a temporary directory that is renamed into place. debootstrap needs root.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from kvmpy.tools.fetch import cache_lock, cache_root
from kvmpy.tools.initrd import command_parser, one_line, parse_command_line

log = logging.getLogger(__name__)

PROG = "kvmpy debian-image"
SUITE = "bookworm"
# minbase plus what boots it: systemd as init, udev for devices, the kernel (which pulls in initramfs-tools)
# and GRUB's BIOS modules and tools (grub-pc-bin; grub-pc itself would want to grub-install on a real disk).
PACKAGES = ("systemd-sysv", "udev", "linux-image-amd64", "grub-pc-bin", "kmod", "initramfs-tools")
HOSTNAME = "kvmpy-debian"
DEFAULT_SIZE = 2 << 30
PART_START_SECTOR = 2048            # 1 MiB, as fdisk aligns it; the gap before it holds GRUB's core.img
SECTOR = 512
_STEP_TIMEOUT_S = 1800
# boot.img offsets (GRUB's include/grub/i386/pc/boot.h): the drive check grub-install turns into NOPs for
# hard disks (so a BIOS that passes a bad drive number still boots from 0x80), and the partition table.
_BOOT_DRIVE_CHECK = 0x66
_DISK_SIGNATURE = 0x1B8
_PART_TABLE = 0x1BE

GRUB_CFG = """\
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
set default=0
menuentry 'Debian GNU/Linux 12 (kvmpy image)' {{
    insmod part_msdos
    insmod ext2
    search --no-floppy --fs-uuid --set=root {uuid}
    linux /boot/{vmlinuz} root=UUID={uuid} ro console=ttyS0,115200 quiet
    initrd /boot/{initrd}
}}
"""

# Embedded in core.img: find the root file system by UUID whatever BIOS drive it is, then load normal.mod.
GRUB_EARLY_CFG = """\
search --no-floppy --fs-uuid --set=root {uuid}
set prefix=($root)/boot/grub
"""

# The initramfs holds only what finds and mounts the root on the disks QEMU's pc machine offers (IDE, AHCI,
# virtio, SCSI) instead of Debian's MODULES=most: GRUB loads it through BIOS disk calls, and 36 MB of it took
# most of the boot under an emulating VMM. Dependencies (crc32c for ext4...) are added by initramfs-tools.
INITRAMFS_MODULES = ("ata_piix", "ata_generic", "ahci", "sd_mod", "virtio_pci", "virtio_blk", "virtio_scsi",
                     "sym53c8xx", "ext4")

CORE_MODULES = ("biosdisk", "part_msdos", "ext2", "search", "search_fs_uuid")


class ImageError(RuntimeError):
    """The image could not be built; the message says why."""


@dataclass(frozen=True)
class ImageSpec:
    """What goes into an image; its ``key`` names the cached result."""

    mirror: str
    size: int = DEFAULT_SIZE
    suite: str = SUITE
    packages: tuple[str, ...] = PACKAGES

    def key(self) -> str:
        h = hashlib.sha256()
        for part in (self.mirror, str(self.size), self.suite, ",".join(self.packages), HOSTNAME, GRUB_CFG,
                     GRUB_EARLY_CFG, ",".join(CORE_MODULES), ",".join(INITRAMFS_MODULES), str(PART_START_SECTOR)):
            h.update(part.encode() + b"\0")
        return h.hexdigest()[:16]


def _sources_files(etc_apt: Path) -> list[Path]:
    files = [etc_apt / "sources.list"]
    d = etc_apt / "sources.list.d"
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources"))
    return [f for f in files if f.is_file()]


def apt_mirror(suite: str = SUITE, etc_apt: Path = Path("/etc/apt")) -> str:
    """The URI of the first ``deb`` source for ``suite`` with component main in apt's configuration."""
    for path in _sources_files(etc_apt):
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":  # deb822 stanzas
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    m = re.match(r"^([A-Za-z-]+):\s*(.*)$", line)
                    if m:
                        fields[m.group(1).lower()] = m.group(2)
                if ("deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split()
                        and "main" in fields.get("components", "").split()
                        and fields.get("enabled", "yes").lower() != "no"):
                    return fields.get("uris", "").split()[0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
                if len(words) >= 4 and words[0] == "deb" and words[2] == suite and "main" in words[3:]:
                    return words[1]
    raise ImageError(f"no 'deb' source for {suite} main in {etc_apt}/sources.list*; pass --mirror URL")


def _run(argv: list[str], what: str, logfile: Path | None = None) -> str:
    log.debug("running %s", " ".join(argv))
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=_STEP_TIMEOUT_S, check=False,
                             env={**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"})
    except FileNotFoundError as exc:
        raise ImageError(f"{argv[0]} is not installed; it is needed for {what} (scripts/setup installs it)") from exc
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"{what} did not finish within {_STEP_TIMEOUT_S} s") from exc
    if logfile is not None:
        with open(logfile, "a") as f:
            f.write(f"$ {' '.join(argv)}\n{res.stdout}{res.stderr}\n")
    if res.returncode != 0:
        tail = (res.stderr.strip() or res.stdout.strip()).splitlines()[-3:]
        raise ImageError(f"{what} failed (status {res.returncode}): {' | '.join(tail)}")
    return res.stdout


def _only(root: Path, pattern: str) -> str:
    found = sorted((root / "boot").glob(pattern))
    if not found:
        raise ImageError(f"the installed system has no /boot/{pattern}")
    return found[-1].name


def configure(root: Path, fs_uuid: str, machine_id: str) -> None:
    """Make the debootstrapped tree ``root`` a bootable system: names, fstab, login, GRUB's files."""
    (root / "etc/hostname").write_text(HOSTNAME + "\n")
    (root / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n"
                                     "::1\tlocalhost ip6-localhost ip6-loopback\n")
    (root / "etc/fstab").write_text(f"UUID={fs_uuid}\t/\text4\terrors=remount-ro\t0\t1\n")
    # A fixed machine-id: no first-boot setup (systemd-firstboot could wait for input on the console).
    (root / "etc/machine-id").write_text(machine_id + "\n")
    _run(["chroot", str(root), "passwd", "--delete", "root"], "clearing root's password")
    (root / "etc/initramfs-tools/conf.d/kvmpy").write_text("MODULES=list\n")
    with open(root / "etc/initramfs-tools/modules", "a") as f:
        f.write("".join(m + "\n" for m in INITRAMFS_MODULES))
    _run(["chroot", str(root), "update-initramfs", "-u", "-k", "all"], "update-initramfs (a smaller initramfs)")
    grub_dir = root / "boot/grub"
    shutil.copytree(root / "usr/lib/grub/i386-pc", grub_dir / "i386-pc", dirs_exist_ok=True)
    (grub_dir / "grub.cfg").write_text(GRUB_CFG.format(uuid=fs_uuid, vmlinuz=_only(root, "vmlinuz-*"),
                                                       initrd=_only(root, "initrd.img-*")))
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for p in (root / junk).glob("*"):
            if p.is_file():
                p.unlink()


def grub_core(root: Path, fs_uuid: str) -> tuple[bytes, bytes]:
    """(boot.img, core.img) for a BIOS disk whose root file system has ``fs_uuid``, made by the image's GRUB."""
    early = root / "tmp/kvmpy-early.cfg"
    early.write_text(GRUB_EARLY_CFG.format(uuid=fs_uuid))
    try:
        _run(["chroot", str(root), "grub-mkimage", "-O", "i386-pc", "-o", "/tmp/kvmpy-core.img",
              "-c", "/tmp/kvmpy-early.cfg", "-p", "/boot/grub", *CORE_MODULES], "grub-mkimage")
        core = (root / "tmp/kvmpy-core.img").read_bytes()
    finally:
        early.unlink(missing_ok=True)
        (root / "tmp/kvmpy-core.img").unlink(missing_ok=True)
    boot = (root / "usr/lib/grub/i386-pc/boot.img").read_bytes()
    if len(boot) != SECTOR:
        raise ImageError(f"GRUB's boot.img is {len(boot)} bytes, not {SECTOR}")
    if len(core) > (PART_START_SECTOR - 1) * SECTOR:
        raise ImageError(f"GRUB's core.img ({len(core)} bytes) does not fit before the partition")
    return boot, core


def mbr(boot_img: bytes, total_sectors: int, disk_signature: int) -> bytes:
    """boot.img with a disk signature and one bootable Linux partition from 1 MiB to the end (LBA, no CHS)."""
    sector = bytearray(boot_img)
    sector[_BOOT_DRIVE_CHECK:_BOOT_DRIVE_CHECK + 2] = b"\x90\x90"
    struct.pack_into("<IH", sector, _DISK_SIGNATURE, disk_signature, 0)
    count = total_sectors - PART_START_SECTOR
    # status, CHS first (0xFE,0xFF,0xFF = beyond CHS), type 0x83, CHS last, LBA first, sector count
    entry = struct.pack("<B3sB3sII", 0x80, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff", PART_START_SECTOR, count)
    sector[_PART_TABLE:_PART_TABLE + 64] = entry + bytes(48)
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def build_raw(root: Path, disk: Path, size: int, fs_uuid: str, disk_signature: int, logfile: Path) -> None:
    """Write the partitioned, GRUB-bootable raw disk ``disk`` of ``size`` bytes from the tree ``root``."""
    boot, core = grub_core(root, fs_uuid)
    total = size // SECTOR
    with open(disk, "wb") as f:
        f.truncate(size)
        f.write(mbr(boot, total, disk_signature))
        f.write(core)
    fs_blocks = (total - PART_START_SECTOR) * SECTOR // 4096
    _run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "debian", "-U", fs_uuid,
          "-E", f"offset={PART_START_SECTOR * SECTOR}", "-d", str(root), str(disk), str(fs_blocks)],
         "mkfs.ext4 -d (writing the root file system)", logfile)


def build(spec: ImageSpec, out: Path, workdir: Path) -> None:
    """Build the image ``spec`` describes as the qcow2 ``out``, using ``workdir`` for scratch."""
    if os.geteuid() != 0:
        raise ImageError("building the image needs root (debootstrap installs into a chroot); run it as root")
    key = spec.key()
    fs_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"kvmpy-debian-image:{key}:rootfs"))
    machine_id = uuid.uuid5(uuid.NAMESPACE_URL, f"kvmpy-debian-image:{key}:machine").hex
    disk_signature = int(key[:8], 16)
    root, raw, logfile = workdir / "root", workdir / "disk.raw", workdir / "build.log"
    debs = cache_root() / "debian-image" / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    log.info("debootstrap %s from %s (a few minutes)", spec.suite, spec.mirror)
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(spec.packages)}", f"--cache-dir={debs}",
          spec.suite, str(root), spec.mirror], f"debootstrap {spec.suite} from {spec.mirror}", logfile)
    log.info("configuring the system (%.0f s so far)", time.monotonic() - t0)
    configure(root, fs_uuid, machine_id)
    log.info("writing the partitioned disk with GRUB (%.0f s so far)", time.monotonic() - t0)
    build_raw(root, raw, spec.size, fs_uuid, disk_signature, logfile)
    log.info("converting to qcow2 (%.0f s so far)", time.monotonic() - t0)
    tmp_out = workdir / "disk.qcow2"
    _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(tmp_out)], "qemu-img convert", logfile)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp_out, out)
    log.info("built %s (%d bytes) in %.0f s", out, out.stat().st_size, time.monotonic() - t0)


def image_path(spec: ImageSpec, cache: Path | None = None) -> Path:
    """Where the image ``spec`` describes is cached."""
    return (cache or cache_root()) / "debian-image" / f"debian-12-{spec.key()}.qcow2"


def debian_image(spec: ImageSpec | None = None, build_missing: bool = True, cache: Path | None = None) -> Path:
    """The cached qcow2 of ``spec`` (default: this machine's apt mirror), built on first use."""
    spec = spec or ImageSpec(mirror=apt_mirror())
    cache = cache or cache_root()
    out = image_path(spec, cache)
    if out.exists():
        return out
    if not build_missing:
        raise ImageError(f"{out} was not built")
    with cache_lock(cache, "debian-image"):
        if out.exists():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
            build(spec, out, Path(tmp))
    return out


def _size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([MG])", text.strip().upper())
    if not m:
        raise argparse.ArgumentTypeError(f"size {text!r} is not like 2G or 1536M")
    size = int(m.group(1)) << (20 if m.group(2) == "M" else 30)
    if not (1 << 30) <= size <= (64 << 30):
        raise argparse.ArgumentTypeError(f"size {text!r} is outside 1G..64G (the system needs about 1G)")
    return size


def _parser() -> argparse.ArgumentParser:
    p = command_parser(
        prog=PROG,
        description="Build (or find in the cache) an installed Debian 12 qcow2 disk that boots through BIOS "
                    "firmware and GRUB to a serial login prompt (root, no password). Needs root, debootstrap, "
                    "mkfs.ext4 and qemu-img.",
        epilog="Example: kvmpy debian-image -o debian.qcow2 && kvmpy -enable-kvm -m 1G debian.qcow2 -nographic "
               "(boot a copy: the guest writes to its disk)")
    p.add_argument("-o", "--output", type=Path, help="also copy the image here (default: only print the cached path)")
    p.add_argument("--mirror", help="Debian mirror URL (default: the bookworm source in /etc/apt/sources.list*)")
    p.add_argument("--size", type=_size, default=DEFAULT_SIZE, help="virtual disk size, e.g. 2G (default 2G)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``kvmpy debian-image``; prints the image's path; 2 after ONE line on stderr for any failure."""
    args = parse_command_line(_parser(), argv)
    if isinstance(args, int):
        return args
    if not log.handlers:  # progress on stderr, also when kvmpy's CLI has set up logging already
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    try:
        spec = ImageSpec(mirror=args.mirror or apt_mirror(), size=args.size)
        path = debian_image(spec)
        if args.output is not None:
            subprocess.run(["cp", "--sparse=always", str(path), str(args.output)], check=True)
            path = args.output
    except (ImageError, OSError, subprocess.CalledProcessError) as exc:
        print(f"{PROG}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
