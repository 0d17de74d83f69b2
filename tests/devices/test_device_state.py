"""Every device's state protocol: reset(), save() and a restore() that refuses hostile state cleanly.

restore() takes data from migration streams and snapshots, which anyone who
reaches an ``-incoming`` port can write. Each device must check every field's
type and range first and raise DeviceStateError (a ValueError) without
changing anything, then still work. The fuzz test feeds mutated versions of
each device's own saved state (wrong types, NaN, infinities, huge integers,
missing and extra keys); KVMPY_FUZZ_EXAMPLES raises its example count.
"""

from __future__ import annotations

import calendar
import math
import os
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmpy.devices.acpi_pm import AcpiPm, ResetControl
from kvmpy.devices.debug_exit import DebugExit
from kvmpy.devices.device import Device, DeviceStateError
from kvmpy.devices.i8042 import I8042
from kvmpy.devices.port80 import Port80
from kvmpy.devices.rtc import CmosRtc
from kvmpy.devices.serial import Uart16550

NOW = calendar.timegm((2026, 11, 25, 13, 45, 7, 0, 0, 0))


def _serial() -> Uart16550:
    u = Uart16550()
    u.write(7, 1, 0x5A)  # scratch
    u.receive(b"hi")
    return u


def _i8042() -> I8042:
    d = I8042(on_reset=lambda: None)
    d.write(4, 1, 0xAA)  # self-test: leaves 0x55 queued
    return d


def _rtc() -> CmosRtc:
    r = CmosRtc(64 << 20, clock=lambda: NOW)
    r.write(0, 1, 0x20)
    r.write(1, 1, 0x77)  # CMOS byte 0x20
    return r


def _acpi_pm() -> AcpiPm:
    pm = AcpiPm(on_poweroff=lambda: None)
    pm.write(2, 2, 0x0100)  # PWRBTN_EN
    return pm


DEVICES: dict[str, Callable[[], Any]] = {
    "serial": _serial,
    "i8042": _i8042,
    "rtc": _rtc,
    "port80": Port80,
    "debug-exit": lambda: DebugExit(on_exit=lambda status: None),
    "acpi-pm": _acpi_pm,
    "reset-control": lambda: ResetControl(on_reset=lambda: None),
}

HOSTILE_VALUES = [None, True, "x", b"\xff" * 200, [], {}, [1, 2], -1, 1 << 70, -(1 << 70), 10 ** 400,
                  float("nan"), float("inf"), float("-inf"), 1e300, -1e300, 0.5]


def _comparable(state: dict[str, Any]) -> dict[str, Any]:
    """A saved state without the fields that move on their own (the PM timer)."""
    return {k: v for k, v in state.items() if k != "ticks"}


def _still_works(name: str, dev: Any) -> None:
    """A device that refused a state still answers its bus and round-trips its own state."""
    dev.read(0, 1)
    dev.restore(dev.save())
    if name == "rtc":
        dev.write(0, 1, 0x00)
        assert 0 <= dev.read(1, 1) <= 0x59  # the time still reads (a bad offset would raise here)


@pytest.mark.parametrize("name", DEVICES)
def test_every_device_has_the_protocol(name: str) -> None:
    dev = DEVICES[name]()
    assert isinstance(dev, Device)
    state = dev.save()
    dev.validate(state)
    fresh = DEVICES[name]()
    fresh.restore(state)
    assert _comparable(fresh.save()) == _comparable(state)


@pytest.mark.parametrize("name", DEVICES)
def test_reset_returns_to_the_power_on_state(name: str) -> None:
    dev = DEVICES[name]()
    dev.reset()
    again = DEVICES[name]()
    again.reset()
    assert _comparable(dev.save()) == _comparable(again.save())


@pytest.mark.parametrize("name", DEVICES)
def test_each_field_with_each_hostile_value_is_refused_or_harmless(name: str) -> None:
    dev = DEVICES[name]()
    good = dev.save()
    for key in good:
        for bad in HOSTILE_VALUES:
            state = dict(good, **{key: bad})
            before = _comparable(dev.save())
            try:
                dev.restore(state)
            except DeviceStateError:
                assert _comparable(dev.save()) == before, f"{key}={bad!r} was partly applied"
            _still_works(name, dev)


@pytest.mark.parametrize("name", DEVICES)
def test_missing_extra_and_non_dict_states_are_refused(name: str) -> None:
    dev = DEVICES[name]()
    good = dev.save()
    for state in (None, [], "state", 7, dict(good, surprise=1)):
        with pytest.raises(DeviceStateError):
            dev.restore(state)  # type: ignore[arg-type]
    for key in good:
        missing = {k: v for k, v in good.items() if k != key}
        try:
            dev.restore(missing)
        except DeviceStateError:
            pass  # only port80's "last" and the i8042's two late fields are optional
        _still_works(name, dev)


@pytest.mark.parametrize("offset", [float("nan"), float("inf"), float("-inf"), 1e300, 10 ** 30, -(10 ** 400)])
def test_rtc_offset_that_would_crash_the_guests_first_read_is_refused(offset: Any) -> None:
    rtc = _rtc()
    state = dict(rtc.save(), offset=offset)
    with pytest.raises(DeviceStateError, match="offset"):
        rtc.restore(state)
    assert rtc.offset == 0.0
    rtc.write(0, 1, 0x09)
    assert rtc.read(1, 1) == 0x26  # year 2026, BCD: the clock still works


def test_rtc_accepts_every_offset_a_guest_can_set() -> None:
    rtc = _rtc()
    for century, year in ((0x00, 0x00), (0x99, 0x99)):  # years 0 and 9999
        rtc.write(0, 1, 0x32)
        rtc.write(1, 1, century)
        rtc.write(0, 1, 0x09)
        rtc.write(1, 1, year)
        twin = _rtc()
        twin.restore(rtc.save())
        twin.write(0, 1, 0x32)
        assert twin.read(1, 1) == century
    assert math.isfinite(rtc.offset)


# ---- fuzz: mutations of each device's own state -----------------------------------------
_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(1 << 80), max_value=1 << 80),
    st.sampled_from([10 ** 400, -(10 ** 400)]), st.floats(allow_nan=True, allow_infinity=True),
    st.binary(max_size=300), st.text(max_size=8),
)
_value = st.recursive(_leaf, lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=4), kids,
                                                                                         max_size=3), max_leaves=8)


@settings(max_examples=int(os.environ.get("KVMPY_FUZZ_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(DEVICES)), data=st.data())
def test_fuzzed_states_are_refused_cleanly_or_restored(name: str, data: st.DataObject) -> None:
    dev = DEVICES[name]()
    state = dict(dev.save())
    for _ in range(data.draw(st.integers(1, 3))):
        action = data.draw(st.sampled_from(["replace", "drop", "add"]))
        if action == "replace" and state:
            state[data.draw(st.sampled_from(sorted(state)))] = data.draw(_value)
        elif action == "drop" and state:
            del state[data.draw(st.sampled_from(sorted(state)))]
        else:
            state[data.draw(st.text(min_size=1, max_size=6))] = data.draw(_value)
    before = _comparable(dev.save())
    try:
        dev.restore(state)
    except DeviceStateError:
        assert _comparable(dev.save()) == before
    _still_works(name, dev)
