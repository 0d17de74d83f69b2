"""i8042: the probe answers drivers expect, and the two ways to pulse the reset line."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmpy.devices.device import DeviceStateError
from kvmpy.devices.scancodes import QCODES
from kvmpy.devices.i8042 import I8042


def make():
    resets = []
    return I8042(on_reset=lambda: resets.append(1)), resets


def cmd(dev, c):
    dev.write(4, 1, c)


def data(dev):
    assert dev.read(4, 1) & 1, "output buffer should be full"
    return dev.read(0, 1)


def test_self_test_and_config_byte() -> None:
    dev, _ = make()
    cmd(dev, 0xAA)
    assert data(dev) == 0x55
    cmd(dev, 0x20)
    ctr = data(dev)
    cmd(dev, 0x60)
    dev.write(0, 1, ctr & ~1)
    cmd(dev, 0x20)
    assert data(dev) == ctr & ~1


def test_keyboard_reset_and_identify() -> None:
    dev, _ = make()
    dev.write(0, 1, 0xFF)
    assert [data(dev), data(dev)] == [0xFA, 0xAA]
    dev.write(0, 1, 0xF2)
    assert data(dev) == 0xFA and data(dev) == 0xAB


def test_reset_by_command_fe_and_by_output_port() -> None:
    dev, resets = make()
    cmd(dev, 0xFE)
    assert resets == [1]
    cmd(dev, 0xD1)
    dev.write(0, 1, 0xFE)  # bit 0 low: reset asserted
    assert resets == [1, 1]
    cmd(dev, 0xFF)  # pulse nothing
    assert resets == [1, 1]


# ---- the PS/2 keyboard and mouse ------------------------------------------------

class Line:
    def __init__(self) -> None:
        self.level = False
        self.raised = 0

    def set_level(self, level: bool) -> None:
        self.raised += level and not self.level
        self.level = level


def make_wired():
    kbd, aux = Line(), Line()
    return I8042(on_reset=lambda: None, kbd_irq=kbd, aux_irq=aux), kbd, aux


def drain(dev) -> list[int]:
    out = []
    while dev.read(4, 1) & 1:
        out.append(dev.read(0, 1))
    return out


def aux_cmd(dev, *values) -> list[int]:
    out = []
    for v in values:
        cmd(dev, 0xD4)
        dev.write(0, 1, v)
        out += drain(dev)
    return out


# The i8042's set 2 -> set 1 translation table (its first 0x88 entries), as in the PC/AT
# references and QEMU's ps2.c: the keyboard's set-2 codes must translate to the set-1 codes.
XLATE = [
    0xff, 0x43, 0x41, 0x3f, 0x3d, 0x3b, 0x3c, 0x58, 0x64, 0x44, 0x42, 0x40, 0x3e, 0x0f, 0x29, 0x59,
    0x65, 0x38, 0x2a, 0x70, 0x1d, 0x10, 0x02, 0x5a, 0x66, 0x71, 0x2c, 0x1f, 0x1e, 0x11, 0x03, 0x5b,
    0x67, 0x2e, 0x2d, 0x20, 0x12, 0x05, 0x04, 0x5c, 0x68, 0x39, 0x2f, 0x21, 0x14, 0x13, 0x06, 0x5d,
    0x69, 0x31, 0x30, 0x23, 0x22, 0x15, 0x07, 0x5e, 0x6a, 0x72, 0x32, 0x24, 0x16, 0x08, 0x09, 0x5f,
    0x6b, 0x33, 0x25, 0x17, 0x18, 0x0b, 0x0a, 0x60, 0x6c, 0x34, 0x35, 0x26, 0x27, 0x19, 0x0c, 0x61,
    0x6d, 0x73, 0x28, 0x74, 0x1a, 0x0d, 0x62, 0x6e, 0x3a, 0x36, 0x1c, 0x1b, 0x75, 0x2b, 0x63, 0x76,
    0x55, 0x56, 0x77, 0x78, 0x79, 0x7a, 0x0e, 0x7b, 0x7c, 0x4f, 0x7d, 0x4b, 0x47, 0x7e, 0x7f, 0x6f,
    0x52, 0x53, 0x50, 0x4c, 0x4d, 0x48, 0x01, 0x45, 0x57, 0x4e, 0x51, 0x4a, 0x37, 0x49, 0x46, 0x54,
    0x80, 0x81, 0x82, 0x41, 0x54, 0x85, 0x86, 0x87,
]


def test_scancode_sets_agree_with_the_translation_table() -> None:
    from kvmpy.devices.scancodes import KEYS
    for name, (set1, set2, _) in KEYS.items():
        assert XLATE[set2] == set1, name


def test_keys_arrive_translated_to_set_1_with_irq1() -> None:
    dev, kbd, aux = make_wired()
    dev.key_event("a", True)
    assert kbd.level and not aux.level
    dev.key_event("a", False)
    dev.key_event("up", True)
    dev.key_event("up", False)
    dev.key_event("kp_enter", True)
    assert drain(dev) == [0x1E, 0x9E, 0xE0, 0x48, 0xE0, 0xC8, 0xE0, 0x1C]
    assert not kbd.level


def test_every_byte_of_a_multi_byte_answer_gets_its_own_interrupt_edge() -> None:
    # Linux's atkbd sends GETID and takes one byte per IRQ1: ACK, then the two ID bytes. IRQ1 is
    # edge-triggered, so the line must drop when a byte is read and rise again for the next one.
    dev, kbd, _ = make_wired()
    dev.write(0, 1, 0xF2)
    got = []
    while kbd.level:
        got.append(dev.read(0, 1))
    assert got == [0xFA, 0xAB, 0x41] and kbd.raised == 3
    dev.key_event("a", True)
    dev.key_event("a", False)
    assert drain(dev) == [0x1E, 0x9E] and kbd.raised == 5


def test_untranslated_the_keyboard_sends_set_2_or_the_set_the_guest_picks() -> None:
    dev, _, _ = make_wired()
    cmd(dev, 0x60)
    dev.write(0, 1, 0x01)  # interrupts on, translation off
    dev.key_event("a", True)
    dev.key_event("a", False)
    dev.key_event("delete", False)
    assert drain(dev) == [0x1C, 0xF0, 0x1C, 0xE0, 0xF0, 0x71]
    dev.write(0, 1, 0xF0)
    dev.write(0, 1, 0x01)  # scancode set 1
    dev.write(0, 1, 0xF0)
    dev.write(0, 1, 0x00)  # which set?
    assert drain(dev) == [0xFA, 0xFA, 0xFA, 0xFA, 0x01]
    dev.key_event("a", True)
    assert drain(dev) == [0x1E]
    dev.key_event("print", True)
    assert drain(dev) == [0xE0, 0x2A, 0xE0, 0x37]


def test_a_disabled_keyboard_sends_nothing_and_reset_brings_it_back() -> None:
    dev, _, _ = make_wired()
    dev.write(0, 1, 0xF5)
    dev.key_event("b", True)
    assert drain(dev) == [0xFA]
    dev.write(0, 1, 0xFF)
    assert drain(dev) == [0xFA, 0xAA]
    dev.key_event("b", True)
    assert drain(dev) == [0x30]


def test_linux_psmouse_probe_finds_an_intellimouse() -> None:
    dev, kbd, aux = make_wired()
    cmd(dev, 0x60)
    dev.write(0, 1, 0x47)  # both interrupts, translate, system flag
    assert aux_cmd(dev, 0xFF) == [0xFA, 0xAA, 0x00]
    assert aux_cmd(dev, 0xF2) == [0xFA, 0x00]
    assert aux_cmd(dev, 0xF3, 200, 0xF3, 100, 0xF3, 80, 0xF2) == [0xFA] * 6 + [0xFA, 0x03]
    dev.pointer_event(5, 5, 0)
    assert drain(dev) == []  # reporting still off
    assert aux_cmd(dev, 0xF4) == [0xFA]
    dev.pointer_event(5, 3, 1)
    assert aux.level and not kbd.level
    assert dev.read(4, 1) & 0x21 == 0x21  # output full, from the aux port
    assert drain(dev) == [0x29, 5, 0xFD, 0x00]  # left button; 3 down the screen is -3 to PS/2
    dev.pointer_event(-300, 0, 8)  # wheel up; a long move splits in two packets
    assert drain(dev) == [0x18, 0x01, 0x00, 0xFF, 0x18, 0xD3, 0x00, 0x00]
    assert aux_cmd(dev, 0xE9) == [0xFA, 0x20, 2, 80]


def test_a_plain_mouse_sends_three_byte_packets() -> None:
    dev, _, aux = make_wired()
    cmd(dev, 0x60)
    dev.write(0, 1, 0x47)
    aux_cmd(dev, 0xF4)
    dev.pointer_event(1, -1, 4)
    assert drain(dev) == [0x0A, 1, 1]
    assert aux.raised == 4  # the ACK and each byte of the packet: one edge per byte, as for IRQ1


def test_keyboard_and_mouse_state_migrate() -> None:
    dev, _, _ = make_wired()
    aux_cmd(dev, 0xF3, 200, 0xF3, 100, 0xF3, 80, 0xF4)
    dev.write(0, 1, 0xF0)
    dev.write(0, 1, 0x01)
    drain(dev)
    dev.key_event("z", True)
    state = dev.save()
    other, kbd, _ = make_wired()
    other.restore(state)
    assert other.save() == state and kbd.level
    other.pointer_event(1, 0, 0)
    assert drain(other) == [0x2C, 0x08, 1, 0, 0]


def test_a_state_from_before_the_devices_restores_them_at_defaults() -> None:
    dev, _, _ = make_wired()
    state = dev.save()
    del state["keyboard"], state["mouse"]
    dev.restore(state)
    assert dev.save()["mouse"]["enabled"] is False


@pytest.mark.parametrize("bad", [{"keyboard": {"set": 3}}, {"mouse": {"id": 4}}, {"mouse": {"knock": [1] * 9}},
                                 {"keyboard": {"nonsense": 1}}, {"mouse": "x"}])
def test_unfit_device_states_are_refused(bad) -> None:
    dev, _, _ = make_wired()
    state = {**dev.save(), **bad}
    with pytest.raises(DeviceStateError):
        dev.restore(state)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("out"), st.sampled_from([0, 4]), st.integers(0, 0xFF)),
    st.tuples(st.just("in"), st.sampled_from([0, 4]), st.just(0)),
    st.tuples(st.just("key"), st.sampled_from(sorted(QCODES)), st.booleans()),
    st.tuples(st.just("move"), st.integers(-2000, 2000), st.integers(0, 31))), max_size=80))
def test_any_guest_and_input_sequence_keeps_the_controller_sane(ops) -> None:
    dev, kbd, aux = make_wired()
    for op in ops:
        if op[0] == "out":
            dev.write(op[1], 1, op[2])
        elif op[0] == "in":
            assert 0 <= dev.read(op[1], 1) <= 0xFF
        elif op[0] == "key":
            dev.key_event(op[1], op[2])
        else:
            dev.pointer_event(op[1], -op[1] // 3, op[2])
        state = dev.save()
        assert len(state["queue"]) <= 64
    other, _, _ = make_wired()
    other.restore(dev.save())  # whatever state the sequence left, it migrates
    assert other.save() == dev.save()
