"""VmState: one capture/apply of the whole VM, checked in full before anything is applied."""

from __future__ import annotations

import pytest

from kvmpy.config import DebugExitConfig, MachineConfig
from kvmpy.devices.chardev import BufferBackend
from kvmpy.machine import Machine
from kvmpy.migration.errors import ConfigMismatchError, StreamError
from kvmpy.vmstate import DEVICE_STATE_VERSION, check_config
from tests.guests.build import build_guest

COM1 = 0x3F8


@pytest.fixture
def machine():
    cfg = MachineConfig(kernel=build_guest("hello"), memory=32 << 20, serial="stdio", no_reboot=True,
                        debug_exit=DebugExitConfig(0xF4, 4)).validate()
    m = Machine(cfg, console=BufferBackend())
    yield m
    m.close()


def test_check_config_names_every_difference() -> None:
    local = {"memory": 64 << 20, "smp": 1}
    check_config(local, dict(local))
    with pytest.raises(ConfigMismatchError, match=r"memory: 32 MiB in the stream, 64 MiB here; smp"):
        check_config(local, {"memory": 32 << 20, "smp": 2})
    with pytest.raises(ConfigMismatchError, match="unknown configuration keys in the stream: x"):
        check_config(local, dict(local, x=1))
    with pytest.raises(ConfigMismatchError):
        check_config(local, ["not", "a", "dict"])  # type: ignore[arg-type]


@pytest.mark.kvm_host
def test_capture_holds_every_section_in_order(machine) -> None:
    state = machine.vmstate.capture()
    assert list(state) == ["vm/clock", "vm/irqchip", "vm/pit", "cpu/0", "dev/serial0", "dev/i8042", "dev/rtc",
                           "dev/port80", "dev/acpi-pm", "dev/reset-control", "dev/acpi-gpe", "dev/isa-debug-exit",
                           "dev/pci-host", "dev/i440fx", "dev/piix3"]
    assert state["dev/rtc"]["version"] == DEVICE_STATE_VERSION
    assert list(machine.vmstate.capture(cpu_only=True)) == ["vm/irqchip", "vm/pit", "cpu/0"]
    d = machine.vmstate.describe()
    assert d["memory"] == 32 << 20 and d["devices"] == sorted(machine.board.devices) and d["acpi"] is False


@pytest.mark.kvm_host
def test_apply_restores_what_capture_saw(machine) -> None:
    pio = machine.board.pio
    pio.write(COM1 + 7, 1, 0x11)
    state = machine.vmstate.capture()
    regs = bytes(machine.board.vcpus[0].get_raw("regs"))
    pio.write(COM1 + 7, 1, 0x22)
    machine.board.load_kernel()
    machine.vmstate.apply(state)
    assert pio.read(COM1 + 7, 1) == 0x11
    assert bytes(machine.board.vcpus[0].get_raw("regs")) == regs


@pytest.mark.kvm_host
def test_missing_and_unknown_sections_are_refused(machine) -> None:
    state = machine.vmstate.capture()
    with pytest.raises(StreamError, match="lacks state for: dev/rtc"):
        machine.vmstate.apply({k: v for k, v in state.items() if k != "dev/rtc"})
    with pytest.raises(StreamError, match="parts this machine lacks: cpu/1"):
        machine.vmstate.apply(dict(state, **{"cpu/1": state["cpu/0"]}))


@pytest.mark.kvm_host
@pytest.mark.parametrize("offset", [float("nan"), float("inf"), 1e300, 10 ** 40])
def test_a_hostile_rtc_section_is_refused_before_anything_is_applied(machine, offset) -> None:
    pio = machine.board.pio
    pio.write(COM1 + 7, 1, 0x11)
    state = machine.vmstate.capture()
    state["dev/serial0"]["state"]["scr"] = 0x33  # a fine change that must NOT be applied...
    state["dev/rtc"]["state"]["offset"] = offset  # ...because this section is unfit
    rtc_before = machine.board.devices["rtc"].save()
    with pytest.raises(StreamError, match="dev/rtc"):
        machine.vmstate.apply(state)
    assert pio.read(COM1 + 7, 1) == 0x11
    assert machine.board.devices["rtc"].save() == rtc_before


