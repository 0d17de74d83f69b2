"""A Linux guest with its root on a virtio disk: an ext4 image (qcow2) and an initramfs that mounts it.

Built on the host, cached under kvmpy's cache directory (L1 sees the host
read-only): ``mkfs.ext4 -d`` fills a 64 MiB ext4 image from a busybox tree,
``qemu-img convert`` makes it a qcow2, and ``kvmpy initrd`` packs the
virtio modules (virtio_pci, virtio_blk, virtio_net; ext4 is built into
Debian's cloud kernel) with an /init that waits for ``root=``, mounts it and
switch_roots, as a distribution's initramfs does. The root's /sbin/init
mounts the pseudo file systems, says where its root came from and gives a
shell on the console.

The image holds /data/blob, random bytes whose SHA-256 the tests know, so a
guest proves it reads its disk exactly.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kvmpy.tools.fetch import cache_lock, cache_root, fetch_busybox, fetch_kernel

MODULES = ("virtio_pci", "virtio_blk", "virtio_net")
DISK_MB = 64
BLOB_SIZE = 1 << 20

INITRAMFS_INIT = """#!/bin/sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do insmod "/$m" || echo "initramfs: insmod $m failed"; done < /etc/kvmpy-modules
root=
for w in $(cat /proc/cmdline); do case "$w" in root=*) root="${w#root=}";; esac; done
i=0
while [ -n "$root" ] && [ ! -b "$root" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
mkdir -p /newroot
if [ -n "$root" ] && mount -t ext4 "$root" /newroot; then
    umount /proc /sys
    mount --move /dev /newroot/dev
    exec switch_root /newroot /sbin/init
fi
echo "initramfs: cannot mount root=[$root]"
exec sh
"""

ROOT_INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /run
echo "ROOTFS-UP $(awk '$2 == "/" {print $1, $3, $4}' /proc/mounts | cut -d, -f1)"
exec sh </dev/console >/dev/console 2>&1
"""


@dataclass(frozen=True)
class RootDisk:
    kernel: Path
    initrd: Path
    disk: Path  # qcow2; copy it before booting (each VM writes its own)
    blob_sha256: str


def _blob() -> bytes:
    return random.Random(1313).randbytes(BLOB_SIZE)


def _tree(root: Path, busybox: Path) -> None:
    for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "run", "tmp", "root", "data"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    (root / "bin" / "sh").symlink_to("busybox")
    (root / "sbin" / "init").write_text(ROOT_INIT)
    (root / "sbin" / "init").chmod(0o755)
    (root / "data" / "blob").write_bytes(_blob())
    (root / "etc" / "hostname").write_text("kvmpy-root\n")


def prepare_root_disk(build: bool = True) -> RootDisk:
    """Fetch the cloud kernel and build (or, with ``build=False``, only find) the disk and its initramfs."""
    kernel = fetch_kernel("cloud-amd64")
    busybox = fetch_busybox()
    st = busybox.stat()
    key = hashlib.sha256("\0".join([INITRAMFS_INIT, ROOT_INIT, f"{busybox}:{st.st_size}:{st.st_mtime_ns}",
                                    str(kernel.modules_dir), ",".join(MODULES), str(DISK_MB)]).encode())
    out = cache_root() / "linux-tests" / f"rootdisk-{key.hexdigest()[:16]}"
    done = RootDisk(kernel.vmlinuz, out / "initrd.gz", out / "disk.qcow2", hashlib.sha256(_blob()).hexdigest())
    if (out / "done").exists():
        return done
    if not build:
        raise FileNotFoundError(f"{out} was not prepared on the host")
    with cache_lock(out.parent, out.name):
        if (out / "done").exists():
            return done
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        from kvmpy.tools.initrd import main as initrd_main

        (out / "init.sh").write_text(INITRAMFS_INIT)
        status = initrd_main(["-o", str(done.initrd), "--busybox", str(busybox), "--init", str(out / "init.sh"),
                              "--modules-dir", str(kernel.modules_dir), *(a for m in MODULES for a in ("-m", m))])
        if status != 0:
            raise RuntimeError(f"kvmpy initrd failed with status {status}")
        tree = out / "tree"
        _tree(tree, busybox)
        raw = out / "disk.raw"
        subprocess.run([shutil.which("mkfs.ext4") or "/usr/sbin/mkfs.ext4", "-q", "-F", "-L", "kvmpy-root", "-E", "root_owner=0:0", "-d", str(tree),
                        str(raw), f"{DISK_MB}M"], check=True, capture_output=True)
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(done.disk)],
                       check=True, capture_output=True)
        raw.unlink()
        shutil.rmtree(tree)
        (out / "done").write_text("")
    return done


def copy_disk(src: Path, dst: Path) -> Path:
    """A private, writable copy of the qcow2 for one VM."""
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o644)
    return dst
