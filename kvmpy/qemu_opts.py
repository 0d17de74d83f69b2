"""QEMU's option-argument syntax: ``-device driver,key=value,...`` (QemuOpts) and ``-blockdev`` (keyval/JSON).

This module owns how the text of one option argument becomes keys and values,
with QEMU's rules as users know them (util/qemu-option.c, util/keyval.c):

- ``a=1,b=2``; ``,,`` is a literal comma inside a value (``path=/a,,b`` is ``/a,b``).
- An *implied first key*: ``-netdev user,...`` is ``type=user``, ``-device e1000`` is
  ``driver=e1000``, ``-chardev socket`` is ``backend=socket``, ``-object x`` is
  ``qom-type=x``. Only the first element may omit its key.
- A bare ``key`` (no ``=``) after the first element means ``key=on``, and ``nokey`` means
  ``key=off`` (QEMU warns that this form is deprecated; kvmpy accepts it silently).
- ``help`` or ``?`` as the implied value, or as a bare key, asks for help (``Opts.help``).
- Duplicate keys: all are kept in order and the *last* wins (``Opts.get``), as
  ``qemu_opt_get`` does; except ``id``, where the *first* wins, as in QEMU.
- ``id`` must be well formed (``check_id``): a letter, then letters, digits, ``-``, ``.``, ``_``.
- ``-blockdev`` takes keyval: dotted keys build a tree (``file.driver=file``), each key
  fragment is a QAPI name, there is no bare-key shorthand, and a key used both as a
  value and as a tree is refused ("used inconsistently"); or a JSON object (``{...}``).

Every length is bounded before any work is done on it, and every mistake is one
``ConfigError`` line shaped as QEMU's: ``-netdev user,id=: Parameter 'id' expects an identifier``.
Values stay text here; ``parse_bool``/``parse_number``/``parse_size`` read them as QEMU does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterator

from kvmpy import units
from kvmpy.errors import ConfigError, shown

__all__ = ["Opts", "MAX_OPTION_TEXT", "check_id", "id_wellformed", "is_help", "parse_bool", "parse_keyval",
           "parse_number", "parse_opts", "parse_size", "parse_structured", "flatten", "unflatten", "where"]

MAX_OPTION_TEXT = 16384  # one option argument; a long -append is not parsed here, a 16 KiB -device is a mistake
MAX_KEYS = 256  # key=value pairs in one argument
MAX_KEY = 127  # characters of one key (QEMU's keyval limit per fragment is 127 too)
MAX_ID = 256  # characters of an id
MAX_DEPTH = 16  # nesting of a -blockdev tree (QEMU's deepest real use is 4: file.file.x)
MAX_SHOWN = 100  # characters of the argument echoed in front of a message

_ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*\Z", re.ASCII)
_QAPI_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z", re.ASCII)
_HELP = ("help", "?")
_TRUE = ("on", "yes", "true", "y")
_FALSE = ("off", "no", "false", "n")


def where(option: str, text: str) -> str:
    """QEMU's location prefix of a message: the option and its argument (shortened, one line)."""
    if len(text) > MAX_SHOWN:
        text = text[:MAX_SHOWN] + f"... ({len(text)} characters)"
    return (f"{option} {text}" if text else option).replace("\n", "\\n")


def _fail(option: str, text: str, message: str) -> ConfigError:
    return ConfigError(f"{where(option, text)}: {message}")


def id_wellformed(ident: str) -> bool:
    """QEMU's id_wellformed(): a letter first, then ASCII letters, digits, '-', '.', '_'."""
    return isinstance(ident, str) and len(ident) <= MAX_ID and _ID_RE.match(ident) is not None


def check_id(ident: str, option: str, text: str) -> str:
    if not id_wellformed(ident):
        raise _fail(option, text, "Parameter 'id' expects an identifier (letters, digits, '-', '.', '_', "
                                  "starting with a letter)")
    return ident


def is_help(value: str | None) -> bool:
    return value in _HELP


@dataclass(frozen=True)
class Opts:
    """One parsed argument: ``pairs`` in the order given (``id`` taken out), duplicates kept."""

    option: str  # "-device", for messages
    text: str  # the argument as given
    pairs: tuple[tuple[str, str], ...]
    id: str | None = None
    help: bool = False

    def get(self, key: str, default: str | None = None) -> str | None:
        """The last value given for ``key`` (QEMU: the last of duplicates wins)."""
        for k, v in reversed(self.pairs):
            if k == key:
                return v
        return default

    def keys(self) -> list[str]:
        """Each key once, in order of first appearance."""
        return list(dict.fromkeys(k for k, _ in self.pairs))

    def as_dict(self) -> dict[str, str]:
        return dict(self.pairs)  # later pairs overwrite earlier ones: last wins

    def fail(self, message: str) -> ConfigError:
        """A ConfigError about this argument, with QEMU's location prefix."""
        return _fail(self.option, self.text, message)


