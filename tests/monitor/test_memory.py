"""QMP memory hotplug replies: the same script against kvmpy and qemu-system-x86_64 (no guest needed).

Both start paused (-S) with ``-m 256M,slots=4,maxmem=4G``; QEMU needs no accelerator for this.
Every reply (return value, or error class and message) must be the same (the memory backends'
order aside, which in QEMU follows a hash table).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.guests.build import build_guest
from tests.monitor.conftest import qmp_process

MiB, GiB = 1 << 20, 1 << 30
REPO = Path(__file__).resolve().parents[2]
SCRIPT: list[tuple[str, dict[str, Any]]] = [
    ("query-memory-size-summary", {}),
    ("query-memory-devices", {}),
    ("object-add", {"qom-type": "memory-backend-ram", "id": "mem1", "size": 512 * MiB}),
    ("object-add", {"qom-type": "memory-backend-ram", "id": "mem1", "size": 512 * MiB}),
    ("object-add", {"qom-type": "memory-backend-ram", "id": "odd", "size": MiB + 4096}),
    ("object-add", {"qom-type": "memory-backend-ram", "id": "big", "size": 4 * GiB}),
    ("object-add", {"qom-type": "memory-backend-ram", "id": "m2", "size": 128 * MiB}),
    ("object-add", {"qom-type": "memory-backend-file", "id": "mf", "size": 128 * MiB, "mem-path": "/dev/shm",
                    "share": True}),
    ("object-add", {"qom-type": "memory-backend-ram", "id": "zero", "size": 0}),
    ("object-add", {"qom-type": "memory-backend-ram", "id": "nosize"}),
    ("object-add", {"qom-type": "memory-backend-bogus", "id": "x", "size": 4096}),
    ("object-add", {"qom-type": "memory-backend-file", "id": "nopath", "size": 4096}),
    ("object-add", {"qom-type": "memory-backend-file", "id": "badpath", "size": MiB,
                    "mem-path": "/nonexistent/dir/x"}),
    ("device_add", {"driver": "pc-dimm", "id": "d0"}),
    ("device_add", {"driver": "pc-dimm", "id": "d0", "memdev": "nosuch"}),
    ("device_add", {"driver": "pc-dimm", "id": "d0", "memdev": "mem1"}),
    ("device_add", {"driver": "pc-dimm", "id": "d1", "memdev": "mem1"}),
    ("device_add", {"driver": "pc-dimm", "id": "d0", "memdev": "m2"}),
    ("device_add", {"driver": "pc-dimm", "id": "dodd", "memdev": "odd"}),
    ("device_add", {"driver": "pc-dimm", "id": "dbig", "memdev": "big"}),
    ("device_add", {"driver": "pc-dimm", "id": "dslot", "memdev": "m2", "slot": 0}),
    ("device_add", {"driver": "pc-dimm", "id": "dslot9", "memdev": "m2", "slot": 9}),
    ("device_add", {"driver": "pc-dimm", "id": "daddr", "memdev": "m2", "addr": 0x100000000}),
    ("device_add", {"driver": "pc-dimm", "id": "daddr2", "memdev": "m2", "addr": 0x100001000}),
    ("device_add", {"driver": "pc-dimm", "id": "daddr3", "memdev": "m2", "addr": 0x1000000000}),
    ("device_add", {"driver": "pc-dimm", "id": "d2", "memdev": "m2"}),
    ("device_add", {"driver": "pc-dimm", "id": "df", "memdev": "mf"}),
    ("device_add", {"driver": "pc-dimm", "id": "dfoo", "memdev": "m2", "foo": 1}),
    ("device_add", {"driver": "pc-dimm", "id": "d0", "memdev": "m2", "foo": 1}),
    ("device_add", {"driver": "nosuch", "id": "dfoo", "foo": 1}),
    ("object-add", {"qom-type": "memory-backend-ram", "id": "m3", "size": 128 * MiB}),
    ("device_add", {"driver": "pc-dimm", "id": "d3", "memdev": "m3"}),
    ("object-add", {"qom-type": "memory-backend-ram", "id": "m4", "size": 128 * MiB}),
    ("device_add", {"driver": "pc-dimm", "id": "d4", "memdev": "m4"}),
    ("object-del", {"id": "mem1"}),
    ("object-del", {"id": "m4"}),
    ("object-del", {"id": "nosuch"}),
    ("query-memory-devices", {}),
    ("query-memory-size-summary", {}),
    ("human-monitor-command", {"command-line": "info memory-devices"}),
    ("device_del", {"id": "d0"}),
    ("device_del", {"id": "nosuch"}),
    ("query-acpi-ospm-status", {}),
    ("query-memdev", {}),
    ("human-monitor-command", {"command-line": "info memdev"}),
]


async def replies(argv: list[str], sock: Path, env: dict[str, str] | None = None) -> list[Any]:
    from qemu.qmp import ExecuteError

    async with qmp_process(argv, sock, "memory-test", env, timeout=30) as client:
        out: list[Any] = []
        for name, args in SCRIPT:
            try:
                out.append((name, args, "return", await client.execute(name, args)))
            except ExecuteError as exc:
                out.append((name, args, exc.error.error.class_, exc.error.error.desc))
    return out


@pytest.mark.kvm_host
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None or not os.path.isdir("/dev/shm"),
                    reason="needs qemu-system-x86_64 and /dev/shm")
def test_the_same_script_gets_the_same_replies(tmp_path: Path) -> None:
    common = ["-m", "256M,slots=4,maxmem=4G", "-S", "-display", "none", "-nodefaults"]
    qemu = asyncio.run(replies(["qemu-system-x86_64", "-machine", "pc", *common, "-qmp",
                                f"unix:{tmp_path / 'q.sock'},server=on,wait=on"], tmp_path / "q.sock"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    kvmpy = asyncio.run(replies([sys.executable, "-m", "kvmpy", "-enable-kvm", "-kernel", str(build_guest("hello")),
                                 *common, "-qmp", f"unix:{tmp_path / 'k.sock'},server=on,wait=off"],
                                tmp_path / "k.sock", env))
    assert len(kvmpy) == len(qemu)
    for k, q in zip(kvmpy, qemu):
        assert _unordered(k) == _unordered(q)


def _unordered(reply: tuple) -> Any:
    """QEMU lists memory backends in its QOM hash table's order: compare those as sets."""
    name, args, kind, value = reply
    if name == "query-memdev":
        return sorted(value, key=lambda m: m["id"])
    if name == "human-monitor-command" and args["command-line"] == "info memdev":
        return sorted(b.strip() for b in value.split("memory backend: ")), value.endswith("\r\n\r\n")
    return reply


