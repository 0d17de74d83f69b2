"""The JSON splitter and request checks on hostile input, without a VM (hypothesis for the fuzzing)."""

from __future__ import annotations

import dataclasses
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


# ---- hostile numbers and arguments (issue 11, QMP) -------------------------------------------------------
def _strict(line: bytes) -> dict:
    """Parse a server line as strict JSON: NaN/Infinity on the wire fail here."""
    def refuse(name: str):
        raise AssertionError(f"not JSON on the wire: {name}")
    return json.loads(line, parse_constant=refuse)


@pytest.mark.parametrize("text", [
    b'{"execute": "x", "id": ' + b"9" * 5000 + b"}",
    b'{"execute": "x", "arguments": {"a": [' + b"1" * 5000 + b"]}}",
    b'{"execute": "x", "id": -' + b"1" * 5000 + b".5e3}",
    b'{"execute": "x", "id": 1e999}',
])
def test_huge_numbers_are_a_parse_error_reply_not_a_crash(text: bytes) -> None:
    with pytest.raises(QmpError, match="JSON parse error, number out of range"):
        parse_request(text)


def test_integers_beyond_uint64_become_doubles_as_in_qemu() -> None:
    req = parse_request(b'{"execute": "x", "id": 18446744073709551616, "arguments": {"n": -9223372036854775808}}')
    assert req.id == 18446744073709551616.0 and isinstance(req.id, float)
    assert req.arguments["n"] == -(1 << 63) and isinstance(req.arguments["n"], int)
    assert parse_request(b'{"execute": "x", "id": 18446744073709551615}').id == (1 << 64) - 1


@pytest.mark.parametrize("word", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_not_json(word: bytes) -> None:
    with pytest.raises(QmpError, match="JSON parse error"):
        parse_request(b'{"execute": "x", "id": ' + word + b"}")
    with pytest.raises(QmpError, match="JSON parse error"):
        parse_request(b'{"execute": "x", "arguments": {"a": ' + word + b"}}")


def test_replies_are_strict_json() -> None:
    line = encode({"return": float("nan"), "id": 1})
    assert _strict(line.strip()) == {"error": {"class": "GenericError",
                                              "desc": "the reply cannot be represented in JSON"}, "id": 1}
    assert _strict(encode({"return": 1, "id": float("inf")}).strip())["error"]["class"] == "GenericError"


def test_schema_checks_nested_types_and_ranges() -> None:
    caps = Arg("list", items=Arg("dict", fields={"capability": Arg("str", choices=("events", "x")),
                                                 "state": Arg("bool")}))
    cmd = Command("c", lambda ctx, **kw: kw, {"capabilities": caps, "n": Arg("int", optional=True, min=0, max=9),
                                              "f": Arg("number", optional=True)})
    assert cmd.validate({"capabilities": [{"capability": "x", "state": True}], "n": 9, "f": 1})
    for args, desc in [
        ({"capabilities": [{"capability": ["events"], "state": True}]},
         r"'capabilities\[0\].capability', expected: string"),
        ({"capabilities": [{"capability": {"a": 1}, "state": True}]}, "expected: string"),
        ({"capabilities": [{"capability": "nope", "state": True}]}, "does not accept value 'nope'"),
        ({"capabilities": [{"capability": "x"}]}, r"'capabilities\[0\].state' is missing"),
        ({"capabilities": [{"capability": "x", "state": 1}]}, "expected: boolean"),
        ({"capabilities": [{"capability": "x", "state": True, "more": 1}]}, "is unexpected"),
        ({"capabilities": [7]}, "expected: object"),
        ({"capabilities": [], "n": 10}, "between 0 and 9"),
        ({"capabilities": [], "n": 1.0}, "expected: integer"),
        ({"capabilities": [], "f": True}, "expected: number"),
        ({"capabilities": [], "f": float("inf")}, "expected: number"),
    ]:
        with pytest.raises(QmpError, match=desc):
            cmd.validate(args)


_JSON_NUMBER = st.from_regex(r"-?(0|[1-9][0-9]{0,6000})(\.[0-9]{1,50})?([eE][-+]?[0-9]{1,6})?", fullmatch=True)
_JSON_VALUE = st.recursive(st.none() | st.booleans() | st.text(max_size=20) | _JSON_NUMBER.map(lambda n: ("num", n)),
                           lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                                                    max_size=4), max_leaves=12)


def _to_text(v) -> str:
    if isinstance(v, tuple):
        return v[1]
    if isinstance(v, list):
        return "[" + ", ".join(map(_to_text, v)) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_to_text(x)}" for k, x in v.items()) + "}"
    return json.dumps(v)


@settings(max_examples=300, deadline=None)
@given(_JSON_VALUE, _JSON_VALUE, st.sampled_from(["execute", "exec-oob", "id", "arguments"]))
def test_any_numbers_anywhere_give_a_request_or_a_qmp_error(ident, args, key) -> None:
    text = '{"execute": "x", "id": %s, "arguments": {"a": %s}, "%s": 1}' % (_to_text(ident), _to_text(args), key)
    try:
        req = parse_request(text.encode())
    except QmpError as exc:
        reply = encode({"error": {"class": exc.cls, "desc": exc.desc}, "id": getattr(exc, "id", None)})
    else:
        reply = encode({"return": {}, "id": req.id})
    _strict(reply.strip())  # whatever came in, what goes out is one strict JSON line