def _check_text(text: Any, option: str) -> str:
    if not isinstance(text, str):
        raise ConfigError(f"{option} {shown(text)}: expected text")
    if len(text) > MAX_OPTION_TEXT:
        raise _fail(option, text, f"argument longer than {MAX_OPTION_TEXT} characters")
    if "\0" in text:
        raise _fail(option, text, "argument contains a NUL byte")
    return text


def _value(text: str, pos: int) -> tuple[str, int]:
    """The value starting at ``pos`` up to the next single comma (",," is a literal comma); QEMU's get_opt_value."""
    out: list[str] = []
    while True:
        comma = text.find(",", pos)
        if comma < 0:
            out.append(text[pos:])
            return "".join(out), len(text)
        if text.startswith(",,", comma):
            out.append(text[pos:comma + 1])
            pos = comma + 2
            continue
        out.append(text[pos:comma])
        return "".join(out), comma


def _elements(text: str, option: str, implied: str | None, flags: bool) -> Iterator[tuple[str, str, bool]]:
    """(key, value, was_bare) for each element, QEMU's get_opt_name_value() in a loop."""
    pos, first, count = 0, True, 0
    while pos < len(text):
        count += 1
        if count > MAX_KEYS:
            raise _fail(option, text, f"more than {MAX_KEYS} parameters")
        end = pos
        while end < len(text) and text[end] not in "=,":
            end += 1
        if end < len(text) and text[end] == "=":
            key = text[pos:end]
            value, pos = _value(text, end + 1)
            bare = False
        elif first and implied is not None:
            key = implied
            value, pos = _value(text, pos)
            bare = False
        else:
            key, pos, bare = text[pos:end], end, True
            value = "on"
            if not flags and key not in _HELP:
                raise _fail(option, text, f"Expected '=' after parameter {shown(key, 40)}")
            if key.startswith("no") and key not in _HELP:
                key, value = key[2:], "off"
        if len(key) > MAX_KEY:
            raise _fail(option, text, f"parameter name of {len(key)} characters is too long")
        yield key, value, bare
        first = False
        if pos < len(text):  # at a single comma
            pos += 1


def parse_opts(text: str, option: str, implied: str | None = None, *, flags: bool = True,
               json_form: bool = False) -> Opts:
    """QemuOpts: ``text`` of ``option`` ("-device") into ``Opts``; ``implied`` names the first key ("driver").

    ``flags`` allows the bare ``key`` form (key=on). The id, when given, must be well formed
    (first ``id=`` wins, as QEMU's opts_parse_id). Help is reported, not acted on: the caller
    prints what it lists and exits 0. ``json_form``: a ``{...}`` argument is a flat JSON object
    (QEMU 7.2 takes -device, -netdev and -object so), its values as option text.
    """
    text = _check_text(text, option)
    if json_form and text.lstrip().startswith("{"):
        return _json_opts(text, option)
    pairs: list[tuple[str, str]] = []
    ident: str | None = None
    want_help = False
    for key, value, bare in _elements(text, option, implied, flags):
        if (bare and key in _HELP) or (key == implied and value in _HELP and not pairs):
            want_help = True
            continue
        if key == "":
            raise _fail(option, text, "Invalid parameter ''")
        if key == "id":
            if ident is None:
                ident = check_id(value, option, text)
            continue
        pairs.append((key, value))
    return Opts(option=option, text=text, pairs=tuple(pairs), id=ident, help=want_help)


def _json_opts(text: str, option: str) -> Opts:
    obj = _bounded_json(text, option)
    if len(obj) > MAX_KEYS:
        raise _fail(option, text, f"more than {MAX_KEYS} parameters")
    pairs: list[tuple[str, str]] = []
    ident = None
    for key, value in obj.items():
        if not key or len(key) > MAX_KEY:
            raise _fail(option, text, f"Invalid parameter {shown(key, 40)}")
        if isinstance(value, bool):
            value = "on" if value else "off"
        elif isinstance(value, int) and value.bit_length() <= 64:
            value = str(value)
        elif not isinstance(value, str):
            raise _fail(option, text, f"Parameter {shown(key, 40)}: kvmpy takes text, numbers and booleans here")
        if key == "id":
            ident = check_id(value, option, text)
        else:
            pairs.append((key, value))
    return Opts(option=option, text=text, pairs=tuple(pairs), id=ident)


# ---- keyval (-blockdev) ----

