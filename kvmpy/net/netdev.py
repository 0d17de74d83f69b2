"""make_netdev: one ``-netdev TYPE,id=ID,...`` (a NetdevSpec from the config) -> its NetBackend.

One line per backend type in ``_BUILDERS``; each backend module owns its own
keys and checks (``kvmpy.net.options.NetdevOptions``). Backend modules are
imported lazily, so a machine without networking imports none of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Protocol

from kvmpy.errors import ConfigError
from kvmpy.net.backend import NetBackend
from kvmpy.net.options import NetdevOptions


class NetdevSpecLike(Protocol):
    """The shape of kvmpy.config.NetdevSpec that this factory reads."""

    type: str
    id: str
    props: tuple[tuple[str, str], ...]


# type -> (module, builder function taking NetdevOptions, the keys that type accepts)
_BUILDERS: dict[str, tuple[str, str, str]] = {
    "stream": ("kvmpy.net.stream", "stream_from_options", "STREAM_KEYS"),
    "socket": ("kvmpy.net.stream", "socket_from_options", "SOCKET_KEYS"),
    "user": ("kvmpy.net.user", "user_from_options", "USER_KEYS"),
    "tap": ("kvmpy.net.tap", "tap_from_options", "TAP_KEYS"),
}


def netdev_types() -> tuple[str, ...]:
    return tuple(sorted(_BUILDERS))


def make_netdev(spec: NetdevSpecLike) -> NetBackend:
    """Build the backend ``spec`` names (not started); ConfigError for any user mistake."""
    return build_netdev(spec.type, spec.id, spec.props)


def build_netdev(kind: str, netdev_id: str, props: Iterable[tuple[str, str]]) -> NetBackend:
    if not netdev_id:
        raise ConfigError(f"-netdev {kind}: Parameter 'id' is missing")
    entry = _BUILDERS.get(kind)
    if entry is None:
        raise ConfigError(f"-netdev {kind[:32]}: unknown netdev type (kvmpy has {', '.join(netdev_types())})")
    module_name, builder, keys = entry
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ConfigError(f"-netdev {kind}: this backend is not available in this build") from None
    options = NetdevOptions(kind, netdev_id, props, getattr(module, keys))
    return getattr(module, builder)(options)
