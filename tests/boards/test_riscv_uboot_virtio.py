"""Real virtio-mmio drivers: Debian's U-Boot (qemu-riscv64_smode, under OpenSBI fw_jump) on a raw disk.

kvmpy and qemu-system-riscv64 get the same flags and an image each with the
same known content (``-drive if=none,id=d0,... -device virtio-blk-device,drive=d0``);
QEMU also gets ``-global virtio-mmio.force-legacy=false``: its transports are
legacy (Version 1) by default, kvmpy's are always virtio 1.x (Version 2).
(``-drive if=virtio`` is a virtio-blk-pci on QEMU's virt, which has PCIe; on
kvmpy's, which has none, it is a virtio-blk-device: tests/boards/test_riscv_virtio.py.) U-Boot scans the
transports, reads sectors into RAM, dumps them with ``md``, dumps the first and
the last transport's identity registers, and writes a sector back; every
answer must be the same under both, the dumps must show the image's bytes,
and the sector written must land in the image file. A virtio-net-device on
``-netdev user`` takes a DHCP lease in the same boot. One boot each.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.boards.test_riscv_uboot import FLAGS, OPENSBI_JUMP, PROMPT, QEMU, UBOOT, start

BOOT_TIMEOUT = 600
COMMANDS = (
    "virtio scan",
    "virtio info",
    "md.l 0x10008000 4",            # the disk's transport: magic, version 2, device 2, vendor "QEMU"
    "md.l 0x10001000 4",            # an empty one: device 0
    "virtio read 0x84000000 0 2",
    "md.b 0x84000000 0x20",
    "md.b 0x84000200 0x20",
    "virtio read 0x84000000 7 1",
    "md.b 0x84000000 0x10",
    "virtio write 0x84000200 9 1",  # sector 1's bytes to sector 9
    "md.l 0x10007000 4",            # the NIC's transport: device 1
    "setenv autoload no",
)
DHCP = "dhcp"  # its answer holds timings (and kvmpy's -netdev user sends an MTU option U-Boot does not know)

pytestmark = pytest.mark.skipif(not (OPENSBI_JUMP.is_file() and UBOOT.is_file()),
                                reason="apt-get install opensbi u-boot-qemu")


def image(path: Path) -> Path:
    data = bytearray(4 << 20)
    data[0:16] = b"KVMPY-VIRTIO-MMI"
    data[512:1024] = bytes(range(256)) * 2
    data[7 * 512:7 * 512 + 16] = b"seventh sector!!"
    path.write_bytes(data)
    return path


def session(argv: list[str]) -> tuple[dict[str, bytes], int]:
    con = start(argv)
    try:
        con.expect(b"Hit any key to stop autoboot", BOOT_TIMEOUT)
        con.type(" ")
        con.expect(PROMPT, BOOT_TIMEOUT)
        answers = {cmd: con.command(cmd) for cmd in (*COMMANDS, DHCP)}
        con.type("poweroff\r")
        return answers, con.proc.wait(timeout=120)
    finally:
        if con.proc.poll() is None:
            con.proc.kill()
            con.proc.wait()


def test_uboot_reads_and_writes_a_virtio_mmio_disk_as_under_qemu(tmp_path: Path) -> None:
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} not installed (apt-get install qemu-system-misc)")
    k_img, q_img = image(tmp_path / "kvmpy.img"), image(tmp_path / "qemu.img")
    drive = lambda p: ["-drive", f"file={p},format=raw,if=none,id=d0",  # noqa: E731
                       "-device", "virtio-blk-device,drive=d0", "-netdev", "user,id=n0",
                       "-device", "virtio-net-device,netdev=n0"]
    k, k_status = session([sys.executable, "-m", "kvmpy", *FLAGS, *drive(k_img)])
    q, q_status = session([QEMU, *FLAGS, *drive(q_img), "-global", "virtio-mmio.force-legacy=false"])
    for cmd in COMMANDS:
        assert k[cmd] == q[cmd], cmd
    assert b"Capacity: 4.0 MB = 0.0 GB (8192 x 512)" in k["virtio info"]
    assert k["md.l 0x10008000 4"].startswith(b"10008000: 74726976 00000002 00000002 554d4551")
    assert k["md.l 0x10001000 4"].startswith(b"10001000: 74726976 00000002 00000000 554d4551")
    assert b"KVMPY-VIRTIO-MMI" in k["md.b 0x84000000 0x20"]
    assert k["md.b 0x84000200 0x20"].startswith(b"84000200: 00 01 02 03 04 05 06 07")
    assert b"seventh sector!!" in k["md.b 0x84000000 0x10"]
    assert b"1 blocks written: OK" in k["virtio write 0x84000200 9 1"]
    assert k_img.read_bytes()[9 * 512:10 * 512] == bytes(range(256)) * 2 == q_img.read_bytes()[9 * 512:10 * 512]
    for answers in (k, q):
        assert b"DHCP client bound to address 10.0.2.15" in answers[DHCP]
    assert (k_status, q_status) == (0, 0)
