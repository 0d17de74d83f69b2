"""QMP wire protocol: splitting a byte stream into JSON messages, checking them, and shaping replies.

Follows QEMU's docs/interop/qmp-spec.rst. Input is not line-based: like
QEMU's JSON streamer, ``JsonSplitter`` tracks string and bracket nesting and
cuts a message when the outermost object closes, whatever the newlines.
After a lexical error (a stray byte, a control character in a string, too
deep or too long) it reports one error and skips input until a likely
message boundary: a newline or other control character, ``{``, or the bytes
0xfe/0xff, which can never occur in JSON. A client abandons a half-sent
message by sending 0xff, as with QEMU. Message size and nesting depth are
bounded.

Numbers are read as QEMU's parser reads them: an integer that fits int64 or
uint64 stays an integer, a longer one becomes a double (so 5,000 digits never
reach ``int()``), and a number whose double is infinite is an error reply.
``NaN`` and ``Infinity`` are not JSON and are refused, as QEMU's lexer does;
replies are encoded strictly (never a bare NaN on the wire).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any, Iterator

MAX_MESSAGE = 1 << 20  # bytes in one message; QEMU's limit is larger but no command needs more
MAX_DEPTH = 1024  # same nesting limit as QEMU's JSON parser
TOP_LEVEL_KEYS = ("execute", "arguments", "id")

# Error classes QEMU uses (qapi ErrorClass).
GENERIC = "GenericError"
COMMAND_NOT_FOUND = "CommandNotFound"
DEVICE_NOT_ACTIVE = "DeviceNotActive"
DEVICE_NOT_FOUND = "DeviceNotFound"
KVM_MISSING_CAP = "KVMMissingCap"


class QmpError(Exception):
    """A command failure that becomes ``{"error": {"class": ..., "desc": ...}}``."""

    def __init__(self, desc: str, cls: str = GENERIC) -> None:
        super().__init__(desc)
        self.cls = cls
        self.desc = desc


@dataclass(frozen=True)
class Request:
    command: str
    arguments: dict[str, Any]
    id: Any
    has_id: bool


_WS = b" \t\r\n"


class JsonSplitter:
    """Feed bytes, get back complete top-level texts (bytes) or QmpError for garbage."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._bare = False  # inside a top-level scalar (``foo``, ``42``): ends at whitespace or bracket
        self._recovering = False  # after an error: skipping to the next resync byte

    def _reset(self, recover: bool = False) -> None:
        self._buf.clear()
        self._depth = 0
        self._in_string = self._escape = self._bare = False
        self._recovering = recover

    def feed(self, data: bytes) -> Iterator[bytes | QmpError]:
        for byte in data:
            if self._recovering:
                if not (byte < 0x20 or byte >= 0xFE or byte == 0x7B):
                    continue
                self._recovering = False  # resync here and look at this byte afresh
            if self._in_string:
                # Checked before the escape state: a backslash must not shield 0xFF (the
                # client's parser reset) or a newline from ending a broken string.
                if byte < 0x20 or byte >= 0xFE:
                    self._reset(recover=byte < 0x20 and byte != 0x0A)
                    yield QmpError("JSON parse error, invalid character in string")
                    continue
                self._buf.append(byte)
                if self._escape:
                    self._escape = False
                elif byte == 0x5C:  # backslash
                    self._escape = True
                elif byte == 0x22:
                    self._in_string = False
                    if self._depth == 0:  # a bare top-level string is complete
                        yield bytes(self._buf)
                        self._reset()
                        continue
            elif byte >= 0xFE or (byte < 0x20 and byte not in _WS):
                had_input = bool(self._buf)
                self._reset()
                if had_input or byte < 0xFE:  # a lone 0xff is QEMU's "reset the parser" request
                    yield QmpError("JSON parse error, stray character")
                continue
            elif byte in b"{[":
                if self._bare:
                    yield bytes(self._buf)
                    self._reset()
                self._depth += 1
                self._buf.append(byte)
                if self._depth > MAX_DEPTH:
                    self._reset(recover=True)
                    yield QmpError("JSON parse error, too many nested containers")
                    continue
            elif byte in b"}]":
                if self._depth == 0:
                    self._reset(recover=True)
                    yield QmpError(f"JSON parse error, stray '{chr(byte)}'")
                    continue
                self._depth -= 1
                self._buf.append(byte)
                if self._depth == 0:
                    yield bytes(self._buf)
                    self._reset()
                    continue
            elif byte == 0x22:
                if self._bare:
                    yield bytes(self._buf)
                    self._reset()
                self._in_string = True
                self._buf.append(byte)
            elif byte in _WS:
                if self._bare:
                    yield bytes(self._buf)
                    self._reset()
                    continue
                if self._depth:
                    self._buf.append(byte)
            else:
                if self._depth == 0:
                    self._bare = True
                self._buf.append(byte)
            if len(self._buf) > MAX_MESSAGE:
                self._reset(recover=True)
                yield QmpError(f"JSON parse error, message longer than {MAX_MESSAGE} bytes")