def parse_keyval(text: str, option: str, implied: str | None = None) -> dict[str, Any]:
    """keyval_parse(): ``driver=qcow2,file.driver=file,...`` into a nested dict of strings (last wins)."""
    text = _check_text(text, option)
    root: dict[str, Any] = {}
    for key, value, bare in _elements(text, option, implied, flags=False):
        if (bare and key in _HELP) or (key == implied and value in _HELP and not root):
            raise _fail(option, text, "Help is not available for this option")
        parts = key.split(".")
        if len(parts) > MAX_DEPTH:
            raise _fail(option, text, f"parameter {shown(key, 40)} is nested deeper than {MAX_DEPTH} levels")
        if not all(_QAPI_NAME_RE.match(p) or p.isdigit() for p in parts):
            raise _fail(option, text, f"Invalid parameter {shown(key, 60)}")
        node = root
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise _fail(option, text, f"Parameters '{'.'.join(parts[:i + 1])}.*' used inconsistently")
            node = child
        if isinstance(node.get(parts[-1]), dict):
            raise _fail(option, text, f"Parameters '{key}.*' used inconsistently")
        node[parts[-1]] = value
    return root


def _bounded_json(text: str, option: str) -> dict[str, Any]:
    def depth(obj: Any, level: int = 0) -> None:
        if level > MAX_DEPTH:
            raise _fail(option, text, f"JSON nested deeper than {MAX_DEPTH} levels")
        if isinstance(obj, dict):
            for v in obj.values():
                depth(v, level + 1)
        elif isinstance(obj, list):
            for v in obj:
                depth(v, level + 1)

    try:
        obj = json.loads(text, parse_constant=lambda c: _reject_constant(option, text, c))
    except RecursionError:
        raise _fail(option, text, f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise _fail(option, text, f"JSON parse error: {getattr(exc, 'msg', 'invalid')}") from None
    if not isinstance(obj, dict):
        raise _fail(option, text, "JSON must be an object")
    depth(obj)
    return obj


def _reject_constant(option: str, text: str, constant: str) -> Any:
    raise _fail(option, text, f"JSON parse error: {constant} is not JSON")


def parse_structured(text: str, option: str, implied: str | None = None) -> dict[str, Any]:
    """QEMU's qobject_input_visitor_new_str(): JSON when ``text`` starts with '{', else keyval."""
    text = _check_text(text, option)
    if text.lstrip().startswith("{"):
        return _bounded_json(text, option)
    return parse_keyval(text, option, implied)


def flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """A nested dict as dotted (key, scalar) pairs, lists as key.0, key.1 (keyval's own list syntax)."""
    out: list[tuple[str, Any]] = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(flatten(value, name + "."))
        elif isinstance(value, list):
            out.extend(flatten({str(i): v for i, v in enumerate(value)}, name + "."))
        else:
            out.append((name, value))
    return out


def unflatten(pairs: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """The nested dict of dotted pairs (the inverse of ``flatten`` for dicts; list indexes stay keys)."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        node = root
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return root


# ---- values, read as QEMU reads them ----

def parse_bool(value: Any, key: str, option: str = "", text: str = "") -> bool:
    """QEMU's qapi_bool_parse: on/yes/true/y or off/no/false/n (JSON booleans as they are)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
    message = f"Parameter '{key}' expects 'on' or 'off'"
    raise _fail(option, text, message) if option else ConfigError(message)


def parse_number(value: Any, key: str, option: str = "", text: str = "", lo: int = 0,
                 hi: int = (1 << 64) - 1) -> int:
    """An unsigned number as QEMU reads one (decimal, 0x hex, 0 octal), bounded in length and in [lo, hi]."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and 0 < len(value) <= 40 and value.isascii():
        v = value.strip()
        try:
            if len(v) > 1 and v[0] == "0" and v[1] in "0123456789":
                number = int(v, 8)  # C's strtoull base 0: a leading 0 is octal
            else:
                number = int(v, 0)
        except ValueError:
            number = None
    if number is None:
        message = f"Parameter '{key}' expects a number"
    elif not lo <= number <= hi:
        message = f"Parameter '{key}' expects a number from {lo} to {hi}"
    else:
        return number
    raise _fail(option, text, message) if option else ConfigError(message)


def parse_size(value: Any, key: str, option: str = "", text: str = "", default_unit: int = 1) -> int:
    """A size as QEMU's qemu_strtosz (``512M``, ``1G``; plain numbers in ``default_unit``)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value * default_unit
    try:
        if not isinstance(value, str):
            raise units.SizeError(value, False)
        return units.parse_size(value, default_unit=default_unit, maximum=units.MAX_SIZE, decorated=True)
    except units.SizeError as exc:
        message = (f"Parameter '{key}' is too large" if exc.too_large else
                   f"Parameter '{key}' expects a non-negative number below 2^64 "
                   "(optional suffix k, M, G, T, P, E)")
        raise _fail(option, text, message) if option else ConfigError(message) from None