@pytest.mark.kvm_host
def test_device_add_waits_for_a_snapshot_reset_or_loadvm() -> None:
    """A pc-dimm plug takes the lifecycle lock, which an in-memory snapshot reset and a loadvm hold while
    they work: it happens before or after them, never in between."""
    import dataclasses
    import threading

    from kvmpy.config_devices import ObjectSpec
    from kvmpy.devices.chardev import BufferBackend
    from kvmpy.machine import Machine, qmp_commands
    from kvmpy.monitor.context import Context
    from tests.migration.support import dirtier_config

    cfg = dataclasses.replace(dirtier_config(), memory_slots=2, max_memory=512 * MiB,
                              objects=(ObjectSpec("memory-backend-ram", "m0", (("size", "64M"),)),)).validate()
    m = Machine(cfg, console=BufferBackend())
    try:
        m.start()
        ctx = Context(m, None, qmp_commands())
        done = threading.Event()

        def plug() -> None:
            ctx.commands.dispatch(ctx, "device_add", {"driver": "pc-dimm", "id": "d0", "memdev": "m0"})
            done.set()

        with m.lifecycle.vcpus_parked():  # what Snapshot.reset holds (load_vm holds the same lock)
            t = threading.Thread(target=plug)
            t.start()
            assert not done.wait(0.5)
            assert m.board.memhp.dimms == []  # nothing plugged while the reset works
        assert done.wait(10)
        t.join()
        assert [d.id for d in m.board.memhp.dimms] == ["d0"]
    finally:
        m.close()
