"""Migration and snapshots carry DIMM RAM; a destination without the same DIMMs is refused by name."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from kvmpy.config_devices import DeviceSpec, ObjectSpec
from kvmpy.devices.chardev import BufferBackend
from kvmpy.migration.destination import Incoming
from kvmpy.migration.source import MigrationSource
from kvmpy.migration.transport import connect, parse_uri
from tests.migration.support import dirtier_config

pytestmark = pytest.mark.kvm_host
MiB = 1 << 20
DIMM0 = 0x100000000


def config(dimms: int):
    objs = tuple(ObjectSpec("memory-backend-ram", f"m{i}", (("size", "64M"),)) for i in range(dimms))
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
        assert inc.error is not None and "memory-hotplug" in str(inc.error) and "/objects/m0" in str(inc.error)
    finally:
        bare.close()
