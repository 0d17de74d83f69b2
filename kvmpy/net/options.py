"""Reading one -netdev's ``key=value`` properties: known keys only, QEMU's booleans, one-line errors.

A backend module lists the keys it understands; ``NetdevOptions`` refuses
anything else the way QEMU does ("Parameter 'x' is unexpected") and turns
values into ints, booleans and ports with a ``ConfigError`` naming the netdev
and the key. Repeated keys are kept in order (``hostfwd=`` may be given more
than once on ``-netdev user``).
"""

from __future__ import annotations

from collections.abc import Iterable

from kvmpy.errors import ConfigError

_TRUE = frozenset({"on", "yes", "true", "y"})
_FALSE = frozenset({"off", "no", "false", "n"})


class NetdevOptions:
    """The properties of one ``-netdev TYPE,id=ID,...`` checked against the keys ``known``."""

    def __init__(self, kind: str, netdev_id: str, props: Iterable[tuple[str, str]], known: Iterable[str]) -> None:
        self.kind = kind
        self.id = netdev_id
        self._props = tuple((str(k), str(v)) for k, v in props if k != "id")
        allowed = frozenset(known)
        for key, _ in self._props:
            if key not in allowed:
                raise ConfigError(f"-netdev {kind},id={netdev_id}: Parameter '{key[:64]}' is unexpected")

    def error(self, message: str) -> ConfigError:
        """A ConfigError prefixed with which netdev it is about."""
        return ConfigError(f"-netdev {self.kind},id={self.id}: {message}")

    def get(self, key: str, default: str | None = None) -> str | None:
        """The last value given for ``key`` (QEMU: the last one wins), or ``default``."""
        value = default
        for k, v in self._props:
            if k == key:
                value = v
        return value

    def get_all(self, key: str) -> list[str]:
        """Every value given for a repeatable key, in order."""
        return [v for k, v in self._props if k == key]

    def has(self, key: str) -> bool:
        return any(k == key for k, _ in self._props)

    def require(self, key: str) -> str:
        value = self.get(key)
        if value is None or value == "":
            raise self.error(f"Parameter '{key}' is missing")
        return value

    def get_bool(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise self.error(f"Parameter '{key}' expects 'on' or 'off', not {value[:32]!r}")

    def get_uint(self, key: str, default: int, maximum: int) -> int:
        value = self.get(key)
        if value is None:
            return default
        if not value.isascii() or not value.isdigit() or len(value) > 10 or int(value) > maximum:
            raise self.error(f"Parameter '{key}' expects an integer 0..{maximum}, not {value[:32]!r}")
        return int(value)