INT_RANGE = (-(1 << 63), (1 << 64) - 1)  # int64 and uint64, as QEMU's parser keeps integers


def _number(text: str) -> int | float:
    """A JSON integer: an int if int64/uint64 holds it, else a double (QEMU's rule), never unbounded."""
    if len(text) <= 21:  # at most 20 digits and a sign: int() is cheap and bounded
        value = int(text)
        if INT_RANGE[0] <= value <= INT_RANGE[1]:
            return value
    return _double(text)


def _double(text: str) -> float:
    value = float(text)  # float() has no digit limit; very long numbers just become inf
    if not math.isfinite(value):
        raise QmpError("JSON parse error, number out of range")
    return value


def _not_json(name: str) -> Any:
    raise QmpError(f"JSON parse error, stray '{name}'")  # QEMU's lexer knows no NaN or Infinity


def parse_request(text: bytes) -> Request:
    """Decode one message and check its top-level shape, with QEMU's wording."""
    try:
        obj = json.loads(text.decode("utf-8"), parse_int=_number, parse_float=_double, parse_constant=_not_json)
    except UnicodeDecodeError:
        raise QmpError("JSON parse error, invalid UTF-8 sequence in string") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "too deeply nested"
        raise QmpError(f"JSON parse error, {msg}") from None
    except ValueError as exc:  # anything else the decoder refuses: one error reply, the session goes on
        raise QmpError(f"JSON parse error, {str(exc)[:80]}") from None
    if not isinstance(obj, dict):
        raise QmpError("QMP input must be a JSON object")
    has_id = "id" in obj
    ident = obj.get("id")
    try:
        if "exec-oob" in obj:
            raise QmpError("QMP input member 'exec-oob' is unexpected: out-of-band execution was not enabled")
        for key in obj:
            if key not in TOP_LEVEL_KEYS:
                raise QmpError(f"QMP input member '{key}' is unexpected")
        if "execute" not in obj:
            raise QmpError("QMP input lacks member 'execute'")
        if not isinstance(obj["execute"], str):
            raise QmpError("QMP input member 'execute' must be a string")
        args = obj.get("arguments", {})
        if not isinstance(args, dict):
            raise QmpError("QMP input member 'arguments' must be an object")
    except QmpError as exc:
        exc.id, exc.has_id = ident, has_id  # type: ignore[attr-defined]
        raise
    return Request(obj["execute"], args, ident, has_id)


def encode(message: dict[str, Any]) -> bytes:
    """One reply or event on the wire; QEMU ends each with CRLF. Strict JSON: no NaN or Infinity.

    A value that has no JSON form (a non-finite float, an integer too long to print) becomes
    a GenericError reply with the same id, so the client still gets one answer.
    """
    try:
        text = json.dumps(message, separators=(", ", ": "), ensure_ascii=True, allow_nan=False)
    except ValueError:
        err: dict[str, Any] = {"error": {"class": GENERIC, "desc": "the reply cannot be represented in JSON"}}
        if "id" in message:
            try:
                json.dumps(message["id"], allow_nan=False)
                err["id"] = message["id"]
            except ValueError:
                pass
        text = json.dumps(err, separators=(", ", ": "), ensure_ascii=True)
    return text.encode() + b"\r\n"


def reply(value: Any, req_id: Any = None, has_id: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"return": value}
    if has_id:
        out["id"] = req_id
    return out


def error_reply(err: QmpError, req_id: Any = None, has_id: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"error": {"class": err.cls, "desc": err.desc}}
    if has_id:
        out["id"] = req_id
    return out


def event(name: str, data: dict[str, Any] | None = None, now: float | None = None) -> dict[str, Any]:
    t = time.time() if now is None else now
    sec = int(t)
    out: dict[str, Any] = {"timestamp": {"seconds": sec, "microseconds": int((t - sec) * 1_000_000)},
                           "event": name}
    if data is not None:
        out["data"] = data
    return out
