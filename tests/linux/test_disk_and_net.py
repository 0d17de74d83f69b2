"""Issue 13's "done means": the same command line under kvmpy and under qemu-system-x86_64, in the same bed run.

    kvmpy -enable-kvm -m 1G -smp 2 -kernel vmlinuz -initrd initrd.gz -append "root=/dev/vda console=ttyS0" \\
       -drive file=disk.qcow2,if=virtio -netdev user,id=n0 -device virtio-net-pci,netdev=n0 -nographic

The guest's root is an ext4 file system on the qcow2 (tests/linux/rootdisk.py):
it must come up from /dev/vda, read /data/blob exactly, get its address by
DHCP (busybox udhcpc; passt under kvmpy, slirp under QEMU), download a file
from an HTTP server on L1's loopback (``python3 -m http.server``) through the
gateway 10.0.2.2, and store it on its disk. After the power-off the host
checks the image with ``qemu-img check`` and reads the stored file back out
of the ext4 image (``debugfs``): both VMMs must give the same results.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.linux.guest_process import GuestProcess
from tests.linux.rootdisk import copy_disk, prepare_root_disk
from tests.linux.test_net_guest import DHCP_SCRIPT, _l1_external_interface

prepare_bed_assets = prepare_root_disk  # the conftest builds it on the host before the bed boots

REPO = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT = 300.0
CMD_TIMEOUT = 120.0
DONE_MEANS = ["-enable-kvm", "-m", "1G", "-smp", "2", "-kernel", "vmlinuz", "-initrd", "initrd.gz",
              "-append", "root=/dev/vda console=ttyS0", "-drive", "file=disk.qcow2,if=virtio",
              "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0", "-nographic"]
VMMS = {"kvmpy": [sys.executable, "-m", "kvmpy"], "qemu": ["qemu-system-x86_64"]}

needs_virtio_net = pytest.mark.skipif(importlib.util.find_spec("kvmpy.devices.virtio.net") is None,
                                      reason="needs virtio-net-pci (kvmpy/devices/virtio/net.py)")


def done(tag: str) -> str:
    """A shell suffix printing ``tag-42 rc=N``; the echoed command shows ``$((6*7))``, so only output matches."""
    return f'; echo "{tag}-$((6*7)) rc=$?"\n'


class HttpServer:
    """``python3 -m http.server`` on L1's loopback serving ``directory``; ``port`` once it listens."""

    def __init__(self, directory: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                                      "--directory", str(directory)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = re.search(r"port (\d+)", line)
        if m is None:
            self.close()
            raise AssertionError(f"http.server did not start: {line!r}")
        self.port = int(m.group(1))

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(30)


def userns_refused() -> str | None:
    """Why passt cannot sandbox itself here, or None: it needs a user namespace, which the kernel refuses
    to a chrooted process, and some kernels disable them (the nested bed's job is not chrooted)."""
    probe = subprocess.run(["unshare", "--user", "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"unshare --user: {probe.stderr.strip()}"


def workdir_for(base: Path, root_disk, name: str) -> Path:
    """A directory holding vmlinuz, initrd.gz and a private disk.qcow2, so the command line is the issue's."""
    work = base / name
    work.mkdir()
    (work / "vmlinuz").symlink_to(root_disk.kernel)
    (work / "initrd.gz").symlink_to(root_disk.initrd)
    copy_disk(root_disk.disk, work / "disk.qcow2")
    return work


def file_from_image(image: Path, path: str, scratch: Path) -> bytes:
    """The contents of ``path`` in the ext4 file system on the qcow2 ``image`` (qemu-img convert + debugfs)."""
    raw = scratch / "image.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(raw)], check=True,
                   capture_output=True, timeout=120)
    out = scratch / "extracted"
    debugfs = shutil.which("debugfs") or "/usr/sbin/debugfs"  # e2fsprogs; /usr/sbin may not be on PATH
    subprocess.run([debugfs, "-R", f"dump {path} {out}", str(raw)], check=True, capture_output=True,
                   timeout=120)
    raw.unlink()
    data = out.read_bytes()
    out.unlink()
    return data


@pytest.mark.kvm_full
@needs_virtio_net
@pytest.mark.skipif(shutil.which("passt") is None, reason="needs passt (Debian package 'passt')")
@pytest.mark.parametrize("vmm", ["qemu", "kvmpy"])
def test_the_issues_command_line_root_disk_dhcp_and_download(vmm, root_disk, tmp_path):
    if shutil.which(VMMS[vmm][0]) is None and vmm == "qemu":
        pytest.skip("needs qemu-system-x86_64")
    if vmm == "kvmpy" and (why := userns_refused()):
        pytest.xfail(f"passt (-netdev user) needs a user namespace and this process may not create one ({why})")
    work = workdir_for(tmp_path, root_disk, vmm)
    www = tmp_path / "www"
    www.mkdir()
    payload = random.Random(13).randbytes(3 << 20)
    (www / "payload").write_bytes(payload)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    server = HttpServer(www)
    guest = None
    try:
        with _l1_external_interface():
            guest = GuestProcess(VMMS[vmm] + DONE_MEANS, cwd=work, env=env)
            root = guest.expect(r"ROOTFS-UP (\S+) (\S+) (\S+)\r?\n", BOOT_TIMEOUT)  # the whole line
            guest.send(DHCP_SCRIPT)
            guest.send("ip link set eth0 up; udhcpc -i eth0 -n -q -t 5 -s /tmp/dhcp.sh" + done("DHCP"))
            guest.expect(r"DHCP-42 rc=\d+", CMD_TIMEOUT)
            guest.send(f"wget -q -O /root/payload http://10.0.2.2:{server.port}/payload; "
                       "sha256sum /root/payload /data/blob; sync" + done("WGET"))
            guest.expect(r"WGET-42 rc=\d+", CMD_TIMEOUT)
            guest.send("poweroff -f\n")
            status = guest.wait(CMD_TIMEOUT)
    finally:
        server.close()
        if guest is not None:
            guest.close()
    out = guest.text()
    assert status == 0, out[-3000:]
    assert root.groups() == (b"/dev/vda", b"ext4", b"rw"), out[-3000:]
    assert "DHCP-BOUND 10.0.2.15 via 10.0.2.2" in out, out[-3000:]
    assert f"{root_disk.blob_sha256}  /data/blob" in out, out[-3000:]  # read from the disk exactly
    assert f"{hashlib.sha256(payload).hexdigest()}  /root/payload" in out, out[-3000:]  # and the download
    check = subprocess.run(["qemu-img", "check", str(work / "disk.qcow2")], capture_output=True, text=True,
                           timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert file_from_image(work / "disk.qcow2", "/root/payload", tmp_path) == payload  # written to the disk
