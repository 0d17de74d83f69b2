"""make_netdev: one ``-netdev TYPE,id=ID,...`` (a NetdevSpec from the config) -> its NetBackend.

One line per backend type in ``_BUILDERS``; each backend module owns its own
keys and checks (``kvmpy.net.options.NetdevOptions``). Backend modules are
imported lazily, so a machine without networking imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from kvmpy.errors import ConfigError
from kvmpy.net.backend import NetBackend
from kvmpy.net.options import NetdevOptions


class NetdevSpecLike(Protocol):
    """The shape of kvmpy.config.NetdevSpec that this factory reads."""

    type: str
    id: str
    props: tuple[tuple[str, str], ...]


Props = Iterable[tuple[str, str]]


def _stream(netdev_id: str, props: Props) -> NetBackend:
    from kvmpy.net import stream
    return stream.stream_from_options(NetdevOptions("stream", netdev_id, props, stream.STREAM_KEYS))


def _socket(netdev_id: str, props: Props) -> NetBackend:
    from kvmpy.net import stream
    return stream.socket_from_options(NetdevOptions("socket", netdev_id, props, stream.SOCKET_KEYS))


def _user(netdev_id: str, props: Props) -> NetBackend:
    from kvmpy.net import user
    return user.user_from_options(NetdevOptions("user", netdev_id, props, user.USER_KEYS))


def _tap(netdev_id: str, props: Props) -> NetBackend:
    import kvmpy.net.tap as tap  # helper vnet's module: TapBackend.from_options(mapping), NetdevError
    try:
        return tap.TapBackend.from_options({**dict(props), "id": netdev_id})
    except tap.NetdevError as exc:
        raise ConfigError(str(exc)) from None


# One line per -netdev type; each builder imports its backend module when first used.
_BUILDERS: dict[str, Callable[[str, Props], NetBackend]] = {
    "stream": _stream,
    "socket": _socket,
    "user": _user,
    "tap": _tap,
}


def netdev_types() -> tuple[str, ...]:
    return tuple(sorted(_BUILDERS))


def make_netdev(spec: NetdevSpecLike) -> NetBackend:
    """Build the backend ``spec`` names (not started); ConfigError for any user mistake."""
    return build_netdev(spec.type, spec.id, spec.props)


def build_netdev(kind: str, netdev_id: str, props: Props) -> NetBackend:
    if not netdev_id:
        raise ConfigError(f"-netdev {kind}: Parameter 'id' is missing")
    builder = _BUILDERS.get(kind)
    if builder is None:
        raise ConfigError(f"-netdev {kind[:32]}: unknown netdev type (kvmpy has {', '.join(netdev_types())})")
    try:
        return builder(netdev_id, props)
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("kvmpy.net."):
            raise
        raise ConfigError(f"-netdev {kind}: this backend is not available in this build") from None
