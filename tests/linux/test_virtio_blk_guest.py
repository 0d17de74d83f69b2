"""A Linux guest on kvmpy's virtio-blk: ext4 on a qcow2 overlay over a backing file, a second read-only disk.

The guest (Debian's kernel, ``kvmpy initrd`` with virtio_pci and virtio_blk;
ext4 is built in) mounts /dev/vda, checks a file the host put in the file
system, writes a new one, unmounts; it sees /dev/vdb read-only and its writes
refused, and sees a QMP block_resize at once. The host then checks the overlay
with ``qemu-img check``, reads the guest's file with e2fsprogs' ``debugfs`` from
a ``qemu-img convert`` of the overlay (no mount), and checks the backing file
did not change.
"""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import kvmpy
from tests.linux.guest_process import sh

BOOT_TIMEOUT = 300.0
STEP = 120.0
MiB = 1 << 20

needs_tools = pytest.mark.skipif(not all(shutil.which(t) for t in ("qemu-img", "mkfs.ext4", "debugfs")),
                                 reason="needs qemu-img (qemu-utils) and e2fsprogs")


def run(*argv: object) -> str:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def disks(tmp_path: Path) -> dict[str, Path | str]:
    src = tmp_path / "root"
    src.mkdir()
    payload = random.Random(1302).randbytes(300_000)
    (src / "hello.bin").write_bytes(payload)
    base_raw = tmp_path / "base.raw"
    run("mkfs.ext4", "-q", "-F", "-b", "4096", "-d", src, base_raw, "32M")
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", base_raw, tmp_path / "base.qcow2")
    base_raw.unlink()
    run("qemu-img", "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", tmp_path / "top.qcow2")
    ro = tmp_path / "ro.raw"
    ro.write_bytes(b"\xa5" * MiB)
    return {"top": tmp_path / "top.qcow2", "base": tmp_path / "base.qcow2", "ro": ro,
            "payload_sha": hashlib.sha256(payload).hexdigest(),
            "base_sha": hashlib.sha256((tmp_path / "base.qcow2").read_bytes()).hexdigest()}


@pytest.mark.kvm_full
@needs_tools
def test_ext4_on_a_qcow2_overlay_and_a_read_only_disk(linux_assets, disks, tmp_path: Path):
    # explicit -devices in this order make d0 /dev/vda and d1 /dev/vdb (an if=virtio drive's implicit
    # device would come after every -device, as in QEMU)
    drives = ["-drive", f"file={disks['top']},format=qcow2,if=none,id=d0",
              "-drive", f"file={disks['ro']},format=raw,if=none,id=d1,readonly=on",
              "-device", "virtio-blk-pci,drive=d0,id=vd0",
              "-device", "virtio-blk-pci,drive=d1,serial=KVMPY-RO-1,id=vd1"]
    with kvmpy.VM(linux_assets.kernel, initrd=linux_assets.initrd, memory="512M", smp=1, no_reboot=True,
                  process=True, extra_args=drives,
                  append="console=ttyS0 quiet panic=-1 kvmpy_test=shell") as vm:
        vm.console.expect("KVMPY-TEST cmdline=", timeout=BOOT_TIMEOUT)
        out = sh(vm.console, "mkdir -p /mnt && mount -t ext4 /dev/vda /mnt && echo MOUNTED; "
                             "sha256sum /mnt/hello.bin | sed 's/^/SHA /'", "M1")
        assert "MOUNTED" in out and f"SHA {disks['payload_sha']}" in out, out[-2000:]
        sh(vm.console, "yes kvmpy-wrote-this | head -c 200000 > /mnt/new.txt && sync && umount /mnt && "
                       "echo UMOUNTED", "M2")
        out = sh(vm.console, "echo RO=$(cat /sys/block/vdb/ro) SERIAL=$(cat /sys/block/vdb/serial) "
                             "WC=$(cat /sys/block/vda/queue/write_cache | tr ' ' _); "
                             "dd if=/dev/zero of=/dev/vdb bs=512 count=1 2>/dev/null; echo DD=$?; "
                             "head -c 4096 /dev/vdb | sha256sum | sed 's/^/ROSHA /'", "M3")
        assert "RO=1 SERIAL=KVMPY-RO-1 WC=write_back" in out, out[-2000:]
        assert re.search(r"DD=[1-9]", out), out[-2000:]
        assert "ROSHA " + hashlib.sha256(b"\xa5" * 4096).hexdigest() in out, out[-2000:]
        size0 = int(re.search(r"SIZE=(\d+)", sh(vm.console, "echo SIZE=$(cat /sys/block/vda/size)", "M4")).group(1))
        assert size0 == 32 * MiB // 512
        vm.qmp("block_resize", {"device": "d0", "size": 48 * MiB})
        out = sh(vm.console, "sleep 1; echo SIZE=$(cat /sys/block/vda/size)", "M5")
        assert f"SIZE={48 * MiB // 512}" in out, out[-2000:]
        blocks = {b["device"]: b for b in vm.qmp("query-block")}
        stats = {s["device"]: s["stats"] for s in vm.qmp("query-blockstats")}
        vm.console.send("poweroff -f\n")
        assert vm.wait(timeout=STEP) == 0
    assert blocks["d0"]["inserted"]["backing_file"] == "base.qcow2" and blocks["d1"]["inserted"]["ro"] is True
    assert stats["d0"]["wr_operations"] > 0 and stats["d0"]["rd_bytes"] > 300_000
    assert stats["d1"]["wr_operations"] == 0
    check = subprocess.run(["qemu-img", "check", str(disks["top"])], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    raw = tmp_path / "flat.raw"
    run("qemu-img", "convert", "-O", "raw", disks["top"], raw)
    new = subprocess.run(["debugfs", "-R", "cat /new.txt", str(raw)], check=True, capture_output=True).stdout
    assert new == (b"kvmpy-wrote-this\n" * 20000)[:200000]
    old = subprocess.run(["debugfs", "-R", "cat /hello.bin", str(raw)], check=True, capture_output=True).stdout
    assert hashlib.sha256(old).hexdigest() == disks["payload_sha"]
    assert hashlib.sha256(Path(disks["base"]).read_bytes()).hexdigest() == disks["base_sha"]
    assert Path(disks["ro"]).read_bytes() == b"\xa5" * MiB
