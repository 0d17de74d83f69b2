"""Migration and snapshots carry DIMM RAM; a destination or a snapshot reset without the same DIMMs is refused by name.

QEMU 7.2 (tried under TCG: ``-m 128M,slots=2,maxmem=1G``, object_add + device_add pc-dimm, savevm, loadvm)
refuses a loadvm or incoming stream holding a RAM block the machine lacks, ``Unknown ramblock "m2", cannot
accept migration``, or one of another size, ``Size mismatch: m1: 0x8000000 != 0x10000000``. kvmpy says the
same, and also refuses the case QEMU lets through (a DIMM plugged after the save), which QEMU restores into a
machine whose hotplug controller no longer lists the DIMM that query-memory-devices still shows.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from kvmpy.config_devices import DeviceSpec, ObjectSpec
from kvmpy.devices.chardev import BufferBackend
from kvmpy.devices.acpi_memhp import MEMHP_BASE
from kvmpy.lifecycle import RunState
from kvmpy.machine import qmp_commands
from kvmpy.migration.destination import Incoming
from kvmpy.migration.errors import ConfigMismatchError
from kvmpy.migration.snapshot import Snapshot
from kvmpy.migration.source import MigrationSource
from kvmpy.migration.transport import connect, parse_uri
from kvmpy.monitor.context import Context
from tests.migration.support import assert_progress, dirtier_config

pytestmark = pytest.mark.kvm_host
MiB = 1 << 20
DIMM0 = 0x100000000


def config(dimms: int, size: str = "64M"):
    objs = tuple(ObjectSpec("memory-backend-ram", f"m{i}", (("size", size),)) for i in range(dimms))
    devs = tuple(DeviceSpec("pc-dimm", f"d{i}", (("memdev", f"m{i}"),)) for i in range(dimms))
    return dataclasses.replace(dirtier_config(), memory_slots=2, max_memory=512 * MiB, objects=objs,
                               devices=devs).validate()


def test_dimm_ram_travels_and_a_mismatch_is_refused(tmp_path: Path) -> None:
    from kvmpy.machine import Machine

    path = tmp_path / "vm.snap"
    pattern = np.random.default_rng(7).integers(0, 256, 3 * MiB, dtype=np.uint8)
    src = Machine(config(1), console=BufferBackend())
    try:
        src.start()
        src.board.memory.write(DIMM0 + 5 * MiB, pattern)
        job = MigrationSource(src, connect(parse_uri(f"file:{path}")))
        assert job.run().status == "completed", job.stats.error
    finally:
        src.close()
    dst = Machine(config(1), console=BufferBackend())
    try:
        inc = Incoming(dst, f"file:{path}").start()
        assert inc.done.wait(60) and inc.error is None, inc.error
        assert dst.board.memory.read(DIMM0 + 5 * MiB, len(pattern)) == pattern.tobytes()
    finally:
        dst.close()
    bare = Machine(config(0), console=BufferBackend())
    try:
        inc = Incoming(bare, f"file:{path}").start()
        assert inc.done.wait(60)
        assert inc.error == ("the incoming VM's configuration does not match this machine: "
                             'Unknown ramblock "m0", cannot accept migration; '
                             "DIMM 'd0' (memdev m0, slot 0) in the stream, not here"), inc.error
    finally:
        bare.close()
    more = Machine(config(2), console=BufferBackend())  # a DIMM the stream does not have: refused too
    try:
        inc = Incoming(more, f"file:{path}").start()
        assert inc.done.wait(60)
        assert inc.error is not None and 'ramblock "m1" is not in the stream' in inc.error and \
            "DIMM 'd1' (memdev m1, slot 1) here, not in the stream" in inc.error, inc.error
    finally:
        more.close()
    bigger = Machine(config(1, "128M"), console=BufferBackend())
    try:
        inc = Incoming(bigger, f"file:{path}").start()
        assert inc.done.wait(60)
        assert inc.error is not None and "Size mismatch: m0: 0x4000000 != 0x8000000" in inc.error, inc.error
    finally:
        bigger.close()


def qmp(m, name: str, **args):
    table = qmp_commands()
    return table.dispatch(Context(m, commands=table), name, args)


def hot_add(m, n: int) -> None:
    qmp(m, "object-add", **{"qom-type": "memory-backend-ram", "id": f"m{n}", "size": 64 * MiB})
    qmp(m, "device_add", driver="pc-dimm", id=f"d{n}", memdev=f"m{n}")


def guest_ejects(m, slot: int) -> None:
    """What Linux does for device_del: select the slot, _OST(eject request, success), _EJ0."""
    pio = m.board.pio
    pio.write(MEMHP_BASE, 4, slot)
    pio.write(MEMHP_BASE + 4, 4, 3)
    pio.write(MEMHP_BASE + 8, 4, 0)
    pio.write(MEMHP_BASE + 0x14, 1, 8)


def test_a_snapshot_from_before_a_hot_add_is_refused_and_the_vm_runs_on_unchanged() -> None:
    """The case of the issue: snapshot, hot-add a DIMM, restore. Refused by name, before anything is written;
    the guest keeps running and keeps both DIMMs. Unplugging the new DIMM makes the snapshot fit again."""
    from kvmpy.machine import Machine

    console = BufferBackend()
    m = Machine(config(1), console=console)
    try:
        m.start()
        assert console.wait_for(b"BB", 60), console.output
        m.board.memory.write(DIMM0 + MiB, b"saved" * 100)
        snap = Snapshot.take(m)
        m.board.memory.write(DIMM0 + MiB, b"later" * 100)
        hot_add(m, 1)
        m.board.memory.write(DIMM0 + 64 * MiB, b"new dimm")
        with pytest.raises(ConfigMismatchError) as exc:
            snap.reset()
        assert str(exc.value) == ('the snapshot does not fit this machine any more: ramblock "m1" is not in the '
                                  "snapshot; DIMM 'd1' (memdev m1, slot 1) here, not in the snapshot")
        assert "\n" not in str(exc.value)
        assert m.lifecycle.state is RunState.RUNNING
        assert_progress(m, console)  # the guest runs on
        assert m.board.memory.read(DIMM0 + MiB, 500) == b"later" * 100
        assert m.board.memory.read(DIMM0 + 64 * MiB, 8) == b"new dimm"
        assert [d["data"]["id"] for d in qmp(m, "query-memory-devices")] == ["d0", "d1"]
        assert [s["slot"] for s in qmp(m, "query-acpi-ospm-status")] == ["0", "1"]
        assert qmp(m, "query-memory-size-summary")["plugged-memory"] == 128 * MiB
        qmp(m, "device_del", id="d1")
        guest_ejects(m, 1)
        qmp(m, "object-del", id="m1")
        assert snap.reset() > 0  # the machine is as it was: the snapshot fits again
        assert m.board.memory.read(DIMM0 + MiB, 500) == b"saved" * 100
        assert m.lifecycle.state is RunState.RUNNING
    finally:
        m.close()


def test_a_snapshot_holding_a_dimm_since_removed_or_replaced_is_refused() -> None:
    """The other way round (QEMU: ``Unknown ramblock``), and a DIMM unplugged and plugged again under the same
    names: the snapshot's copy belongs to memory that is gone, so it is refused rather than written anywhere."""
    from kvmpy.machine import Machine

    m = Machine(config(0), console=BufferBackend())
    try:
        m.start()
        hot_add(m, 1)
        m.board.memory.write(DIMM0, b"in the dimm")
        snap = Snapshot.take(m)
        qmp(m, "device_del", id="d1")
        guest_ejects(m, 0)
        qmp(m, "object-del", id="m1")
        with pytest.raises(ConfigMismatchError, match=r'^the snapshot does not fit this machine any more: Unknown '
                           r'ramblock "m1", cannot accept migration; DIMM \'d1\' \(memdev m1, slot 0\) in the '
                           r"snapshot, not here$"):
            snap.reset()
        assert m.lifecycle.state is RunState.RUNNING
        hot_add(m, 1)  # the same ids, slot and address, new memory
        m.board.memory.write(DIMM0, b"fresh")
        with pytest.raises(ConfigMismatchError, match='ramblock "m1" was replaced since the snapshot'):
            snap.reset()
        assert m.board.memory.read(DIMM0, 5) == b"fresh"
        assert m.lifecycle.state is RunState.RUNNING
    finally:
        m.close()