# ---- the same through a running server: one error reply each, the session goes on ------------------------
def test_hostile_messages_keep_the_session(short_tmp) -> None:
    from tests.monitor.conftest import RawClient, boot, teardown

    vm = boot(short_tmp)
    try:
        c = RawClient(vm.path, negotiate=False)
        for before in (b'{"execute": "qmp_capabilities", "id": ' + b"9" * 5000 + b"}", b'{"id": NaN}'):
            c.send(before)  # before negotiation too
            c.sock.settimeout(10)
            assert "JSON parse error" in c.recv()["error"]["desc"]
        assert c.cmd("qmp_capabilities") == {"return": {}}
        bad = [
            b'{"execute": "query-status", "id": ' + b"1" * 5000 + b"}",
            b'{"execute": "query-status", "id": Infinity}',
            b'{"execute": "query-status", "arguments": {"x": ' + b"7" * 4400 + b"}}",
        ]
        for msg in bad:
            c.send(msg)
            line = c.recv()
            assert line["error"]["class"] == "GenericError" and "JSON parse error" in line["error"]["desc"]
        c.send(b'{"execute": "query-status", "id": 1e400}')
        assert "number out of range" in c.recv()["error"]["desc"]
        replies = [
            c.cmd("migrate-set-capabilities", arguments={"capabilities": [{"capability": ["events"], "state": True}]}),
            c.cmd("migrate-set-capabilities", arguments={"capabilities": [{"capability": {"a": 1}, "state": True}]}),
            c.cmd("migrate", arguments={"uri": "tcp:é..:1"}),
            c.cmd("migrate", arguments={"uri": "tcp:h:" + "9" * 5000}),
            c.cmd("human-monitor-command", arguments={"command-line": "xp /" + "9" * 5000 + "xw 0"}),
            c.cmd("human-monitor-command", arguments={"command-line": "xp /1xw " + "9" * 5000}),
            c.cmd("human-monitor-command", arguments={"command-line": "xp /1xw 0", "cpu-index": 1 << 64}),
        ]
        for r in replies:
            if "error" in r:
                assert r["error"]["class"] == "GenericError" and "internal error" not in r["error"]["desc"], r
            else:  # HMP reports its own mistakes as text, like QEMU
                assert "internal error" not in r["return"] and len(r["return"]) < 300, r
        assert c.cmd("query-status", id=5)["return"]["status"] == "running"
        c.close()
    finally:
        teardown(vm)


# ---- fuzzing every command's schema and every endpoint string (issue 11, D) --------------------------------
_ARG_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=1 << 64, max_value=1 << 4000)
    | st.floats() | st.text(max_size=20) | st.sampled_from(["tcp:é..:1", "tcp:h:" + "9" * 5000, "xp /" + "9" * 5000
                                                            + "xw 0", "events", "auto-converge"]),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.sampled_from(["capability", "state", "x"]) | st.text(
        max_size=5), kids, max_size=3), max_leaves=10)


def _all_commands():
    from kvmpy.machine import qmp_commands

    table = qmp_commands()
    return [table.get(name) for name in table.names()]


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_every_command_schema_gives_typed_arguments_or_a_qmp_error(data) -> None:
    cmd = data.draw(st.sampled_from(_all_commands()))
    names = sorted(cmd.args) + ["x"]
    args = data.draw(st.dictionaries(st.sampled_from(names), _ARG_VALUE, max_size=4))
    try:
        checked = cmd.validate(args)
    except QmpError as exc:
        assert exc.cls == "GenericError" and "\n" not in exc.desc
        return
    for key, value in args.items():  # what reaches a handler has the declared type, recursively
        spec = cmd.args[key]
        spec.check(key, value)
        if spec.type == "int":
            assert isinstance(value, int) and not isinstance(value, bool) and -(1 << 63) <= value < 1 << 64
    assert set(checked) == {k.replace("-", "_") for k in args}


_HOST_TEXT = st.text(max_size=40) | st.sampled_from(["é..", "é", "a..b", "[::1]", "::1", "h" * 300])
_PORT_TEXT = st.text(max_size=8) | st.integers(0, 1 << 20).map(str) | st.just("9" * 5000)


@settings(max_examples=400, deadline=None)
@given(_HOST_TEXT, _PORT_TEXT, st.sampled_from([",server", ",server,wait=off", "", ",server=on,nowait"]))
def test_any_tcp_endpoint_is_an_endpoint_or_a_config_error(host: str, port: str, opts: str) -> None:
    from kvmpy.monitor.endpoint import listen

    try:
        ep = parse_endpoint(f"tcp:{host}:{port}{opts}")
    except ConfigError as exc:
        assert "\n" not in str(exc)  # one line, whatever the user typed
        return
    assert ep.host.isascii() and 0 <= ep.port <= 65535
    try:  # never TypeError/UnicodeError from the socket layer
        listen(dataclasses.replace(ep, port=0)).close()  # port 0: never take a port someone else uses
    except ConfigError:
        pass


@settings(max_examples=400, deadline=None)
@given(_HOST_TEXT, _PORT_TEXT, st.sampled_from(["tcp", "unix", "exec", "file", "x"]))
def test_any_migration_uri_is_a_uri_or_a_migration_error(host: str, port: str, scheme: str) -> None:
    from kvmpy.migration.errors import MigrationError
    from kvmpy.migration.transport import parse_uri

    try:
        uri = parse_uri(f"{scheme}:{host}:{port}")
    except MigrationError:
        return
    if uri.scheme == "tcp":
        assert uri.host.isascii() and 0 <= uri.port <= 65535
