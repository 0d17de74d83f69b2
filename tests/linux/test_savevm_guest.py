"""savevm / loadvm of a Linux guest whose writable qcow2 virtio disk is mounted: after loadvm both the
guest's RAM (a tmpfs file) and the disk (a file on ext4, read back past the page cache) are as at savevm,
and the guest carries on. qemu-img then lists the snapshot with its VM state and checks the image clean.
"""

from __future__ import annotations

import re
import subprocess

import pytest

import kvmpy
from tests.linux.rootdisk import copy_disk, prepare_root_disk

prepare_bed_assets = prepare_root_disk  # the conftest builds it on the host before the bed boots

BOOT_TIMEOUT = 300.0
CMD_TIMEOUT = 120.0


def done(tag: str) -> str:
    return f'; echo "{tag}-$((6*7)) rc=$?"\n'


def show(tag: str) -> str:
    return ("echo 3 > /proc/sys/vm/drop_caches; echo RAM=$(cat /tmp/ram-marker) DISK=$(cat /mnt/data/marker)"
            + done(tag))


@pytest.mark.kvm_full
def test_savevm_loadvm_restores_ram_and_disk_of_a_linux_guest(linux_assets, root_disk, tmp_path):
    disk = copy_disk(root_disk.disk, tmp_path / "disk.qcow2")
    with kvmpy.VM(linux_assets.kernel, initrd=linux_assets.initrd, memory="256M", smp=2, no_reboot=True,
                  append="console=ttyS0 quiet panic=-1 kvmpy_test=shell",
                  extra_args=["-drive", f"file={disk},if=virtio"]) as vm:
        con = vm.console
        con.expect("KVMPY-TEST cmdline=", timeout=BOOT_TIMEOUT)
        con.send("mkdir -p /mnt; mount /dev/vda /mnt; echo one > /mnt/data/marker; echo one > /tmp/ram-marker;"
                 " sync" + done("FIRST"))
        try:
            con.expect(re.compile(r"FIRST-42 rc=0"), timeout=CMD_TIMEOUT)
        except Exception:
            print("CONSOLE>>>", con.output[-6000:], "<<<CONSOLE", vm.status)
            raise
        assert vm.hmp("savevm s1") == ""
        con.send("echo two > /mnt/data/marker; echo two > /tmp/ram-marker; sync; " + show("SECOND"))
        con.expect(re.compile(r"SECOND-42 rc=0"), timeout=CMD_TIMEOUT)
        assert vm.hmp("loadvm s1") == ""
        assert vm.status == "running"
        con.send(show("RESTORED"))
        con.expect(re.compile(r"RESTORED-42 rc=0"), timeout=CMD_TIMEOUT)
        listing = vm.hmp("info snapshots")
        con.send("umount /mnt; poweroff -f\n")
        assert vm.wait(timeout=CMD_TIMEOUT) == 0
        out = con.output
    assert "RAM=two DISK=two" in out, out[-3000:]
    assert out.count("RAM=one DISK=one") == 1, out[-3000:]
    assert re.search(r"--\s+s1\s+\d", listing), listing
    rows = subprocess.run(["qemu-img", "snapshot", "-l", str(disk)], capture_output=True, text=True,
                          check=True).stdout.splitlines()
    assert rows[2].split()[:2] == ["1", "s1"] and rows[2].split()[2] != "0", rows
    check = subprocess.run(["qemu-img", "check", str(disk)], capture_output=True, text=True)
    assert check.returncode == 0 and "No errors were found" in check.stdout, check.stdout + check.stderr
