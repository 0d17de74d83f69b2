"""Memory hotplug on a real PC board (host KVM): cold and hot DIMMs, QMP replies, guest eject, migration facts."""

from __future__ import annotations

import pytest

from kvmpy.config import MachineConfig
from kvmpy.config_devices import DeviceSpec, ObjectSpec
from kvmpy.devices.acpi_memhp import MEMHP_BASE
from kvmpy.devices.chardev import BufferBackend
from kvmpy.errors import ConfigError
from kvmpy.machine import Machine, qmp_commands
from kvmpy.migration.errors import ConfigMismatchError
from kvmpy.monitor.context import Context
from kvmpy.monitor.protocol import QmpError
from kvmpy.vmstate import check_config
from tests.guests.build import build_guest

pytestmark = pytest.mark.kvm_host
MiB = 1 << 20


def machine(objects=(), devices=(), slots: int = 4, maxmem: int | None = 1024 * MiB) -> Machine:
    cfg = MachineConfig(kernel=build_guest("hello"), memory=64 * MiB, start_paused=True, serial="null",
                        memory_slots=slots, max_memory=maxmem, objects=tuple(objects),
                        devices=tuple(devices)).validate()
    return Machine(cfg, console=BufferBackend())


def qmp(m: Machine, name: str, **args):
    table = qmp_commands()
    return table.dispatch(Context(m, commands=table), name, args)


def test_cold_dimm_is_guest_ram_in_the_window_and_migrates() -> None:
    m = machine([ObjectSpec("memory-backend-ram", "m0", (("size", "128M"),))],
                [DeviceSpec("pc-dimm", "d0", (("memdev", "m0"),))])
    try:
        base = 0x100000000
        m.board.memory.write(base + 4096, b"dimm")
        assert m.board.memory.read(base + 4096, 4) == b"dimm"
        assert [b.name for b in m.ram_blocks] == ["pc.ram", "/objects/m0"]
        assert any(s.gpa == base and s.size == 128 * MiB for s in m.board.slots.slots.values())
        assert qmp(m, "query-memory-devices") == [{"type": "dimm", "data": {
            "memdev": "/objects/m0", "hotplugged": False, "addr": base, "hotpluggable": True,
            "size": 128 * MiB, "slot": 0, "node": 0, "id": "d0"}}]
        assert qmp(m, "query-memory-size-summary") == {"base-memory": 64 * MiB, "plugged-memory": 128 * MiB}
        described = m.vmstate.describe()
        assert described["memory-hotplug"]["dimms"][0]["memdev"] == "m0"
    finally:
        m.close()
    other = machine()
    try:
        with pytest.raises(ConfigMismatchError, match=r"Unknown ramblock \"m0\", cannot accept migration; "
                                                      r"DIMM 'd0' \(memdev m0, slot 0\) in the stream, not here$"):
            check_config(other.vmstate.describe(), described)
    finally:
        other.close()


def test_hot_add_then_guest_eject_emits_device_deleted() -> None:
    m = machine()
    events: list = []
    m.lifecycle.add_event_listener(lambda name, data: events.append((name, data)))
    try:
        assert qmp(m, "object-add", **{"qom-type": "memory-backend-ram", "id": "mem1", "size": 256 * MiB}) == {}
        assert qmp(m, "device_add", driver="pc-dimm", id="dimm1", memdev="mem1") == {}
        assert m.board.devices["acpi-gpe"].read(0, 2) == 1 << 3  # GPE 3 raised
        with pytest.raises(QmpError, match="can't use already busy memdev: mem1"):
            qmp(m, "device_add", driver="pc-dimm", id="dimm2", memdev="mem1")
        with pytest.raises(QmpError, match="Duplicate device ID 'dimm1'"):
            qmp(m, "device_add", driver="pc-dimm", id="dimm1", memdev="mem1")
        with pytest.raises(QmpError) as exc:
            qmp(m, "device_add", driver="pc-dimm", id="x", memdev="nosuch")
        assert exc.value.cls == "DeviceNotFound"
        with pytest.raises(QmpError, match="object 'mem1' is in use, can not be deleted"):
            qmp(m, "object-del", id="mem1")
        m.board.memory.write(0x100000000, b"x" * 8)
        hmp = qmp(m, "human-monitor-command", **{"command-line": "info memory-devices"})
        assert hmp.startswith('Memory device [dimm]: "dimm1"\r\n  addr: 0x100000000\r\n  slot: 0\r\n')
        pio = m.board.pio
        pio.write(MEMHP_BASE, 4, 0)  # the guest's MSCN: select slot 0, see the insert, clear it
        assert pio.read(MEMHP_BASE + 0x14, 1) == 0b011
        pio.write(MEMHP_BASE + 0x14, 1, 2)
        assert qmp(m, "device_del", id="dimm1") == {}
        pio.write(MEMHP_BASE, 4, 0)
        assert pio.read(MEMHP_BASE + 0x14, 1) == 0b101  # ... enabled, remove event
        pio.write(MEMHP_BASE + 4, 4, 3)  # _OST(eject request, success)
        pio.write(MEMHP_BASE + 8, 4, 0)
        pio.write(MEMHP_BASE + 0x14, 1, 8)  # _EJ0
        assert ("DEVICE_DELETED", {"device": "dimm1", "path": "/machine/peripheral/dimm1"}) in events
        assert ("ACPI_DEVICE_OST", {"info": {"device": "dimm1", "source": 3, "status": 0, "slot": "0",
                                             "slot-type": "DIMM"}}) in events
        assert qmp(m, "query-memory-devices") == []
        assert [b.name for b in m.ram_blocks] == ["pc.ram"]
        assert qmp(m, "object-del", id="mem1") == {}
    finally:
        m.close()


def test_cold_plug_errors_name_the_option() -> None:
    with pytest.raises(ConfigError, match="'memdev' property must be set"):
        machine(devices=[DeviceSpec("pc-dimm", "d0", source="-device pc-dimm,id=d0")]).close()
    with pytest.raises(ConfigError, match="no slots where allocated, please specify the 'slots' option"):
        machine([ObjectSpec("memory-backend-ram", "m0", (("size", "128M"),))],
                [DeviceSpec("pc-dimm", "d0", (("memdev", "m0"),))], slots=0, maxmem=None).close()


def test_yaml_machine_file_with_objects_and_dimms(tmp_path) -> None:
    from kvmpy.config import load_yaml

    kernel = build_guest("hello")
    path = tmp_path / "vm.yaml"
    path.write_text(f"kernel: {kernel}\nmemory: 64M\nslots: 2\nmaxmem: 1G\nserial: 'null'\nstart_paused: true\n"
                    "objects:\n  - {qom-type: memory-backend-ram, id: m0, size: 128M}\n"
                    "devices:\n  - {driver: pc-dimm, id: d0, memdev: m0, slot: 1}\n")
    m = Machine(load_yaml(path).validate(), console=BufferBackend())
    try:
        assert [(d.id, d.slot, d.addr) for d in m.board.memhp.dimms] == [("d0", 1, 0x100000000)]
    finally:
        m.close()
