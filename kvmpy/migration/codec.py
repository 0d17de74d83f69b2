"""Plain state data (dicts, lists, ints, floats, str, bytes, None) to bytes and back, safely.

Device, vCPU and config sections travel as JSON, with ``bytes`` wrapped as
``{"$b": "<hex>"}``. JSON cannot execute anything, so a hostile section can at
worst fail to decode, which raises StreamError. The encoder never writes NaN or
an infinity, so the decoder refuses them too (``NaN``, ``Infinity``, or a
number such as ``1e999`` that overflows to one): they are always hostile. Each
device still checks the types and ranges of its fields in ``restore()``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from kvmpy.migration.errors import StreamError

_BYTES = "$b"


def _wrap(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {_BYTES: bytes(value).hex()}
    if isinstance(value, dict):
        return {str(k): _wrap(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_wrap(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot encode {type(value).__name__} in migration state")


def _unwrap(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and _BYTES in value:
            raw = value[_BYTES]
            if not isinstance(raw, str):
                raise StreamError("malformed byte string in a state section")
            return bytes.fromhex(raw)
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


def encode(value: Any) -> bytes:
    return json.dumps(_wrap(value), separators=(",", ":"), allow_nan=False).encode()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a kvmpy stream can hold")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} overflows a float")
    return value


def decode(raw: bytes | bytearray | memoryview, what: str) -> Any:
    try:
        return _unwrap(json.loads(bytes(raw).decode("utf-8"), parse_constant=_no_constant, parse_float=_finite))
    except StreamError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise StreamError(f"section {what!r} is not valid state data: {exc}") from None
