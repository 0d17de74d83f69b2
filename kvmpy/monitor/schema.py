"""The QMP command table: each command's name, argument schema and handler, validated in one place.

Adding a command is one decorated function::

    @table.command("migrate-set-speed", value=Arg("int"))
    def set_speed(ctx, value): ...

``CommandTable.dispatch`` checks the arguments against the schema before the
handler runs, with QEMU's error wording (missing, unexpected, wrong type),
so handlers receive only well-typed keyword arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from kvmpy.monitor.protocol import COMMAND_NOT_FOUND, QmpError

# QAPI type names as they appear in QEMU's "expected: ..." messages.
_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "bool": (bool,), "number": (int, float),
    "dict": (dict,), "list": (list,), "any": (object,),
}
_QAPI_NAMES = {"str": "string", "int": "integer", "bool": "boolean", "number": "number",
               "dict": "object", "list": "array", "any": "any"}
INT64 = (-(1 << 63), (1 << 64) - 1)  # QAPI accepts int64 and uint64 values


@dataclass(frozen=True)
class Arg:
    """One argument's QAPI type, checked recursively before any handler runs.

    ``items`` is the element type of a list (a type name or a nested Arg), ``fields``
    the members of an object (each an Arg; unknown members are refused), ``choices``
    an enum (of the value, or of the items of a list of names), and ``min``/``max``
    the range of an int or number (ints default to QAPI's int64/uint64 range).
    """

    type: str  # a key of _TYPES
    optional: bool = False
    items: "Arg | str | None" = None
    choices: tuple[str, ...] | None = None
    fields: "dict[str, Arg] | None" = None
    min: int | float | None = None
    max: int | float | None = None

    def check(self, name: str, value: Any) -> None:
        want = _TYPES[self.type]
        ok = isinstance(value, want) and not (isinstance(value, bool) and bool not in want)
        if ok and self.type == "number" and isinstance(value, float) and not math.isfinite(value):
            ok = False
        if ok and self.type == "int" and not INT64[0] <= value <= INT64[1]:
            ok = False
        if not ok:
            raise QmpError(f"Invalid parameter type for '{name}', expected: {_QAPI_NAMES[self.type]}")
        if self.min is not None and value < self.min or self.max is not None and value > self.max:
            raise QmpError(f"Parameter '{name}' expects a value between {self.min} and {self.max}")
        if self.items is not None:
            item = self.items if isinstance(self.items, Arg) else Arg(self.items, choices=self.choices)
            for i, element in enumerate(value):
                item.check(f"{name}[{i}]", element)
        elif self.choices is not None and value not in self.choices:
            raise QmpError(f"Parameter '{name}' does not accept value '{value}'")
        if self.fields is not None:
            check_members(self.fields, value, f"{name}.")


def check_members(spec: "dict[str, Arg]", members: dict[str, Any], prefix: str = "") -> None:
    """An object's members against ``spec``: no unknown, none missing, each of the right type."""
    for key in members:
        if key not in spec:
            raise QmpError(f"Parameter '{prefix}{key}' is unexpected")
    for key, arg in spec.items():
        if key in members:
            arg.check(f"{prefix}{key}", members[key])
        elif not arg.optional:
            raise QmpError(f"Parameter '{prefix}{key}' is missing")


Handler = Callable[..., Any]


@dataclass(frozen=True)
class Command:
    name: str
    handler: Handler
    args: dict[str, Arg] = field(default_factory=dict)

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        check_members(self.args, arguments)
        return {k.replace("-", "_"): v for k, v in arguments.items()}


class CommandTable:
    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}

    def command(self, name: str, **args: Arg) -> Callable[[Handler], Handler]:
        """Register ``fn(ctx, **arguments)``; argument names with '-' arrive with '_'."""
        def register(fn: Handler) -> Handler:
            self.add(Command(name, fn, {k.replace("_", "-"): v for k, v in args.items()}))
            return fn
        return register

    def add(self, cmd: Command) -> None:
        if cmd.name in self._commands:
            raise ValueError(f"QMP command {cmd.name!r} is registered twice")
        self._commands[cmd.name] = cmd

    def names(self) -> list[str]:
        return sorted(self._commands)

    def get(self, name: str) -> Command:
        cmd = self._commands.get(name)
        if cmd is None:
            raise QmpError(f"The command {name} has not been found", COMMAND_NOT_FOUND)
        return cmd

    def dispatch(self, ctx: Any, name: str, arguments: dict[str, Any]) -> Any:
        cmd = self.get(name)
        return cmd.handler(ctx, **cmd.validate(arguments))
