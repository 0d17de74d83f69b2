"""virtio-blk-pci on a real PC board from QEMU's command line: BAR4 config, a kick through the KVM ioeventfd,
the request served on the transport's I/O thread, and the drive's lock held for the machine's life."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kvmpy.block.locking import ImageLockError
from kvmpy.block.drive import open_drive
from kvmpy.devices.virtio.blk import S_OK, T_IN, T_OUT, VirtioBlk
from kvmpy.devices.virtio.pci import VirtioPci

from .pci_driver import BoardPorts, VirtioPciDriver, wait_used

pytestmark = pytest.mark.kvm_host
MiB = 1 << 20
HDR, DATA, STATUS = 0x300000, 0x310000, 0x320000


def machine_with(tmp_path: Path, *drive_args: str):
    from kvmpy.cli import parse_qemu_args
    from kvmpy.devices.chardev import BufferBackend
    from kvmpy.machine import Machine
    from tests.guests.build import build_guest

    cfg = parse_qemu_args(["-enable-kvm", "-S", "-m", "32", "-kernel", str(build_guest("hello")), *drive_args])
    return Machine(cfg, BufferBackend())


def test_a_guest_request_through_the_pci_transport(tmp_path: Path) -> None:
    disk = tmp_path / "d.raw"
    disk.write_bytes(b"\x11" * MiB)
    m = machine_with(tmp_path, "-drive", f"file={disk},format=raw,if=virtio,serial=S1")
    try:
        fn = next(d for d in m.board.devices.values() if isinstance(d, VirtioPci))
        assert isinstance(fn.device, VirtioBlk) and fn.identity.device == 0x1042 and fn.identity.class_code == 0x0100
        with pytest.raises(ImageLockError):  # the machine holds the image
            open_drive(disk, "raw", id="other")
        drv = VirtioPciDriver(BoardPorts(m.board), fn)
        drv.init(queue_base=0x100000)
        assert drv.device_cfg_read(0, 8) == MiB // 512 and drv.device_cfg_read(20, 4) == 512
        q = drv.queues[0]
        mem = m.board.memory
        mem.write(HDR, struct.pack("<IIQ", T_OUT, 0, 4))
        mem.write(DATA, b"\x22" * 4096)
        head = q.add([(HDR, 16), (DATA, 4096)], [(STATUS, 1)])
        drv.kick(0)
        assert wait_used(q, 10.0) == [(head, 1)] and mem.read(STATUS, 1) == bytes([S_OK])
        mem.write(HDR, struct.pack("<IIQ", T_IN, 0, 0))
        head = q.add([(HDR, 16)], [(DATA, 8192), (STATUS, 1)])
        drv.kick(0)
        assert wait_used(q, 10.0) == [(head, 8193)]
        assert mem.read(DATA, 8192) == b"\x11" * 2048 + b"\x22" * 4096 + b"\x11" * 2048
        with m.lifecycle.vcpus_parked():  # quiesced as for a migration; the state is captured
            sections = m.vmstate.capture()
        assert any(k.startswith("dev/virtio-blk-pci@") for k in sections)
    finally:
        m.close()
    assert disk.read_bytes()[2048:6144] == b"\x22" * 4096
    open_drive(disk, "raw", id="free-again").close()  # closing the machine released the lock
