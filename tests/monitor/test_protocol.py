"""The JSON splitter and request checks on hostile input, without a VM (hypothesis for the fuzzing)."""

from __future__ import annotations

import json

from hypothesis import example, given, settings, strategies as st

from kvmpy.monitor.endpoint import parse_endpoint
from kvmpy.monitor.protocol import MAX_DEPTH, JsonSplitter, QmpError, encode, event, parse_request
from kvmpy.monitor.schema import Arg, Command

import pytest

from kvmpy.config import ConfigError


def _split(*chunks: bytes) -> list:
    s = JsonSplitter()
    return [item for c in chunks for item in s.feed(c)]


def test_messages_are_cut_at_object_boundaries_whatever_the_chunking() -> None:
    text = b'{"execute": "a", "id": "}{\\""}\n{"execute": "b"}{"execute":"c"}'
    whole = _split(text)
    assert [json.loads(m)["execute"] for m in whole] == ["a", "b", "c"]
    assert _split(*[text[i:i + 1] for i in range(len(text))]) == whole


def test_garbage_gives_one_error_then_recovers_at_the_next_line() -> None:
    out = _split(b'}}} junk\n{"execute": "ok"}\n')
    assert isinstance(out[0], QmpError) and json.loads(out[-1]) == {"execute": "ok"}
    out = _split(b"[" * (MAX_DEPTH + 10) + b"\n" + b'{"execute": "ok"}')
    assert isinstance(out[0], QmpError) and json.loads(out[-1]) == {"execute": "ok"}
    assert _split(b"\xff") == []  # a lone 0xff is a silent parser reset


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
@example(b'"\\')  # an open string ending in a backslash must not swallow the 0xFF reset
def test_random_bytes_never_raise_and_a_valid_message_still_gets_through(junk: bytes) -> None:
    s = JsonSplitter()
    for item in s.feed(junk):
        if not isinstance(item, QmpError):
            try:
                parse_request(item)
            except QmpError:
                pass
    tail = [m for m in s.feed(b'\xff{"execute": "query-kvm"}') if not isinstance(m, QmpError)]
    assert parse_request(tail[-1]).command == "query-kvm"


def test_request_shape_checks_keep_the_id() -> None:
    with pytest.raises(QmpError) as info:
        parse_request(b'{"execute": 3, "id": [1]}')
    assert info.value.id == [1] and info.value.has_id  # type: ignore[attr-defined]
    req = parse_request(b'{"execute": "x", "arguments": {"a": 1}}')
    assert (req.command, req.arguments, req.has_id) == ("x", {"a": 1}, False)


def test_wire_format_and_events() -> None:
    assert encode({"return": {}}) == b'{"return": {}}\r\n'
    ev = event("RESET", {"guest": False}, now=1700000000.25)
    assert ev == {"timestamp": {"seconds": 1700000000, "microseconds": 250000}, "event": "RESET",
                  "data": {"guest": False}}
    assert "data" not in event("STOP")


def test_schema_validation_in_one_place() -> None:
    cmd = Command("c", lambda ctx, **kw: kw, {"n": Arg("int"), "flag": Arg("bool", optional=True),
                                              "caps": Arg("list", optional=True, items="str", choices=("oob",))})
    assert cmd.validate({"n": 1}) == {"n": 1}
    for args, desc in [({}, "Parameter 'n' is missing"), ({"n": True}, "expected: integer"),
                       ({"n": 1 << 70}, "expected: integer"), ({"n": 1, "x": 0}, "Parameter 'x' is unexpected"),
                       ({"n": 1, "caps": ["x"]}, "does not accept value 'x'"),
                       ({"n": 1, "flag": "yes"}, "expected: boolean")]:
        with pytest.raises(QmpError, match=desc):
            cmd.validate(args)


def test_endpoint_specs() -> None:
    ep = parse_endpoint("tcp::4444,server=on,wait=off")
    assert (ep.kind, ep.host, ep.port, ep.wait) == ("tcp", "127.0.0.1", 4444, False)
    assert parse_endpoint("tcp:[::1]:5,server,nowait").host == "::1"
    assert parse_endpoint("unix:/tmp/a.sock,server").wait is True
    for bad in ["unix:/a", "tcp:1.2.3.4,server", "tcp:h:x,server", "unix:,server", "unix:/a,server,wait=maybe", "",
                "tcp:é..:4444,server", "tcp:a..b:1,server", "tcp:h:" + "9" * 5000 + ",server", "unix:/tmp/a\0b,server",
                "unix:/tmp/\ud800,server", "tcp:h:١٢,server"]:
        with pytest.raises(ConfigError) as info:
            parse_endpoint(bad)
        assert "\n" not in str(info.value)


def test_listen_turns_every_socket_error_into_a_config_error() -> None:
    from kvmpy.monitor.endpoint import Endpoint, listen

    for host in ("é..", "a\0b"):  # not through parse_endpoint, which refuses these already
        with pytest.raises(ConfigError, match="cannot listen"):
            listen(Endpoint("tcp", host=host, port=0, spec=f"tcp:{host}:0,server"))
