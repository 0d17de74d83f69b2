"""QEMU's option syntax (kvmpy.qemu_opts): QemuOpts and keyval as users know them; hostile text is one ConfigError."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kvmpy import qemu_opts
from kvmpy.errors import ConfigError
from kvmpy.qemu_opts import parse_bool, parse_keyval, parse_number, parse_opts, parse_size, parse_structured


def test_implied_first_key_and_pairs_in_order() -> None:
    o = parse_opts("virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,id=nic0", "-device", "driver")
    assert o.pairs == (("driver", "virtio-net-pci"), ("netdev", "n0"), ("mac", "52:54:00:12:34:56"))
    assert o.id == "nic0" and not o.help
    assert o.get("netdev") == "n0" and o.get("absent", "d") == "d"
    # the implied key may also be written out, anywhere
    assert parse_opts("id=a,type=user", "-netdev", "type").get("type") == "user"


def test_double_comma_is_a_literal_comma() -> None:
    o = parse_opts("file,id=c0,path=/tmp/a,,b,,,,c", "-chardev", "backend")
    assert o.get("path") == "/tmp/a,b,,c"
    assert parse_opts("a,,b,x=1", "-netdev", "type").get("type") == "a,b"  # in the implied value too


def test_bare_keys_are_on_and_no_prefix_is_off() -> None:
    o = parse_opts("socket,id=c,path=/s,server,nowait", "-chardev", "backend")
    assert (o.get("server"), o.get("wait")) == ("on", "off")
    with pytest.raises(ConfigError, match="Expected '=' after parameter 'bogus'"):
        parse_opts("1G,bogus", "-m", "size", flags=False)


def test_last_duplicate_wins_but_the_first_id() -> None:
    o = parse_opts("user,id=a,hostname=x,id=b,hostname=y", "-netdev", "type")
    assert o.get("hostname") == "y" and o.as_dict()["hostname"] == "y"
    assert o.id == "a"  # QEMU's opts_parse_id takes the first
    assert o.keys() == ["type", "hostname"]


@pytest.mark.parametrize("text", ["help", "?", "virtio-net-pci,help", "driver=help", "e1000,?"])
def test_help_is_reported(text: str) -> None:
    assert parse_opts(text, "-device", "driver").help


@pytest.mark.parametrize("ident, ok", [
    ("a", True), ("a.b-c_d", True), ("Z9", True), ("", False), ("1a", False), ("-a", False), ("_a", False),
    ("aé", False), ("a b", False), ("a,b", False), ("a" * 256, True), ("a" * 257, False), ("a\n", False),
])
def test_id_syntax(ident: str, ok: bool) -> None:
    assert qemu_opts.id_wellformed(ident) is ok
    text = "null,id=" + ident.replace(",", ",,")
    if ok:
        assert parse_opts(text, "-chardev", "backend").id == ident
    else:
        with pytest.raises(ConfigError, match="Parameter 'id' expects an identifier"):
            parse_opts(text, "-chardev", "backend")


@pytest.mark.parametrize("text, message", [
    ("=user,id=a", "Invalid parameter ''"),
    ("x" * (qemu_opts.MAX_OPTION_TEXT + 1), "longer than"),
    ("a\0b", "NUL"),
    ("t," + ",".join(f"k{i}=v" for i in range(qemu_opts.MAX_KEYS + 1)), "more than"),
    ("t," + "k" * 200 + "=1", "too long"),
])
def test_hostile_text_is_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_opts(text, "-netdev", "type")
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
    assert str(info.value).startswith("-netdev ")


def test_keyval_builds_a_tree() -> None:
    tree = parse_keyval("qcow2,node-name=d0,file.driver=file,file.filename=/a,,b,file.locking=off", "-blockdev",
                        "driver")
    assert tree == {"driver": "qcow2", "node-name": "d0",
                    "file": {"driver": "file", "filename": "/a,b", "locking": "off"}}
    assert parse_keyval("driver=raw,a=1,a=2", "-blockdev") == {"driver": "raw", "a": "2"}  # last wins


@pytest.mark.parametrize("text, message", [
    ("driver=raw,file=x,file.driver=file", "Parameters 'file.*' used inconsistently"),
    ("driver=raw,file.driver=file,file=x", "Parameters 'file.*' used inconsistently"),
    ("driver=raw,file.x..y=1", "Invalid parameter 'file.x..y'"),
    ("driver=raw,bogus", "Expected '=' after parameter 'bogus'"),
    ("help", "Help is not available for this option"),
    ("driver=raw," + ".".join(["a"] * 40) + "=1", "nested deeper"),
])
def test_keyval_mistakes_are_qemus(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_structured(text, "-blockdev", "driver")


def test_json_form() -> None:
    text = json.dumps({"driver": "qcow2", "node-name": "d0", "file": {"driver": "file", "filename": "/x"},
                       "read-only": True})
    assert parse_structured(text, "-blockdev", "driver")["read-only"] is True
    for bad, message in (('{"driver":"raw",}', "JSON parse error"), (' {"a": NaN}', "NaN is not JSON"),
                         ("{\"a\":" * 2000 + "1" + "}" * 2000, "nested deeper"), ("{" * 20, "JSON parse error")):
        with pytest.raises(ConfigError, match=message):
            parse_structured(bad, "-blockdev", "driver")


def test_flatten_and_unflatten_are_inverse() -> None:
    tree = {"driver": "qcow2", "file": {"driver": "file", "filename": "/x"}, "backing": {"file": {"n": 1}}}
    pairs = tuple(qemu_opts.flatten(tree))
    assert ("file.filename", "/x") in pairs and qemu_opts.unflatten(pairs) == tree


@pytest.mark.parametrize("value, expected", [("on", True), ("yes", True), ("true", True), ("y", True), ("off", False),
                                             ("no", False), ("false", False), ("n", False), (True, True)])
def test_booleans(value, expected: bool) -> None:
    assert parse_bool(value, "k") is expected


def test_values_errors_name_the_parameter() -> None:
    with pytest.raises(ConfigError, match="-netdev user,ipv6=maybe: Parameter 'ipv6' expects 'on' or 'off'"):
        parse_bool("maybe", "ipv6", "-netdev", "user,ipv6=maybe")
    assert parse_number("0x10", "n") == 16 and parse_number("010", "n") == 8 and parse_number("10", "n") == 10
    for bad in ("", "x", "9" * 50, "-1", "1.5", 1 << 70):
        with pytest.raises(ConfigError, match="Parameter 'n' expects a number"):
            parse_number(bad, "n")
    assert parse_size("1G", "size") == 1 << 30 and parse_size("512", "size") == 512
    with pytest.raises(ConfigError, match="too large"):
        parse_size("9" * 400 + "E", "size")


def _escape(value: str) -> str:
    return value.replace(",", ",,")


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.from_regex(r"[a-z][a-z0-9_.-]{0,10}", fullmatch=True).filter(
    lambda k: k not in ("id", "help") and not k.startswith("no")), st.text(max_size=20).filter(
    lambda v: "\0" not in v)), min_size=1, max_size=8))
def test_any_escaped_values_come_back_exactly(pairs) -> None:
    text = "drv," + ",".join(f"{k}={_escape(v)}" for k, v in pairs)
    o = parse_opts(text, "-device", "driver")
    assert o.pairs == (("driver", "drv"), *pairs)


_CHARS = st.sampled_from([",", ",,", "=", ".", "id", "help", "?", "no", "a", "1", "{", "}", '"', ":", "\0", "é", " "])


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.text(max_size=60), st.lists(_CHARS, max_size=40).map("".join)),
       st.sampled_from([None, "driver", "type"]), st.booleans())
def test_fuzzed_text_is_opts_or_one_config_error(text: str, implied, flags: bool) -> None:
    for parse in (lambda: parse_opts(text, "-device", implied, flags=flags),
                  lambda: parse_structured(text, "-blockdev", implied)):
        try:
            parse()
        except ConfigError as exc:
            assert "\n" not in str(exc).replace("\\n", "") and len(str(exc)) < 600
