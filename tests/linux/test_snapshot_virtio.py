"""In-memory snapshot and restore (``kvmpy.VM.snapshot``/``restore``, in-process) of a Linux guest whose
virtio-blk disk is in use: after each restore the guest is back where the snapshot was taken and its disk
still reads back exactly through the same virtqueue (the queue indexes came back with the RAM).

The disk is the root-disk image (tests/linux/rootdisk.py), read-only: a
snapshot holds RAM and device state, not the image, so the guest only reads.
"""

from __future__ import annotations

import hashlib
import re
import subprocess

import pytest

import kvmpy
from tests.linux.rootdisk import copy_disk, prepare_root_disk

prepare_bed_assets = prepare_root_disk  # the conftest builds it on the host before the bed boots

BOOT_TIMEOUT = 300.0
CMD_TIMEOUT = 120.0
RAW_MB = 16
READ = ("echo 3 > /proc/sys/vm/drop_caches; sha256sum /mnt/data/blob; "
        f"dd if=/dev/vda bs=1M count={RAW_MB} 2>/dev/null | sha256sum")


def done(tag: str) -> str:
    return f'; echo "{tag}-$((6*7)) rc=$?"\n'


@pytest.mark.kvm_full
def test_snapshot_restore_with_virtio_blk_in_use(linux_assets, root_disk, tmp_path):
    disk = copy_disk(root_disk.disk, tmp_path / "disk.qcow2")
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk), str(raw)], check=True, timeout=120)
    with raw.open("rb") as f:
        raw_sha = hashlib.sha256(f.read(RAW_MB << 20)).hexdigest()
    raw.unlink()
    with kvmpy.VM(linux_assets.kernel, initrd=linux_assets.initrd, memory="512M", smp=2, no_reboot=True,
                  append="console=ttyS0 quiet panic=-1 kvmpy_test=shell",
                  extra_args=["-drive", f"file={disk},if=virtio,readonly=on"]) as vm:
        con = vm.console
        con.expect("KVMPY-TEST cmdline=", timeout=BOOT_TIMEOUT)
        con.send("mkdir -p /mnt; mount -o ro /dev/vda /mnt; " + READ + done("FIRST"))
        con.expect(re.compile(r"FIRST-42 rc=\d+"), timeout=CMD_TIMEOUT)
        snap = vm.snapshot()
        con.send("touch /tmp/after-snapshot; " + READ + done("SECOND"))
        con.expect(re.compile(r"SECOND-42 rc=\d+"), timeout=CMD_TIMEOUT)
        pages = []
        for n in range(3):
            pages.append(vm.restore(snap))
            con.send("ls /tmp/after-snapshot; " + READ + done(f"RESTORED{n}"))
            con.expect(re.compile(rf"RESTORED{n}-42 rc=\d+"), timeout=CMD_TIMEOUT)
        con.send("poweroff -f\n")
        assert vm.wait(timeout=CMD_TIMEOUT) == 0
        out = con.output
    assert out.count(f"{root_disk.blob_sha256}  /mnt/data/blob") == 5, out[-3000:]
    assert out.count(f"{raw_sha}  -") == 5, out[-3000:]
    assert out.count("/tmp/after-snapshot: No such file or directory") == 3, out[-3000:]
    assert all(p > 0 for p in pages), pages