@pytest.mark.kvm_host
@pytest.mark.parametrize("section, value, match", [
    ("dev/port80", {"version": 2, "state": {"last": 0}}, "not version 1"),
    ("dev/port80", {"version": 1, "state": {"last": 0}, "more": 1}, "not version 1"),
    ("dev/port80", {"version": 1, "state": {"last": 1 << 70}}, "dev/port80"),
    ("dev/i8042", {"version": 1, "state": {"ctr": 0, "outport": 0, "queue": [[1, 2, 3]]}}, "dev/i8042"),
    ("vm/irqchip", [b"", b""], "three byte strings"),
    ("vm/pit", "pit", "byte strings"),
    ("vm/clock", None, "byte strings"),
    ("cpu/0", {"version": 9}, "vCPU state section is malformed"),
    ("cpu/0", "garbage", "vCPU state section is malformed"),
])
def test_malformed_sections_are_stream_errors(machine, section, value, match) -> None:
    state = machine.vmstate.capture()
    state[section] = value
    with pytest.raises(StreamError, match=match):
        machine.vmstate.apply(state)


@pytest.mark.kvm_host
def test_a_cpu_section_for_another_vcpu_is_refused(machine) -> None:
    state = machine.vmstate.capture()
    state["cpu/0"] = dict(state["cpu/0"], vcpu_id=5)
    with pytest.raises(StreamError, match="holds the state of vCPU 5"):
        machine.vmstate.apply(state)


@pytest.mark.kvm_host
@pytest.mark.parametrize("field, value", [("raw", {"regs": 10 ** 10}), ("raw", [1]), ("msrs", {"16": 1.5}),
                                          ("mp_state", "0"), ("vcpu_id", 0.0)])
def test_a_cpu_section_with_wrong_types_is_refused_without_allocating(machine, field, value) -> None:
    state = machine.vmstate.capture()
    state["cpu/0"] = dict(state["cpu/0"], **{field: value})
    with pytest.raises(StreamError, match="vCPU state section is malformed"):
        machine.vmstate.apply(state)


def test_check_config_names_ram_blocks_and_dimms_as_qemu_does() -> None:
    """A RAM block the machine lacks or of another size in QEMU's words; DIMMs by id; hostile values survive."""
    dimm = {"id": "d1", "memdev": "m1", "size": 1 << 27, "addr": 1 << 32, "slot": 0}
    local = {"ram": [{"name": "pc.ram", "size": 1 << 27}, {"name": "/objects/m1", "size": 1 << 28}],
             "memory-hotplug": {"slots": 2, "maxmem": 1 << 30, "dimms": [dict(dimm, size=1 << 28)]}}
    remote = {"ram": [{"name": "pc.ram", "size": 1 << 27}, {"name": "/objects/m1", "size": 1 << 27},
                      {"name": "/objects/m2", "size": 1 << 27}],
              "memory-hotplug": {"slots": 2, "maxmem": 1 << 30,
                                 "dimms": [dimm, dict(dimm, id="d2", memdev="m2", slot=1)]}}
    with pytest.raises(ConfigMismatchError) as exc:
        check_config(local, remote)
    text = str(exc.value)
    assert 'Unknown ramblock "m2", cannot accept migration; Size mismatch: m1: 0x8000000 != 0x10000000; ' in text
    assert "DIMM 'd2' (memdev m2, slot 1) in the stream, not here" in text
    assert "DIMM 'd1': " in text and "\n" not in text
    for hostile in ([{"name": "m", "size": "big"}], ["x"], 7, [{"name": ["x"], "size": 1}]):
        with pytest.raises(ConfigMismatchError, match="is not a list of RAM blocks"):
            check_config(local, dict(remote, ram=hostile))
    with pytest.raises(ConfigMismatchError, match="memory-hotplug: "):
        check_config(local, dict(remote, ram=local["ram"], **{"memory-hotplug": {"dimms": [{"id": []}]}}))
