"""The device protocol every device model implements, and the checks its ``restore()`` uses.

A device answers bus accesses (``read``/``write`` at an offset inside its
range), goes back to its power-on state with ``reset()``, and gives its state
as plain data with ``save()``. ``validate()`` checks such data without
applying it (so a whole VM's state can be checked before any of it is
restored). ``restore()`` takes such data from a migration
stream or a snapshot, which may be hostile: it checks every field's type and
range first and raises ``DeviceStateError`` (a ValueError) before it changes
anything, so a refused state leaves the device exactly as it was.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Protocol, runtime_checkable

if TYPE_CHECKING:
    from kvmpy.memory.ramblock import RAMBlock


class DeviceStateError(ValueError):
    """A device state (from a stream or snapshot) that this device cannot take."""


@runtime_checkable
class Device(Protocol):
    """What a board needs from a device model."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...

    def reset(self) -> None: ...

    def save(self) -> dict[str, Any]: ...

    def validate(self, state: dict[str, Any]) -> Any:
        """Check a saved state without applying it; raises DeviceStateError if it is unfit."""

    def restore(self, state: dict[str, Any]) -> None:
        """``validate()``, then apply; a refused state leaves the device as it was."""


@runtime_checkable
class OwnsRam(Protocol):
    """A device with RAM of its own (a display adapter's video memory), migrated with the guest's RAM."""

    def device_ram(self) -> list["RAMBlock"]: ...


def check_keys(state: Any, required: set[str], optional: set[str] = frozenset()) -> Mapping[str, Any]:
    """``state`` is a dict holding every required key, and no key outside required | optional."""
    if not isinstance(state, dict):
        raise DeviceStateError(f"device state must be a dict, not {type(state).__name__}")
    missing = sorted(required - set(state))
    if missing:
        raise DeviceStateError(f"device state lacks {', '.join(missing)}")
    extra = sorted(map(repr, set(state) - required - set(optional)))
    if extra:
        raise DeviceStateError(f"device state has unknown fields {', '.join(extra)}")
    return state


def int_field(state: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    """An int (not a bool) in [lo, hi]."""
    v = state[key]
    if type(v) is not int:
        raise DeviceStateError(f"{key} must be an integer, not {type(v).__name__}")
    if not lo <= v <= hi:
        raise DeviceStateError(f"{key} must be in [{lo:#x}, {hi:#x}]")
    return v


def bool_field(state: Mapping[str, Any], key: str) -> bool:
    v = state[key]
    if type(v) is not bool:
        raise DeviceStateError(f"{key} must be a boolean, not {type(v).__name__}")
    return v


def float_field(state: Mapping[str, Any], key: str, limit: float) -> float:
    """A finite number (int or float, not a bool) with magnitude at most ``limit``."""
    v = state[key]
    if type(v) not in (int, float):
        raise DeviceStateError(f"{key} must be a number, not {type(v).__name__}")
    if type(v) is int and abs(v) > limit:  # checked as an int: a huge one would overflow float()
        raise DeviceStateError(f"{key} must be within ±{limit:g}")
    f = float(v)
    if not math.isfinite(f) or abs(f) > limit:
        raise DeviceStateError(f"{key} must be a finite number within ±{limit:g}")
    return f


def bytes_field(state: Mapping[str, Any], key: str, max_len: int, exact: bool = False) -> bytes:
    """Bytes of at most (or, with ``exact``, exactly) ``max_len``."""
    v = state[key]
    if not isinstance(v, (bytes, bytearray)):
        raise DeviceStateError(f"{key} must be bytes, not {type(v).__name__}")
    if len(v) > max_len or (exact and len(v) != max_len):
        raise DeviceStateError(f"{key} must be {'exactly' if exact else 'at most'} {max_len} bytes")
    return bytes(v)
