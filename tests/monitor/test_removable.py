"""QMP eject / blockdev-change-medium on kvmpy's IDE CD-ROM, and query-block's view of IDE drives (QEMU's shape).

The machine is built in process from ``-hda``/``-cdrom`` drive specs (its vCPUs never run:
the commands act on the device model, which the tests then drive through its ports).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmpy.config import MachineConfig
from kvmpy.config_devices import legacy_drive
from kvmpy.devices.chardev import BufferBackend
from kvmpy.devices.ide.piix import PiixIde
from kvmpy.monitor.block import query_block
from kvmpy.monitor.context import Context
from kvmpy.monitor.protocol import QmpError
from kvmpy.monitor.removable import blockdev_change_medium, eject

pytestmark = pytest.mark.kvm_host


@pytest.fixture
def machine(tmp_path: Path):
    from kvmpy.machine import Machine

    (tmp_path / "disk.raw").write_bytes(bytes(1 << 20))
    (tmp_path / "a.iso").write_bytes(b"\1" * 2048 * 4)
    (tmp_path / "b.iso").write_bytes(b"\2" * 2048 * 6)
    drives = (legacy_drive("-hda", str(tmp_path / "disk.raw"), 0), legacy_drive("-cdrom", str(tmp_path / "a.iso"), 2,
                                                                              "cdrom"))
    cfg = MachineConfig(memory=64 << 20, drives=drives).validate()
    m = Machine(cfg, console=BufferBackend())
    yield m
    m.close()


def test_query_eject_and_change(machine, tmp_path: Path) -> None:
    ctx = Context(machine)
    blocks = {b["device"]: b for b in query_block(ctx)}
    assert set(blocks) == {"ide0-hd0", "ide1-cd0"}
    assert blocks["ide0-hd0"]["removable"] is False and "tray_open" not in blocks["ide0-hd0"]
    cd = blocks["ide1-cd0"]
    assert cd["removable"] is True and cd["tray_open"] is False and cd["locked"] is False
    assert cd["inserted"]["ro"] is True and cd["inserted"]["file"].endswith("a.iso")
    with pytest.raises(QmpError, match="is not removable"):
        eject(ctx, device="ide0-hd0")
    with pytest.raises(QmpError, match="not found"):
        eject(ctx, device="nope")
    ide = next(d for d in machine.board.devices.values() if isinstance(d, PiixIde))
    atapi = ide.channels[1].units[0].atapi
    atapi.locked = True  # as PREVENT ALLOW MEDIUM REMOVAL leaves it
    with pytest.raises(QmpError, match="is locked and force was not specified"):
        eject(ctx, device="ide1-cd0")
    assert atapi.media_event == 1  # the guest was asked to eject
    eject(ctx, device="ide1-cd0", force=True)
    cd = {b["device"]: b for b in query_block(ctx)}["ide1-cd0"]
    assert "inserted" not in cd and cd["tray_open"] is True
    blockdev_change_medium(ctx, str(tmp_path / "b.iso"), device="ide1-cd0", format="raw")
    cd = {b["device"]: b for b in query_block(ctx)}["ide1-cd0"]
    assert cd["tray_open"] is False and cd["inserted"]["file"].endswith("b.iso")
    assert atapi.sectors() == 6 and atapi.unit_attention
    with pytest.raises(QmpError):
        blockdev_change_medium(ctx, str(tmp_path / "missing.iso"), device="ide1-cd0")
